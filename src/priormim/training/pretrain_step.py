"""The pretraining step and epoch: the method's forward, the loop skeleton's update, the logs.

:func:`train_one_epoch` runs :func:`priormim.training.loop.run_epoch` with one step: the batch
through the (DDP-wrapped) method (:class:`priormim.methods.PretrainMethod`: masking and loss),
then the per-step record (loss terms, lr, masked vessel share, the masking's state).
:func:`compute_losses` and :func:`masked_step` are the older per-batch entry points, kept for
tests and benchmarks; both go through the same methods.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from priormim.config import PretrainConfig
from priormim.masking import MaskingContext, MaskingStrategy
from priormim.methods import MaskGuide, PretrainMethod, StepInfo, build_method, segmentor_probs
from priormim.methods.legacy import method_for_model
from priormim.training import distributed as D
from priormim.training.loop import GradientUpdater, RunLogger, autocast_context, progress_bar, run_epoch
from priormim.training.pretrain_setup import masking_progress

__all__ = ["EpochState", "MaskedStep", "StepOutput", "compute_losses", "masked_step", "segmentor_probs",
           "train_one_epoch"]

NONFINITE_HINT = ("lower optim.blr or set optim.clip_grad "
                  "(the last good checkpoint is kept; resume with --resume)")


@dataclass
class StepOutput:
    loss: Tensor
    terms: dict[str, Tensor]


def compute_losses(
    model: nn.Module,
    batch_images: Tensor,
    mask: Tensor,
    *,
    segmentor: nn.Module | None,
    consistency_weight: float,
    norm_mean: float,
    norm_std: float,
    patch_heat: Tensor | None = None,
    gaze_alpha: float = 0.5,
    gaze_gamma: float = 1.0,
    progress: float = 0.0,
    scores: Tensor | None = None,
    seg_target: Tensor | None = None,
) -> StepOutput:
    """The loss of ``model``'s method for one batch under a given ``mask`` bool ``[B, L]``.

    MAE family: ``L = L_rec + consistency_weight * L_cons`` (``segmentor`` None: no consistency
    term; ``seg_target`` ``[B, 1, H, W]`` is ``sigmoid(S(x))`` if the caller has it). VP-MIM:
    :func:`priormim.models.vpmim.vpmim_loss`, weighted by ``patch_heat`` ``[B, L]`` when given. A
    zoo model: its own ``forward(images, mask, progress=, scores=)``.
    """
    method = method_for_model(model, consistency=segmentor is not None, consistency_weight=consistency_weight,
                              gaze_weighting=patch_heat is not None, gaze_alpha=gaze_alpha, gaze_gamma=gaze_gamma)
    if segmentor is not None:
        method.attach_segmentor(segmentor, norm_mean=norm_mean, norm_std=norm_std)
    guide = MaskGuide(scores=None, aux={"seg_target": seg_target, "scores": scores})
    out = method.loss(batch_images, mask, patch_prior=patch_heat, guide=guide, step=StepInfo(step_progress=progress))
    return StepOutput(loss=out.loss, terms=out.terms)


@dataclass
class MaskedStep:
    """One batch through masking and the method's loss (see :func:`masked_step`).

    out: loss and logged terms. mask: bool ``[B, L]``. ctx: the masking context used.
    patch_prior: ``[B, L]`` per-patch share of the data prior (vessel / gaze), for logging.
    """

    out: StepOutput
    mask: Tensor
    ctx: MaskingContext
    patch_prior: Tensor


def masked_step(
    model: nn.Module,
    imgs: Tensor,
    prior: Tensor,
    *,
    masking: MaskingStrategy,
    cfg: PretrainConfig,
    segmentor: nn.Module | None = None,
    norm_mean: float,
    norm_std: float,
    progress: float,
    step_progress: float,
    generator: torch.Generator | None = None,
) -> MaskedStep:
    """Priors -> (segmentor) -> masks -> losses for one batch of recipe ``cfg``'s method around
    ``model``, forward only. imgs ``[B, C, H, W]`` normalised, prior ``[B, 1, H, W]``."""
    method = build_method(cfg, model=model)
    if segmentor is not None:
        method.attach_segmentor(segmentor, norm_mean=norm_mean, norm_std=norm_std)
    step = StepInfo(masking=masking, progress=progress, step_progress=step_progress, generator=generator,
                    amp=functools.partial(autocast_context, imgs.device, cfg.train.amp))
    out = method(imgs, prior, step=step)
    return MaskedStep(out=StepOutput(loss=out.loss, terms=out.terms), mask=out.mask, ctx=out.ctx,
                      patch_prior=out.patch_prior)


@dataclass
class EpochState:
    """What every epoch of a pretraining run shares.

    method: the unwrapped method; forward: the same, DDP-wrapped when distributed. masking: the
    run's strategy; generator: the mask generator; updater: accumulation, clipping, the update
    and its hooks (EMA, lr schedule); logger: ``log.jsonl`` + TensorBoard.
    """

    cfg: PretrainConfig
    method: PretrainMethod
    forward: nn.Module
    masking: MaskingStrategy
    generator: torch.Generator
    updater: GradientUpdater
    logger: RunLogger
    dist: D.DistInfo
    device: torch.device


def train_one_epoch(state: EpochState, loader: Any, epoch: int) -> dict:
    """One pass over the loader; returns the epoch means (``step`` is ``state.updater.updates``)."""
    cfg, method, dist, device = state.cfg, state.method, state.dist, state.device
    method.train()
    epochs = cfg.optim.epochs
    progress_value = masking_progress(cfg, epoch)  # weak-to-strong, per epoch
    sums: dict[str, float] = {}
    steps = len(loader) if cfg.train.max_steps_per_epoch is None else min(len(loader), cfg.train.max_steps_per_epoch)
    bar = progress_bar(steps, f"epoch {epoch + 1}/{epochs}", enabled=dist.is_main and cfg.train.progress)
    amp = functools.partial(autocast_context, device, cfg.train.amp)
    last = {"lr": state.updater.lr, "n": 0}

    def step(it: int, batch: dict) -> tuple[Tensor, Any]:
        imgs = batch["image"].to(device, non_blocking=True)
        prior = batch["prior"].to(device, non_blocking=True)
        info = StepInfo(masking=state.masking, progress=progress_value, step_progress=(epoch + it / steps) / epochs,
                        generator=state.generator, amp=amp)
        out = state.forward(imgs, prior, step=info)
        return out.loss, out

    def record(it: int, loss: Tensor, out: Any, lr: float) -> None:
        mask, patch_prior = out.mask, out.patch_prior
        # Share of masked patches that contain vessel (prior > 0): the quantity guidance raises.
        vessel_share = ((patch_prior > 0) & mask).sum() / mask.sum().clamp_min(1)
        terms = {k: float(v) for k, v in out.terms.items()}
        terms["masked_vessel_share"] = float(vessel_share)
        # What uniform random masking gives on average: the share of vessel patches among all
        # patches of these (augmented) images; figures draw it as the reference line.
        terms["vessel_patch_share"] = float((patch_prior > 0).float().mean())
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v
        last["n"] += 1
        last["lr"] = lr
        if dist.is_main and (it % cfg.train.log_every == 0):
            rec = {"epoch": epoch, "step": state.updater.updates, "lr": lr, **terms, **state.masking.state(out.ctx)}
            state.logger.log(rec, state.updater.updates, "train")
        if bar is not None:
            bar.set_postfix(loss=f"{terms['loss']:.4f}", lr=f"{lr:.2e}")

    t0 = time.perf_counter()
    run_epoch(loader, steps=steps, step=step, updater=state.updater, hint=NONFINITE_HINT,
              where=lambda it: f"epoch {epoch}, step {it}", record=record, bar=bar,
              # EMA teachers follow the share of training done after each update.
              on_update=lambda it: method.after_optimizer_step((epoch + (it + 1) / steps) / epochs))
    means = {k: v / max(last["n"], 1) for k, v in sums.items()}
    # Every process reports the same epoch numbers.
    for k in list(means):
        means[k] = float(D.all_reduce_mean(torch.tensor(means[k], device=device)))
    means.update({"epoch": epoch, "step": state.updater.updates, "lr": last["lr"],
                  "epoch_time_s": time.perf_counter() - t0})
    means.update(state.masking.state(MaskingContext(batch_size=1, grid_size=method.grid_size, progress=progress_value)))
    return means
