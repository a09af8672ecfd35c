"""Checkpoints that load with ``torch.load(weights_only=True)``.

Everything saved is tensors, numbers, strings, lists and dicts: the config as plain data, RNG
states as tensors. Writes are atomic (temp file + rename), so a crash mid-save leaves the
previous checkpoint intact; a truncated file is detected on load and the previous one used.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from priormim.errors import UserError
from priormim.io import WriteError, make_temp_file

log = logging.getLogger(__name__)


def rng_state(mask_generator: torch.Generator | None = None) -> dict[str, Any]:
    """All RNG streams as weights-only-safe data."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if mask_generator is not None:
        state["mask_generator"] = mask_generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], mask_generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if mask_generator is not None and "mask_generator" in state:
        mask_generator.set_state(state["mask_generator"])


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Atomically write ``state`` with ``torch.save``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_file(path)
    try:
        torch.save(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        # torch.save reports a full disk as RuntimeError ("... file write failed"), not OSError.
        Path(tmp).unlink(missing_ok=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
        if isinstance(exc, RuntimeError) and _nearly_full(path.parent):
            reason = f"No space left on device; torch: {reason}"
        raise WriteError(f"cannot write checkpoint ({reason}); free disk space or fix permissions, then "
                         "continue with --resume", path, getattr(exc, "errno", None)) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _nearly_full(folder: Path, *, margin: int = 16 << 20) -> bool:
    """True when ``folder``'s file system has less than ``margin`` bytes free (torch.save
    reports a full disk as a RuntimeError without errno; this names the likely cause)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < margin


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (weights only); UserError for a missing or corrupt file."""
    path = Path(path)
    if not path.exists():
        raise UserError("checkpoint does not exist", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle errors, ...
        raise UserError(f"checkpoint is corrupt or truncated ({type(exc).__name__})", path) from exc


def latest_valid_checkpoint(run_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest loadable checkpoint in ``run_dir``: ``last.ckpt``, then ``previous.ckpt``
    (the one ``last.ckpt`` replaced), then numbered ``checkpoint-*.ckpt`` by epoch."""
    run_dir = Path(run_dir)
    candidates = [run_dir / "last.ckpt", run_dir / "previous.ckpt"] + sorted(run_dir.glob("checkpoint-*.ckpt"), reverse=True)
    for c in candidates:
        if not c.exists():
            continue
        try:
            return c, load_checkpoint(c)
        except UserError as exc:
            log.warning("skipping %s", exc)
    return None


# Settings a resumed pretraining run may change: where and how verbosely it runs, how long it
# lasts, where the data lives, and the measured grey-level statistics (re-measured alike).
RESUMABLE_KEYS = frozenset({
    "train.device", "train.progress", "train.amp", "train.save_every", "train.log_every", "optim.epochs",
    "data.num_workers", "data.images", "data.priors", "data.gaze", "data.norm_mean", "data.norm_std",
})


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("encoder_kwargs", "kwargs", "method_kwargs"):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume_config(saved: dict[str, Any], current: dict[str, Any], path: Path, *,
                        ignore: frozenset[str] | tuple[str, ...] = RESUMABLE_KEYS, what: str = "--resume") -> None:
    """UserError naming the first setting (other than ``ignore``, by default
    :data:`RESUMABLE_KEYS`) in which the run being resumed (``current``, a config dict) differs
    from the checkpoint's (``saved``); ``what`` opens the message (the resuming action)."""
    a, b = _flatten(saved), _flatten(current)
    for key in sorted(set(a) | set(b)):
        if key in ignore or a.get(key) == b.get(key):
            continue
        raise UserError(f"{what}: {key} is {b.get(key)!r} but the run was started with {a.get(key)!r}; "
                        f"resume with {key}={a.get(key)!r}, or start a new run with --overwrite or another --out", path)


def check_pretrain_checkpoint(ckpt: Any, path: Path) -> dict[str, Any]:
    """``ckpt`` if it is a pretraining checkpoint (model, optimizer, epoch, config, ...), else a
    UserError: a plain state dict or another tool's file cannot be resumed or exported."""
    need = ("model", "optimizer", "scheduler", "epoch", "step", "config", "rng")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in need):
        keys = ", ".join(sorted(map(str, ckpt))[:5]) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"is not a priormim pretraining checkpoint (found {keys or 'nothing'}); pass a last.ckpt or "
                        "checkpoint-*.ckpt written by `priormim pretrain`", path)
    return ckpt


def truncate_log(path: Path, last_epoch: int | None) -> int:
    """Keep the JSON lines of ``path`` whose ``epoch`` is at most ``last_epoch`` (all gone for
    None): the records a resumed run will write again. Returns the number of lines dropped."""
    from priormim.io import atomic_write_bytes

    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
            keep = last_epoch is not None and int(rec["epoch"]) <= last_epoch
        except (ValueError, KeyError, TypeError):
            keep = False  # a line cut by the crash
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_bytes(path, "".join(f"{ln}\n" for ln in kept).encode("utf-8"))
    return dropped
