"""Data manifests: one row per training image, so that large data sets need no folder listing.

A manifest is a CSV file (Parquet too when ``pyarrow`` is installed) with the columns

========== ===================================================================================
``image``  image path (relative to the manifest's folder, or absolute) - required
``prior``  prior file (vessel PNG or gaze ``.npy``), empty when there is none
``label``  optional label (kept for downstream use; pretraining ignores it)
``bytes``  size of the image file, checked cheaply before training
``sha256`` SHA-256 of the image file (``priormim prior verify`` / ``verify_manifest``)
``prior_sha256`` SHA-256 of the prior file
========== ===================================================================================

Only ``image`` is required; ``priormim prior vessel`` writes all columns. Any further columns
(e.g. the provenance columns of ``priormim ingest``: ``source``, ``frame``, ``contrast``, ...)
are kept in :attr:`ManifestEntry.extra` and written back after the standard ones. Rows are kept in
file order; paths are resolved against the manifest's folder, so a data tree can be moved
with its manifest.

This is a file format below every layer that uses it (the prior caches write manifests, the
data sets and ``priormim ingest`` read them); :mod:`priormim.data.manifest` re-exports it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from priormim.errors import UserError
from priormim.io import atomic_write_bytes, read_csv_rows

log = logging.getLogger(__name__)

__all__ = [
    "COLUMNS",
    "ManifestEntry",
    "file_sha256",
    "is_manifest_path",
    "make_entry",
    "parse_shard",
    "read_manifest",
    "shard_paths",
    "verify_manifest",
    "write_manifest",
]

COLUMNS = ("image", "prior", "label", "bytes", "sha256", "prior_sha256")
MANIFEST_SUFFIXES = (".csv", ".parquet")


@dataclass
class ManifestEntry:
    image: Path
    prior: Path | None = None
    label: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    prior_sha256: str | None = None
    extra: dict[str, str] = field(default_factory=dict)  # further columns, by name


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def make_entry(image: str | Path, prior: str | Path | None = None, label: str | None = None) -> ManifestEntry:
    """An entry with the size and checksums of the files as they are now."""
    image = Path(image)
    prior = None if prior is None else Path(prior)
    return ManifestEntry(
        image=image,
        prior=prior,
        label=label,
        bytes=image.stat().st_size,
        sha256=file_sha256(image),
        prior_sha256=file_sha256(prior) if prior is not None and prior.is_file() else None,
    )


def is_manifest_path(path: str | Path | None) -> bool:
    """True for an existing ``.csv`` / ``.parquet`` file (a manifest rather than a folder)."""
    if path is None:
        return False
    p = Path(path)
    return p.suffix.lower() in MANIFEST_SUFFIXES and p.is_file()


def _rel(path: Path | None, base: Path) -> str:
    if path is None:
        return ""
    path = Path(path)
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def write_manifest(path: str | Path, entries: Iterable[ManifestEntry]) -> Path:
    """Write ``entries`` atomically as CSV (or Parquet for a ``.parquet`` path)."""
    path = Path(path)
    base = path.parent
    entries = list(entries)
    extra_cols = list(dict.fromkeys(k for e in entries for k in e.extra if k not in COLUMNS))
    columns = COLUMNS + tuple(extra_cols)
    rows = [
        {
            **{k: e.extra.get(k, "") for k in extra_cols},
            "image": _rel(e.image, base),
            "prior": _rel(e.prior, base),
            "label": "" if e.label is None else str(e.label),
            "bytes": "" if e.bytes is None else str(int(e.bytes)),
            "sha256": e.sha256 or "",
            "prior_sha256": e.prior_sha256 or "",
        }
        for e in entries
    ]
    if path.suffix.lower() == ".parquet":
        pa, pq = _pyarrow(path)
        table = pa.table({c: pa.array([r[c] for r in rows], type=pa.string()) for c in columns})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        atomic_write_bytes(path, buf.getvalue())
        return path
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode("utf-8"))
    return path


def _pyarrow(path: Path):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise UserError("Parquet manifests need pyarrow (pip install pyarrow); or use a .csv manifest", path) from exc
    return pa, pq


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if path.suffix.lower() == ".parquet":
        _, pq = _pyarrow(path)
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises its own types
            raise UserError(f"cannot read Parquet manifest ({type(exc).__name__}: {exc})", path) from exc
        header = list(table.column_names)
        cols = {c: table.column(c).to_pylist() for c in header}
        rows = [{c: "" if cols[c][k] is None else str(cols[c][k]) for c in header} for k in range(table.num_rows)]
        return header, rows
    return read_csv_rows(path, empty="manifest is empty; it needs a header row with an 'image' column")


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """Entries of a manifest; UserError for a missing file, a missing ``image`` column, bad
    ``bytes`` values or no rows. Paths are resolved against the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise UserError("manifest not found; pass the CSV written by `priormim prior vessel` (or your own)", path)
    header, rows = _read_rows(path)
    if "image" not in header:
        raise UserError(
            f"manifest has no 'image' column (found {', '.join(repr(h) for h in header if h) or 'none'}); "
            f"the header must name the columns {', '.join(COLUMNS)} (only 'image' is required)",
            path,
        )
    if not rows:
        raise UserError("manifest has a header but no rows", path)
    base = path.parent
    out = []
    for line, row in enumerate(rows, start=2):
        image = row.get("image", "")
        if not image:
            raise UserError(f"line {line}: empty 'image' value; every row needs an image path", path)
        size = row.get("bytes", "")
        try:
            nbytes = int(size) if size else None
        except ValueError:
            raise UserError(f"line {line}: 'bytes' is {size!r}; expected a whole number or empty", path) from None
        prior = row.get("prior", "")
        out.append(
            ManifestEntry(
                image=base / image,  # an absolute path stays absolute
                prior=(base / prior) if prior else None,
                label=row.get("label") or None,
                bytes=nbytes,
                sha256=row.get("sha256") or None,
                prior_sha256=row.get("prior_sha256") or None,
                extra={k: row.get(k, "") for k in header if k and k not in COLUMNS},
            )
        )
    return out


