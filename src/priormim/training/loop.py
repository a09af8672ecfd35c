"""The training-loop skeleton shared by every loop (pretraining, the consistency segmentor).

Pieces, each usable alone:

* :func:`autocast_context` -- the one AMP policy (``train.amp``: auto = bf16 on CUDA, off on CPU).
* :class:`GradientUpdater` -- gradient accumulation (``accum_iter``) with DDP ``no_sync`` on the
  steps that do not update, gradient clipping, ``optimizer.step()``, the per-update hooks (EMA
  teachers, then the per-step lr schedule's ``step_update`` / ``step``).
* :func:`check_finite` -- the non-finite-loss guard (a one-line :class:`LossNotFinite`).
* :class:`RunLogger` -- ``log.jsonl`` + TensorBoard scalars (rank 0), :func:`progress_bar` (tqdm).
* :func:`run_epoch` -- one pass over a loader with the pieces above.
* :func:`sigterm_as_interrupt` -- SIGTERM (scancel, SLURM pre-emption) stops a run like Ctrl-C.
* :func:`save_epoch_checkpoint` -- ``last.ckpt`` every epoch + ``checkpoint-NNNN.ckpt`` rotation.
* :func:`save_last_checkpoint` / :func:`resume_checkpoint` -- a fine-tuning seed's ``last.ckpt``
  (the one before kept as ``previous.ckpt``) and its resumption with a settings fingerprint.

How a loop adopts it (pretraining, both fine-tunings and the segmentor do)::

    updater = GradientUpdater(optimizer=opt, params=model.parameters, accum_iter=cfg.accum_iter,
                              clip_grad=cfg.clip_grad, ddp=ddp_model_or_None,
                              after_update=[lambda n: scheduler.step_update(num_updates=n)])
    amp = functools.partial(autocast_context, device, cfg.amp)
    def step(it, batch):                       # forward only; runs under no_sync when it must
        with amp():
            loss = criterion(model(batch["image"]), batch["mask"])
        return loss, {}
    means = run_epoch(loader, steps=len(loader), step=step, updater=updater,
                      hint="lower the lr", bar=progress_bar(len(loader), "epoch 1/10", enabled=is_main))

then per epoch: the best epoch on validation, :func:`save_epoch_checkpoint` and a
:class:`RunLogger` record. Resume with a settings fingerprint is
:func:`priormim.training.checkpoint.check_resume_config` on the checkpoint's ``config``.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from priormim.errors import UserError

__all__ = [
    "GradientUpdater",
    "LossNotFinite",
    "RunLogger",
    "autocast_context",
    "autocast_dtype",
    "check_finite",
    "progress_bar",
    "remove_checkpoints",
    "run_epoch",
    "resume_checkpoint",
    "save_epoch_checkpoint",
    "save_last_checkpoint",
    "seed_everything",
    "sigterm_as_interrupt",
]


class LossNotFinite(UserError):
    pass


def autocast_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """The autocast dtype of the AMP policy ``amp`` on ``device`` (None: fp32); see :func:`autocast_context`."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "off"
    if amp == "off":
        return None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    if dtype is None:
        raise UserError(f"train.amp must be auto, bf16, fp16 or off, got '{amp}'")
    return dtype


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """The run's AMP policy: ``auto`` (bf16 on CUDA, off elsewhere), ``bf16``, ``fp16`` or ``off``."""
    dtype = autocast_dtype(device, amp)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_finite(loss: Tensor, *, where: str, hint: str) -> float:
    """``float(loss)``; :class:`LossNotFinite` naming ``where`` (e.g. "epoch 3, step 12") and the fix."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise LossNotFinite(f"loss is {value} at {where}; {hint}")
    return value


class GradientUpdater:
    """Back-propagate each step's loss; every ``accum_iter`` steps (and at the epoch's last) clip,
    ``optimizer.step()``, zero the gradients and run ``after_update(n_updates)`` hooks in order.

    ``ddp``: the DistributedDataParallel wrapper, whose gradients are synchronised only on the
    updating steps (:meth:`sync_context`); None without DDP. ``params``: callable returning the
    parameters to clip. ``updates`` counts optimiser updates (the global step; set it on resume).
    """

    def __init__(self, *, optimizer: torch.optim.Optimizer, params: Callable[[], Iterable[Tensor]],
                 accum_iter: int = 1, clip_grad: float | None = None, ddp: nn.Module | None = None,
                 after_update: Sequence[Callable[[int], None]] = (), updates: int = 0) -> None:
        self.optimizer = optimizer
        self.params = params
        self.accum = max(1, int(accum_iter))
        self.clip_grad = clip_grad
        self.ddp = ddp
        self.after_update = list(after_update)
        self.updates = int(updates)

    def is_sync(self, it: int, steps: int) -> bool:
        """Whether step ``it`` (0-based) of ``steps`` ends an accumulation window (updates)."""
        return (it + 1) % self.accum == 0 or it + 1 == steps

    def sync_context(self, sync: bool) -> contextlib.AbstractContextManager:
        return self.ddp.no_sync() if (self.ddp is not None and not sync) else contextlib.nullcontext()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def start(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: Tensor, *, sync: bool) -> bool:
        """``(loss / accum_iter).backward()``, then the update if ``sync``; True if it updated."""
        with self.sync_context(sync):
            (loss / self.accum).backward()
        if not sync:
            return False
        if self.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.params(), self.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        for hook in self.after_update:
            hook(self.updates)
        return True


def progress_bar(total: int, desc: str, *, enabled: bool):
    """A tqdm bar on stderr (None when not ``enabled``: other ranks, ``train.progress=false``)."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr)


