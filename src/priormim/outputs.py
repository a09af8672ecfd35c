"""Output folders that never destroy the user's data.

Two rules every command that writes a run follows:

* an output never lands on, inside, or around one of the command's inputs
  (:func:`refuse_input_overlap`): predicting into the labelled folder it reads, or exporting
  over the checkpoint it reads, would replace the user's files;
* an output folder that already holds a finished run is refused unless the user says
  ``--resume`` (continue it) or ``--overwrite`` (replace it): :func:`claim_output`. With
  ``--overwrite`` only the files the command itself writes are removed, never anything else.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from priormim.errors import UserError


def _resolved(p: str | Path) -> Path:
    return Path(p).expanduser().resolve()


def refuse_input_overlap(out: str | Path, inputs: Iterable[tuple[str, str | Path | None]], *, flag: str = "--out",
                         inside: bool = True, around: bool = True) -> None:
    """UserError when ``out`` is one of ``inputs`` (``(name, path)`` pairs); with ``inside``
    also when it lies inside an input folder, with ``around`` when it holds an input."""
    o = _resolved(out)
    for name, p in inputs:
        if p is None:
            continue
        i = _resolved(p)
        if o == i:
            raise UserError(f"{flag} is the same path as {name}; writing there would replace your input, "
                            f"choose another {flag}", out)
        if inside and i.is_dir() and o.is_relative_to(i):
            raise UserError(f"{flag} is inside {name} ({p}); writing there would mix outputs into your input, "
                            f"choose another {flag}", out)
        if around and o.exists() and i.is_relative_to(o):
            raise UserError(f"{flag} holds {name} ({p}); writing there could replace your input, "
                            f"choose another {flag}", out)


def finished_markers(out: Path, patterns: Sequence[str]) -> list[Path]:
    """Files under ``out`` matching ``patterns`` (globs relative to ``out``), sorted."""
    if not out.is_dir():
        return []
    found: set[Path] = set()
    for pat in patterns:
        found.update(out.glob(pat))
    return sorted(found)


def claim_output(
    out: str | Path,
    *,
    markers: Sequence[str],
    owned: Sequence[str] = (),
    resume: bool | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Make sure ``out`` may be written.

    ``markers``: globs (relative to ``out``) whose presence means a run is already there.
    With ``resume`` true the run is continued (nothing is removed); with ``overwrite`` the
    files matching ``markers`` and ``owned`` (the command's own outputs) are removed first;
    otherwise a present run is a UserError saying which flag to add. ``resume=None`` means
    the command cannot resume (the message then offers ``--overwrite`` only). Returns the
    files removed.
    """
    out = Path(out)
    found = finished_markers(out, markers)
    if not found or resume:
        return []
    if not overwrite:
        hint = "pass --resume to continue it, --overwrite to replace it" if resume is not None else "pass --overwrite to replace it"
        raise UserError(f"already holds a run ({found[0].relative_to(out)}); {hint}, or choose another --out", out)
    removed = []
    for p in finished_markers(out, [*markers, *owned]):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        removed.append(p)
    return removed


def claim_output_file(out: str | Path, *, overwrite: bool, flag: str = "--out") -> None:
    """A single-file output (``export``, ``train-segmentor``): refuse an existing file unless
    ``overwrite``, refuse a folder, and name a parent that is a file or missing permissions."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"is a folder; {flag} takes a file path (e.g. {out / 'encoder.safetensors'})", out)
    if out.exists() and not overwrite:
        raise UserError(f"already exists; pass --overwrite to replace it, or choose another {flag}", out)
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{parent} is a file, not a folder; choose another {flag}", out)
            break


def check_writable_dir(folder: str | Path, *, flag: str = "--out") -> None:
    """Create ``folder`` and prove it is writable (one-line UserError naming the problem)."""
    import os

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test.{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to this folder ({exc.strerror or exc}); choose another {flag} "
                        "or fix its permissions", folder) from exc