def verify_manifest(entries: Sequence[ManifestEntry], *, checksums: bool = False) -> list[tuple[ManifestEntry, str]]:
    """Entries whose files are missing or changed: ``[(entry, reason), ...]``.

    Always checks that the image (and prior, if listed) exist and that the image has the
    recorded size; with ``checksums`` also recomputes the SHA-256 of both files (reads every
    byte: minutes per terabyte).
    """
    bad: list[tuple[ManifestEntry, str]] = []
    for e in entries:
        try:
            st = os.stat(e.image)
        except OSError:
            bad.append((e, "image file is missing"))
            continue
        if e.bytes is not None and st.st_size != e.bytes:
            bad.append((e, f"image has {st.st_size} bytes, the manifest says {e.bytes} (file changed)"))
            continue
        if e.prior is not None and not e.prior.is_file():
            bad.append((e, f"prior file {e.prior} is missing"))
            continue
        if checksums:
            if e.sha256 and file_sha256(e.image) != e.sha256:
                bad.append((e, "image checksum differs from the manifest (file changed)"))
                continue
            if e.prior is not None and e.prior_sha256 and file_sha256(e.prior) != e.prior_sha256:
                bad.append((e, "prior checksum differs from the manifest (prior changed)"))
    return bad


def parse_shard(text: str) -> tuple[int, int]:
    """``"3/8"`` -> ``(3, 8)``: shard 3 of 8 (0-based); UserError for anything else."""
    try:
        i_s, n_s = str(text).split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise UserError(f"--shard must be I/N with 0 <= I < N, e.g. 0/4; got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard must be I/N with 0 <= I < N, e.g. 0/4; got {text!r}")
    return i, n


def shard_paths(paths: Sequence[Path], index: int, count: int) -> list[Path]:
    """Shard ``index`` of ``count``: every ``count``-th path of the sorted list, from ``index``.

    Deterministic and balanced (sizes differ by at most one); the shards are disjoint and
    together hold every path.
    """
    return sorted(paths, key=lambda p: str(p))[index::count]
