"""Checkpoints that load with ``torch.load(weights_only=True)``.

Everything saved is tensors, numbers, strings, lists and dicts: the config as plain data, RNG
states as tensors. Writes are atomic (temp file + rename), so a crash mid-save leaves the
previous checkpoint intact; a truncated file is detected on load and the previous one used.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from priormim.errors import UserError

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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"cannot write checkpoint ({exc.strerror or exc}); free disk space or fix permissions", path) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
