"""Classification loss, AUC, augmentation and the training loop (:func:`fit`) of one seed."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from timm.scheduler import CosineLRScheduler
from torch import Tensor, nn

from priormim.errors import UserError
from priormim.metrics import binary_auc, multiclass_auc, multilabel_auc
from priormim.training.cls.config import FitResult
from priormim.training.loop import (
    GradientUpdater,
    RunLogger,
    autocast_context,
    progress_bar,
    resume_checkpoint,
    run_epoch,
    save_last_checkpoint,
)

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# Loss, scores, AUC


def classification_loss(logits: Tensor, labels: Tensor, *, task: str) -> Tensor:
    """BCE for multi-label ``[B, C]`` float labels, cross-entropy for class indices ``[B]``."""
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    return F.cross_entropy(logits.float(), labels.long())


def auc_scores(logits: Tensor, labels: Tensor, *, task: str, class_names: list[str]) -> tuple[float, dict[str, float]]:
    """``(AUC, per-label AUC)`` from logits ``[N, K]``.

    binary: score = softmax probability of ``class_names[1]``; multiclass: macro one-vs-rest;
    multilabel: mean over labels whose AUC is defined (per-label NaN otherwise).
    """
    logits = logits.float()
    if not bool(torch.isfinite(logits).all()):
        raise UserError("the model's outputs are NaN or infinite: training diverged; lower --lr (or check the "
                        "encoder file), then run again with --overwrite")
    if task == "multilabel":
        mean, per = multilabel_auc(torch.sigmoid(logits), labels)
        return mean, dict(zip(class_names, per))
    probs = torch.softmax(logits, dim=1)
    if task == "binary":
        auc = binary_auc(probs[:, 1], labels)
        return auc, {class_names[1]: auc}
    per = {c: binary_auc(probs[:, k], (labels == k).long()) for k, c in enumerate(class_names)}
    return multiclass_auc(probs, labels), per


# ----------------------------------------------------------------------------------------------
# Augmentation


def random_crop_rotate(
    x: Tensor,
    *,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.8, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    max_degrees: float = 10.0,
    hflip: bool = False,
) -> Tensor:
    """Random resized crop + small rotation (+ optional flip) as one affine warp per image.

    Args:
        x: float images ``[B, C, H, W]`` in ``[0, 1]`` (any device).
        generator: CPU generator; the draws do not depend on the device.
        scale: crop area as a fraction of the image; ratio: crop aspect ratio range.

    Returns:
        ``[B, C, H, W]``; pixels that come from outside the image are 0 (black, as the film border).
    """
    b = x.shape[0]
    u = torch.rand(b, 5, generator=generator, dtype=torch.float64)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)  # crop width / image width
    h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    cx = (2 * u[:, 2] - 1) * (1 - w)  # crop centre, normalised [-1, 1] coordinates
    cy = (2 * u[:, 3] - 1) * (1 - h)
    angle = torch.deg2rad((2 * u[:, 4] - 1) * max_degrees)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0).double() if hflip else torch.ones(b, dtype=torch.float64)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Output grid -> input coordinates: rotate the scaled (and maybe mirrored) grid, then shift.
    theta = torch.stack(
        [torch.stack([cos * w * flip, -sin * h, cx], 1), torch.stack([sin * w * flip, cos * h, cy], 1)], 1
    ).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ----------------------------------------------------------------------------------------------
# Training


def _amp_mode(amp: bool | str) -> str:
    """``amp`` as a policy name: True = bf16 (the historical flag), False = off, else as given."""
    return ("bf16" if amp else "off") if isinstance(amp, bool) else amp


@torch.no_grad()
def predict_logits(
    model: nn.Module, inputs: Tensor, *, prepare: Callable[[Tensor], Tensor], batch_size: int, device: torch.device,
    amp: bool | str = False,
) -> Tensor:
    """``model(prepare(batch))`` over all ``inputs`` in eval mode; float32 logits ``[N, K]`` on the CPU.

    ``amp``: the AMP policy (``auto`` / ``bf16`` / ``fp16`` / ``off``; True = bf16, False = off)."""
    model.eval()
    out = []
    for start in range(0, len(inputs), batch_size):
        x = prepare(inputs[start : start + batch_size].to(device))
        with autocast_context(device, _amp_mode(amp)):
            out.append(model(x).float().cpu())
    return torch.cat(out)


@dataclass
class SeedRun:
    """Where one seed's training keeps its state (all optional for :func:`fit`).

    ``run_dir``: ``last.ckpt`` after every epoch but the last (the one before as
    ``previous.ckpt``), resumed from when present if its ``fingerprint`` (the settings) matches;
    the caller removes them once its ``metrics.json`` marks the seed done. ``log``: the
    per-epoch records in ``run_dir/log.jsonl`` + ``run_dir/tb`` (:class:`RunLogger`; on resume
    cut back to the checkpoint's epoch). ``progress``: a tqdm bar per epoch.
    """

    run_dir: Path | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)
    log: bool = False
    progress: bool = False
    what: str = "resume"


def fit(
    model: nn.Module,
    *,
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    task: str,
    class_names: list[str],
    optimizer: torch.optim.Optimizer,
    epochs: int,
    warmup_epochs: int,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    prepare_train: Callable[[Tensor], Tensor] = lambda x: x,
    prepare_eval: Callable[[Tensor], Tensor] = lambda x: x,
    amp: bool | str = False,
    log_prefix: str = "",
    run: SeedRun | None = None,
) -> FitResult:
    """Train ``model`` on ``(train_x, train_y)``; keep the epoch with the best validation AUC
    (ties broken by the lower validation loss).

    ``train_x`` / ``val_x`` are features ``[N, D]`` (linear probe: ``model`` is the head) or
    ``uint8`` images ``[N, 1, H, W]`` (full: ``prepare_*`` augment and normalise them). The lr
    follows a per-step cosine with linear warm-up (at most half the epochs). ``amp``: the AMP
    policy (see :func:`predict_logits`). The steps run on :func:`priormim.training.loop.run_epoch`
    (non-finite guard, :class:`~priormim.training.loop.GradientUpdater`). With ``run``: per-epoch
    checkpoint, resume, log records and progress bars (:class:`SeedRun`). On return ``model``
    holds the best weights.
    """
    from priormim.training.checkpoint import rng_state, set_rng_state, truncate_log

    run = run or SeedRun()
    amp = _amp_mode(amp)
    n = len(train_x)
    # Full batches only: BatchNorm (linear head) cannot train on a batch of one, and a tiny
    # last batch would get a full-size step.
    steps_per_epoch = max(1, n // batch_size)
    total = epochs * steps_per_epoch
    scheduler = CosineLRScheduler(
        optimizer, t_initial=total, warmup_t=min(warmup_epochs, epochs // 2) * steps_per_epoch, warmup_lr_init=0.0, lr_min=0.0, t_in_epochs=False
    )
    updater = GradientUpdater(optimizer=optimizer, params=model.parameters,
                              after_update=[lambda k: scheduler.step_update(num_updates=k)])
    best_state, best_auc, best_loss, best_epoch = None, -math.inf, math.inf, 0
    history: list[dict[str, float]] = []
    start = 1
    ckpt = resume_checkpoint(run.run_dir, run.fingerprint, what=run.what) if run.run_dir is not None else None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        updater.updates = int(ckpt["step"])
        start = int(ckpt["epoch"]) + 1
        best_state, best_epoch, history = ckpt["best_state"], int(ckpt["best_epoch"]), list(ckpt["history"])
        best_auc, best_loss = float(ckpt["best_auc"]), float(ckpt["best_loss"])
        generator.set_state(ckpt["generator"])
        set_rng_state(ckpt["rng"])
        logger.info("%sresumed from %s after epoch %d", log_prefix, ckpt["path"], start - 1)
    log = None
    if run.log and run.run_dir is not None:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        truncate_log(run.run_dir / "log.jsonl", start - 1 if ckpt is not None else None)
        log = RunLogger(run.run_dir, True, purge_step=start if ckpt is not None else None)
    try:
        log_every = max(1, epochs // 10)
        for epoch in range(start, epochs + 1):
            model.train()
            perm = torch.randperm(n, generator=generator)
            losses: list[float] = []

            def step(k: int, idx: Tensor) -> tuple[Tensor, None]:
                x, y = prepare_train(train_x[idx].to(device)), train_y[idx].to(device)
                with autocast_context(device, amp):
                    return classification_loss(model(x), y, task=task), None

            batches = (perm[k * batch_size : (k + 1) * batch_size] if n >= batch_size else perm for k in range(steps_per_epoch))
            run_epoch(batches, steps=steps_per_epoch, step=step, updater=updater, hint="lower --lr",
                      where=lambda k: f"epoch {epoch}, step {k}", record=lambda k, loss, _p, _lr: losses.append(loss.item()),
                      bar=progress_bar(steps_per_epoch, f"{log_prefix}epoch {epoch}/{epochs}", enabled=run.progress))
            logits = predict_logits(model, val_x, prepare=prepare_eval, batch_size=batch_size, device=device, amp=amp)
            val_auc, _ = auc_scores(logits, val_y, task=task, class_names=class_names)
            val_loss = classification_loss(logits, val_y, task=task).item()
            history.append(dict(epoch=epoch, train_loss=float(np.mean(losses)), val_loss=val_loss, val_auc=val_auc, lr=optimizer.param_groups[-1]["lr"]))
            # Best val AUC; ties (a small val set saturates at 1.0) go to the lower val loss.
            if math.isfinite(val_auc) and (val_auc, -val_loss) > (best_auc, -best_loss):
                best_auc, best_loss, best_epoch = val_auc, val_loss, epoch
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            if log is not None:
                log.log({k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in history[-1].items()},
                        step=epoch, prefix="finetune")
            if epoch % log_every == 0 or epoch == epochs:
                logger.info(
                    "%sepoch %d/%d  train loss %.4f  val loss %.4f  val AUC %.4f", log_prefix, epoch, epochs, history[-1]["train_loss"], val_loss, val_auc
                )
            if run.run_dir is not None and epoch < epochs:
                save_last_checkpoint({
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "epoch": epoch, "step": updater.updates, "best_state": best_state, "best_epoch": best_epoch,
                    "best_auc": best_auc, "best_loss": best_loss, "history": history, "generator": generator.get_state(),
                    "rng": rng_state(), "config": run.fingerprint,
                }, run.run_dir)
    finally:
        if log is not None:
            log.close()
    if best_state is None:
        logger.warning("%sthe validation AUC was never defined (one class only?); keeping the last epoch", log_prefix)
        best_auc = math.nan
    else:
        model.load_state_dict(best_state)
    return FitResult(best_epoch=best_epoch, best_val_auc=best_auc, history=history)