def run_epoch(
    loader: Iterable,
    *,
    steps: int,
    step: Callable[[int, Any], tuple[Tensor, Any]],
    updater: GradientUpdater,
    hint: str,
    where: Callable[[int], str] = lambda it: f"step {it}",
    record: Callable[[int, Tensor, Any, float], None] | None = None,
    on_update: Callable[[int], None] | None = None,
    bar=None,
) -> None:
    """One pass over ``loader`` (at most ``steps`` batches).

    Per batch ``it``: ``loss, payload = step(it, batch)`` (forward only, under DDP ``no_sync`` when
    the step does not update), the non-finite guard, the backward and (on updating steps) the
    update and ``on_update(it)`` (e.g. an EMA teacher; the updater's own hooks, such as the lr
    schedule, have run), then ``record(it, loss, payload, lr)`` with the lr the update used. ``bar`` (see
    :func:`progress_bar`) advances by one per batch; ``record`` sets its postfix if it wants.
    """
    updater.start()
    for it, batch in enumerate(loader):
        if it >= steps:
            break
        sync = updater.is_sync(it, steps)
        with updater.sync_context(sync):
            loss, payload = step(it, batch)
        check_finite(loss, where=where(it), hint=hint)
        lr = updater.lr  # the lr this update uses (the schedule set it before)
        if updater.backward(loss, sync=sync) and on_update is not None:
            on_update(it)
        if record is not None:
            record(it, loss, payload, lr)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()


class RunLogger:
    """JSON-lines (``log.jsonl``) + TensorBoard scalars (``tb/``), written by rank 0 only.

    ``purge_step``: on resume TensorBoard hides the events logged after the checkpoint's step
    (the ones that are trained again), as ``log.jsonl`` is cut back to the checkpoint.
    """

    def __init__(self, out: Path, enabled: bool, *, purge_step: int | None = None) -> None:
        self.enabled = enabled
        self.writer = None
        self.file = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.file = open(out / "log.jsonl", "a", buffering=1)
            self.writer = SummaryWriter(str(out / "tb"), purge_step=purge_step)

    def log(self, record: dict, step: int, prefix: str) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.writer.close()


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Treat SIGTERM (scancel, SLURM pre-emption, torchrun stopping workers) like Ctrl-C: stop
    at once, keep the finished checkpoints, exit with the 'interrupted' message."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # not allowed here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def save_epoch_checkpoint(state: dict[str, Any], out: Path, *, epoch: int, epochs: int, save_every: int) -> None:
    """``out/last.ckpt`` after every epoch (0-based ``epoch``), and ``out/checkpoint-NNNN.ckpt``
    (1-based) every ``save_every`` epochs and after the last one. Writes are atomic."""
    from priormim.training.checkpoint import save_checkpoint

    save_checkpoint(state, out / "last.ckpt")
    if (epoch + 1) % save_every == 0 or epoch + 1 == epochs:
        save_checkpoint(state, out / f"checkpoint-{epoch + 1:04d}.ckpt")


def save_last_checkpoint(state: dict[str, Any], run_dir: Path) -> None:
    """``run_dir/last.ckpt`` (atomic); the one it replaces is kept as ``previous.ckpt``, so a
    damaged new file falls back to it (:func:`priormim.training.checkpoint.latest_valid_checkpoint`)."""
    import os

    from priormim.training.checkpoint import save_checkpoint

    last = Path(run_dir) / "last.ckpt"
    if last.is_file():
        os.replace(last, last.with_name("previous.ckpt"))
    save_checkpoint(state, last)


def resume_checkpoint(run_dir: Path, config: dict[str, Any], *, what: str, key: str = "config") -> dict[str, Any] | None:
    """The newest loadable ``last.ckpt`` / ``previous.ckpt`` of ``run_dir`` (None if none), after
    checking that its settings (``ckpt[key]``) equal ``config``: a changed setting is a one-line
    UserError naming it (:func:`~priormim.training.checkpoint.check_resume_config`, opened by ``what``)."""
    from priormim.training.checkpoint import check_resume_config, latest_valid_checkpoint

    found = latest_valid_checkpoint(run_dir)
    if found is None:
        return None
    path, ckpt = found
    if not isinstance(ckpt, dict) or key not in ckpt:
        raise UserError(f"is not a checkpoint of this command; delete it to start the seed over", path)
    check_resume_config(ckpt[key], config, path, ignore=(), what=what)
    ckpt["path"] = str(path)
    return ckpt


def remove_checkpoints(run_dir: Path) -> None:
    """Drop ``last.ckpt`` / ``previous.ckpt`` once a seed is finished (its metrics mark it done)."""
    for name in ("last.ckpt", "previous.ckpt"):
        (Path(run_dir) / name).unlink(missing_ok=True)
