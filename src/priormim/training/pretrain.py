"""Masked-image-model pretraining engine (MAE, VasoMIM and their ablations).

A plain PyTorch loop in the style of the MAE reference: ``train_one_epoch`` does the steps,
``pretrain`` sets up data, model, optimiser and checkpoints around it. Launch several
processes with ``torchrun``; each process runs this same code on its shard.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm.optim
import torch
from timm.scheduler import CosineLRScheduler
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from priormim.config import PretrainConfig, save_config
from priormim.data.pretrain import PretrainDataset, compute_norm_stats, paired_train_transform
from priormim.errors import UserError
from priormim.io import atomic_write_bytes, list_images
from priormim.losses import (
    consistency_loss,
    denormalize_prediction,
    freeze,
    masked_reconstruction_loss,
    soft_target_entropy,
)
from priormim.masking import MaskingContext, MaskingStrategy, blend_guidance, build_masking, patch_prob_from_prior
from priormim.models.export import export_encoder
from priormim.models.mae import MaskedAutoencoder
from priormim.models.run import mae_kwargs
from priormim.models.zoo import ZOO_MODELS, ZooPretrainer
from priormim.training import distributed as D
from priormim.training.lr_schedule import MAECosineSchedule
from priormim.training.checkpoint import (
    check_pretrain_checkpoint,
    check_resume_config,
    latest_valid_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    truncate_log,
)

log = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    run_dir: Path
    encoder_path: Path | None
    history: list[dict] = field(default_factory=list)  # one record per epoch


class LossNotFinite(UserError):
    pass


# -- set-up helpers ------------------------------------------------------------------------------
def build_model(cfg: PretrainConfig) -> nn.Module:
    """The model for ``cfg.method``.

    A zoo method (a key of :data:`priormim.models.zoo.ZOO_MODELS`: simmim, amt, hpm, deblurmim,
    crossmae, mocov3, dino, chexworld) gets its class, built by :func:`_build_zoo_model`. Any
    other method (mae, vasomim*, vpmim) is MAE, or VP-MIM's pyramid model when
    ``model.pyramid_scales`` is set.
    """
    m = cfg.model
    zoo_cls = ZOO_MODELS.get(cfg.method)
    if zoo_cls is not None:
        return _build_zoo_model(zoo_cls, cfg)
    if m.method_kwargs:
        raise UserError(f"model.method_kwargs is for the zoo methods ({', '.join(ZOO_MODELS)}); "
                        f"method '{cfg.method}' takes none")
    extra: dict[str, Any] = {}
    cls = MaskedAutoencoder
    if m.pyramid_scales:
        from priormim.models.vpmim import VPMIMAutoencoder

        cls = VPMIMAutoencoder
        extra = {"pyramid_scales": m.pyramid_scales, "pyramid_weights": m.pyramid_weights}
    try:
        return cls(**_mae_kwargs(cfg), **extra)
    except ValueError as exc:
        raise UserError(f"model: {exc}") from exc


def _build_zoo_model(cls: type[ZooPretrainer], cfg: PretrainConfig) -> ZooPretrainer:
    """``cls`` with the ``model.*`` options it takes (see :func:`_mae_kwargs`) and ``model.method_kwargs``.

    Zoo methods compute their own loss, so VasoMIM's consistency loss, VP-MIM's gaze weighting
    and pyramid heads are refused rather than silently ignored.
    """
    if (cfg.consistency.enabled or cfg.gaze_weighting.enabled or cfg.model.pyramid_scales
            or cfg.masking.segmentor_weight > 0):
        raise UserError(f"method '{cfg.method}' has its own loss and masking: set consistency.enabled=false, "
                        "gaze_weighting.enabled=false, masking.segmentor_weight=0 and no model.pyramid_scales")
    base = _mae_kwargs(cfg)
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())  # wraps a whole MAE
    own = sorted(n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in base)
    unknown = sorted(set(cfg.model.method_kwargs) - set(own))
    if unknown:
        raise UserError(f"unknown model.method_kwargs '{unknown[0]}' for method '{cfg.method}' "
                        f"(valid: {', '.join(own) or 'none'})")
    kwargs = {k: v for k, v in base.items() if takes_any or k in params}
    try:
        return cls(**kwargs, **cfg.model.method_kwargs)
    except ValueError as exc:
        raise UserError(f"model ({cfg.method}): {exc}") from exc


def _mae_kwargs(cfg: PretrainConfig) -> dict[str, Any]:
    return mae_kwargs(cfg)  # in the models layer so MaskedAutoencoder.from_run can rebuild runs


def masking_progress(cfg: PretrainConfig, epoch: int) -> float:
    """Training progress the masking schedule sees during ``epoch`` (0-based).

    ``official`` (VasoMIM code): ``(epoch + 1) / epochs``, so beta = 0.5 (e + 1) / E;
    ``priormim``: ``epoch / (epochs - 1)`` (1 for a one-epoch run).
    """
    epochs = cfg.optim.epochs
    if cfg.masking.schedule == "official":
        return (epoch + 1) / epochs
    return 1.0 if epochs == 1 else epoch / (epochs - 1)


def build_lr_schedule(cfg: PretrainConfig, optimizer: torch.optim.Optimizer, *, lr: float, steps_per_epoch: int):
    """MAE's per-update cosine (``optim.schedule=mae``) or timm's (``timm``); both ``step_update``."""
    accum = cfg.optim.accum_iter
    if cfg.optim.schedule == "mae":
        return MAECosineSchedule(optimizer, lr=lr, min_lr=cfg.optim.min_lr, warmup_epochs=cfg.optim.warmup_epochs,
                                 epochs=cfg.optim.epochs, steps_per_epoch=steps_per_epoch, accum_iter=accum)
    updates_per_epoch = max(1, steps_per_epoch // accum)
    return CosineLRScheduler(
        optimizer,
        t_initial=cfg.optim.epochs * updates_per_epoch,
        lr_min=cfg.optim.min_lr,
        warmup_t=cfg.optim.warmup_epochs * updates_per_epoch,
        warmup_lr_init=lr * 1e-3,
        t_in_epochs=False,
    )


def build_masking_strategy(cfg: PretrainConfig) -> MaskingStrategy:
    try:
        return build_masking(cfg.masking.name, mask_ratio=cfg.masking.mask_ratio, **cfg.masking.kwargs)
    except (ValueError, TypeError) as exc:
        raise UserError(f"masking: {exc}") from exc


def default_prior_dir(images: Path, out: Path, kind: str) -> Path:
    """``<images>/../priors/<kind>`` when that is writable, else inside the run folder."""
    candidate = images.resolve().parent / "priors" / kind
    try:
        candidate.mkdir(parents=True, exist_ok=True)
        probe = candidate / ".write_test"
        probe.touch()
        probe.unlink()
        return candidate
    except OSError:
        return out / "priors" / kind


def prepare_priors(cfg: PretrainConfig, images: Path, out: Path, dist: D.DistInfo) -> tuple[list[Path], Any]:
    """Compute missing priors (rank 0) and return (usable image paths, prior loader or None).

    ``images`` is a folder or a data manifest (:mod:`priormim.data.manifest`). Rank 0 lists
    the data, computes what is missing and tells the others (who never touch the disk here);
    if it fails, every rank stops with its message. The prior loader is picklable (loader
    workers may be spawned).
    """
    plan = D.run_on_main(lambda: _plan_priors(cfg, images, out), dist)
    cfg.data.priors, cfg.data.gaze = plan["priors"], plan["gaze"]
    paths = [Path(p) for p in plan["paths"]]
    kind = plan["kind"]
    if kind == "none":
        return paths, None
    if plan["prior_map"] is not None:  # a manifest names each prior file
        prior_map = {str(k): Path(v) for k, v in plan["prior_map"].items()}
        if kind == "vessel":
            return paths, functools.partial(_mapped_vessel_prior, prior_map, Path(plan["priors"]))
        return paths, functools.partial(_mapped_gaze_prior, prior_map)
    if kind == "vessel":
        from priormim.priors.cache import load_prior

        return paths, functools.partial(load_prior, Path(plan["priors"]))
    from priormim.priors.gaze_cache import load_gaze_prior

    return paths, functools.partial(load_gaze_prior, Path(plan["priors"]), missing="none")


def _mapped_vessel_prior(prior_map: dict[str, Path], fallback_dir: Path, image: Path):
    from priormim.io import read_mask
    from priormim.priors.cache import load_prior

    p = prior_map.get(str(image))
    return read_mask(p) if p is not None else load_prior(fallback_dir, image)


def _mapped_gaze_prior(prior_map: dict[str, Path], image: Path):
    from priormim.priors.gaze_cache import load_gaze_prior

    p = prior_map.get(str(image))
    return None if p is None else load_gaze_prior(p.parent, p, missing="none")


def _plan_priors(cfg: PretrainConfig, images: Path, out: Path) -> dict[str, Any]:
    """Rank 0's half of :func:`prepare_priors`: plain data only (it is broadcast)."""
    from priormim.data.manifest import is_manifest_path, read_manifest, verify_manifest

    kind = cfg.data.prior
    if kind not in ("vessel", "gaze", "none"):
        raise UserError(f"data.prior must be vessel, gaze or none, got '{kind}'")
    manifest = is_manifest_path(images)
    prior_map: dict[str, str] | None = None
    if manifest:
        entries = read_manifest(images)
        bad = verify_manifest(entries)
        for e, reason in bad[:10]:
            log.warning("skipped %s: %s", e.image, reason)
        if bad:
            log.warning("%d of %d manifest rows skipped (missing or changed files; `priormim prior verify --manifest %s`)",
                        len(bad), len(entries), images)
        bad_ids = {id(e) for e, _ in bad}
        entries = [e for e in entries if id(e) not in bad_ids]
        if not entries:
            raise UserError("no usable rows: every image listed is missing or changed", images)
        paths = [e.image for e in entries]
        prior_map = {str(e.image): str(e.prior) for e in entries if e.prior is not None}
    else:
        paths = list_images(images)

    def result(usable: list[Path], prior_dir: Path | None) -> dict[str, Any]:
        return {"paths": [str(p) for p in usable], "kind": kind, "priors": None if prior_dir is None else str(prior_dir),
                "gaze": cfg.data.gaze, "prior_map": prior_map if kind != "none" else None}

    if kind == "none":
        return result(paths, None)
    if cfg.data.priors:
        prior_dir = Path(cfg.data.priors)
    elif manifest:
        prior_dir = out / "priors" / kind
    else:
        prior_dir = default_prior_dir(images, out, kind)
    if kind == "vessel":
        from priormim.priors.cache import ensure_vessel_priors, prior_path

        todo = paths if prior_map is None else [p for p in paths if str(p) not in prior_map]
        if todo:
            summary = ensure_vessel_priors(images if prior_map is None else todo, prior_dir, progress=cfg.train.progress,
                                           preset=cfg.prior.preset)
            if summary.n_failed:
                log.warning("%d image(s) could not be read and are skipped", summary.n_failed)
        usable = [p for p in paths if (prior_map is not None and str(p) in prior_map) or prior_path(prior_dir, p).exists()]
        return result(usable, prior_dir)
    # gaze
    if prior_map is not None:
        n_without = len(paths) - len(prior_map)
        if n_without:
            log.warning("%d of %d manifest rows have no gaze prior; they are masked at random", n_without, len(paths))
        return result(paths, prior_dir)
    from priormim.priors.gaze_cache import compute_gaze_priors

    if not cfg.data.gaze and (images.resolve().parent / "gaze").is_dir():
        cfg.data.gaze = str(images.resolve().parent / "gaze")  # the layout `priormim synth cxr` writes
    if not cfg.data.gaze:
        raise UserError("data.prior=gaze needs data.gaze=<REFLACX-format gaze root>")
    compute_gaze_priors(root=cfg.data.gaze, images=images, out=prior_dir, format="reflacx", progress=cfg.train.progress)
    return result(paths, prior_dir)


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "off"
    if amp == "off":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    if dtype is None:
        raise UserError(f"train.amp must be auto, bf16, fp16 or off, got '{amp}'")
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class JsonlLogger:
    """JSON-lines + TensorBoard scalars, written by rank 0 only."""

    def __init__(self, out: Path, enabled: bool, *, purge_step: int | None = None) -> None:
        self.enabled = enabled
        self.writer = None
        self.file = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.file = open(out / "log.jsonl", "a", buffering=1)
            # On resume TensorBoard hides the events logged after the checkpoint's step (the
            # ones that are trained again), as log.jsonl is cut back to the checkpoint.
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


# -- the step ------------------------------------------------------------------------------------
@dataclass
class StepOutput:
    loss: Tensor
    terms: dict[str, float]


def compute_losses(
    model: nn.Module,
    batch_images: Tensor,
    mask: Tensor,
    *,
    segmentor: nn.Module | None,
    consistency_weight: float,
    norm_mean: float,
    norm_std: float,
    forward: nn.Module | None = None,
    patch_heat: Tensor | None = None,
    gaze_alpha: float = 0.5,
    gaze_gamma: float = 1.0,
    progress: float = 0.0,
    scores: Tensor | None = None,
    seg_target: Tensor | None = None,
) -> StepOutput:
    """``L = L_rec + lambda * L_cons`` for one batch. ``forward`` is the (DDP-wrapped) model.

    ``segmentor`` (None: no consistency term) judges the full de-normalised prediction;
    ``seg_target`` ``[B, 1, H, W]`` is ``sigmoid(S(x))`` when the caller already has it (it
    also guides the masking), else it is computed here.

    A VP-MIM model (pyramid heads) uses :func:`priormim.models.vpmim.vpmim_loss` instead,
    weighted by ``patch_heat`` ``[B, L]`` (recalibrated gaze) when it is given. A zoo model
    computes its whole loss in its own ``forward(images, mask, progress=, scores=)``
    (``progress``: share of training done; ``scores``: its ``mask_scores`` for this batch).
    """
    from priormim.models.vpmim import VPMIMAutoencoder, vpmim_loss

    if isinstance(model, ZooPretrainer):
        res = (forward or model)(batch_images, mask, progress=progress, scores=scores)
        terms = {k: v.detach() for k, v in res.terms.items()}
        terms["loss"] = res.loss.detach()
        return StepOutput(loss=res.loss, terms=terms)
    if isinstance(model, VPMIMAutoencoder):
        res = vpmim_loss(model, batch_images, mask, patch_heat, alpha=gaze_alpha, gamma=gaze_gamma, forward=forward)
        return StepOutput(loss=res.loss, terms={k: v.detach() for k, v in res.terms.items()})
    out = (forward or model)(batch_images, mask)
    target = model.patchify(batch_images)
    l_rec = masked_reconstruction_loss(out.pred, target, mask, norm_pix_loss=model.norm_pix_loss)
    terms = {"loss_rec": l_rec.detach()}
    loss = l_rec
    if segmentor is not None:
        pred = out.pred.float()
        if model.norm_pix_loss:
            pred = denormalize_prediction(pred, target.float())
        # The segmentor works on [0, 1] images; undo the data set's normalisation.
        recon = model.unpatchify(pred) * norm_std + norm_mean
        original = batch_images.float() * norm_std + norm_mean
        if seg_target is None:
            with torch.no_grad():
                seg_target = torch.sigmoid(segmentor(original).float())
        l_cons = consistency_loss(segmentor, original, recon, target=seg_target)
        loss = loss + consistency_weight * l_cons
        terms["loss_cons"] = l_cons.detach()
        # BCE minus the targets' entropy (a KL): 0 when S agrees, unlike L_cons itself.
        terms["loss_cons_kl"] = (l_cons - soft_target_entropy(seg_target)).detach()
    terms["loss"] = loss.detach()
    return StepOutput(loss=loss, terms=terms)


def segmentor_probs(segmentor: nn.Module, imgs: Tensor, *, norm_mean: float, norm_std: float) -> Tensor:
    """``sigmoid(S(x))`` ``[B, 1, H, W]`` float32 of the frozen segmentor on the current crops.

    ``imgs`` are the normalised model inputs; the segmentor takes ``[0, 1]`` images.
    """
    with torch.no_grad():
        return torch.sigmoid(segmentor(imgs.float() * norm_std + norm_mean).float())


def _model_mask_scores(model: nn.Module, imgs: Tensor, progress: float) -> Tensor | None:
    """The model's own per-patch masking scores ``[B, L]`` float32 (AMT attention, HPM predicted
    loss) from its optional ``mask_scores(images, progress=)``, or None (none / not yet)."""
    fn = getattr(model, "mask_scores", None)
    if fn is None:
        return None
    with torch.no_grad():
        scores = fn(imgs, progress=progress)
    return None if scores is None else scores.detach().float()


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
    forward: nn.Module | None = None,
    segmentor: nn.Module | None = None,
    norm_mean: float,
    norm_std: float,
    progress: float,
    step_progress: float,
    generator: torch.Generator | None = None,
) -> MaskedStep:
    """Priors -> (segmentor) -> masks -> losses for one batch, forward only (the caller does
    backward and the update). imgs ``[B, C, H, W]`` normalised, prior ``[B, 1, H, W]``.

    The frozen segmentor (if any) runs once on the crops: ``sigmoid(S(x))`` is blended into
    the guidance (``masking.segmentor_weight``) and is the consistency loss's target.
    """
    device = imgs.device
    patch_prior = patch_prob_from_prior(prior, model.patch_size)
    seg_target = None
    guide = patch_prior
    if segmentor is not None:
        with autocast_context(device, cfg.train.amp):
            seg_target = segmentor_probs(segmentor, imgs, norm_mean=norm_mean, norm_std=norm_std)
        if cfg.masking.segmentor_weight > 0:  # official VasoMIM: 0.5 * vessel prior + 0.5 * sigmoid(S(crop))
            guide = patch_prob_from_prior(blend_guidance(prior, seg_target, cfg.masking.segmentor_weight),
                                          model.patch_size)
    # A model with its own scores (AMT, HPM) masks by them (None: at random), not by the prior.
    own_scores = hasattr(model, "mask_scores")
    scores = None
    if own_scores:
        with autocast_context(device, cfg.train.amp):
            scores = _model_mask_scores(model, imgs, step_progress)
    ctx = MaskingContext(batch_size=imgs.shape[0], grid_size=model.grid_size, device=device,
                         patch_prior=scores if own_scores else guide, progress=progress, generator=generator)
    mask = masking(ctx)
    with autocast_context(device, cfg.train.amp):
        out = compute_losses(
            model, imgs, mask,
            segmentor=segmentor if cfg.consistency.enabled else None,
            consistency_weight=cfg.consistency.weight,
            norm_mean=norm_mean,
            norm_std=norm_std,
            forward=forward,
            patch_heat=patch_prior if cfg.gaze_weighting.enabled else None,
            gaze_alpha=cfg.gaze_weighting.alpha,
            gaze_gamma=cfg.gaze_weighting.gamma,
            progress=step_progress,
            scores=scores,
            seg_target=seg_target,
        )
    return MaskedStep(out=out, mask=mask, ctx=ctx, patch_prior=patch_prior)


def train_one_epoch(
    *,
    model: nn.Module,
    forward: nn.Module,
    loader: DataLoader,
    masking: MaskingStrategy,
    optimizer: torch.optim.Optimizer,
    scheduler: CosineLRScheduler,
    cfg: PretrainConfig,
    epoch: int,
    global_step: int,
    device: torch.device,
    segmentor: nn.Module | None,
    norm_mean: float,
    norm_std: float,
    mask_generator: torch.Generator,
    logger: JsonlLogger,
    dist: D.DistInfo,
) -> tuple[dict, int]:
    """One pass over the loader; returns (epoch means, new global step)."""
    model.train()
    accum = max(1, cfg.optim.accum_iter)
    epochs = cfg.optim.epochs
    progress_value = masking_progress(cfg, epoch)  # weak-to-strong, per epoch
    sums: dict[str, float] = {}
    n_batches = 0
    steps = len(loader) if cfg.train.max_steps_per_epoch is None else min(len(loader), cfg.train.max_steps_per_epoch)
    bar = None
    if dist.is_main and cfg.train.progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", leave=False, file=sys.stderr)
    optimizer.zero_grad(set_to_none=True)
    lr = optimizer.param_groups[0]["lr"]
    t0 = time.perf_counter()
    for it, batch in enumerate(loader):
        if it >= steps:
            break
        imgs = batch["image"].to(device, non_blocking=True)
        prior = batch["prior"].to(device, non_blocking=True)
        step_progress = (epoch + it / steps) / epochs  # share of training done, for model schedules
        sync = (it + 1) % accum == 0 or it + 1 == steps
        no_sync = forward.no_sync if (dist.enabled and not sync) else contextlib.nullcontext
        with no_sync():
            step = masked_step(model, imgs, prior, masking=masking, cfg=cfg, forward=forward, segmentor=segmentor,
                               norm_mean=norm_mean, norm_std=norm_std, progress=progress_value,
                               step_progress=step_progress, generator=mask_generator)
        step_out, mask, ctx, patch_prior = step.out, step.mask, step.ctx, step.patch_prior
        loss_value = float(step_out.loss.detach())
        if not math.isfinite(loss_value):
            raise LossNotFinite(
                f"loss is {loss_value} at epoch {epoch}, step {it}; lower optim.blr or set optim.clip_grad "
                "(the last good checkpoint is kept; resume with --resume)"
            )
        with no_sync():
            (step_out.loss / accum).backward()
        lr = optimizer.param_groups[0]["lr"]  # the lr this update uses (the schedule set it before)
        if sync:
            if cfg.optim.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            after_step = getattr(model, "after_optimizer_step", None)  # EMA teachers
            if after_step is not None:
                after_step((epoch + (it + 1) / steps) / epochs)
            scheduler.step_update(num_updates=global_step)
        # Share of masked patches that contain vessel (prior > 0): the quantity guidance raises.
        vessel_share = ((patch_prior > 0) & mask).sum() / mask.sum().clamp_min(1)
        terms = {k: float(v) for k, v in step_out.terms.items()}
        terms["masked_vessel_share"] = float(vessel_share)
        # What uniform random masking gives on average: the share of vessel patches among all
        # patches of these (augmented) images; figures draw it as the reference line.
        terms["vessel_patch_share"] = float((patch_prior > 0).float().mean())
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v
        n_batches += 1
        if dist.is_main and (it % cfg.train.log_every == 0):
            record = {"epoch": epoch, "step": global_step, "lr": lr, **terms, **masking.state(ctx)}
            logger.log(record, global_step, "train")
        if bar is not None:
            bar.set_postfix(loss=f"{terms['loss']:.4f}", lr=f"{lr:.2e}")
            bar.update(1)
    if bar is not None:
        bar.close()
    means = {k: v / max(n_batches, 1) for k, v in sums.items()}
    # Every process reports the same epoch numbers.
    for k in list(means):
        means[k] = float(D.all_reduce_mean(torch.tensor(means[k], device=device)))
    means.update({"epoch": epoch, "step": global_step, "lr": lr,
                  "epoch_time_s": time.perf_counter() - t0})
    means.update(masking.state(MaskingContext(batch_size=1, grid_size=model.grid_size, progress=progress_value)))
    return means, global_step


# -- the run -------------------------------------------------------------------------------------
def pretrain(cfg: PretrainConfig, out: str | Path, *, resume: bool = False, overwrite: bool = False) -> PretrainResult:
    """Pretrain per ``cfg`` into run folder ``out``; returns the exported encoder path.

    ``cfg.data.images`` is a folder of images or a data manifest (``.csv`` / ``.parquet``).
    Under ``torchrun`` every process runs this; rank 0 alone writes files. The global batch
    (``optim.batch_size`` per process x processes x ``optim.accum_iter``) decides the lr, and
    with ``train.deterministic`` the run is the same for any number of processes (see
    :mod:`priormim.training.distributed`). SIGTERM (SLURM pre-emption, ``scancel``) stops the
    run like Ctrl-C; ``--resume`` continues from the last finished epoch. A folder that holds a
    run is refused unless ``resume`` (continue it, with the same settings) or ``overwrite``
    (remove its checkpoints, logs and encoder first).
    """
    out = Path(out)
    device = D.resolve_device(cfg.train.device)
    dist = D.init_distributed(device.type)
    if dist.enabled:
        device = D.resolve_device(cfg.train.device, dist.local_rank)
    if cfg.data.images is None:
        raise UserError("no training images: pass --data DIR or --manifest FILE (or data.images=...)")
    images = Path(cfg.data.images)
    D.run_on_main(lambda: _claim_run_folder(cfg, out, resume=resume, overwrite=overwrite), dist)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(cfg.train.seed + dist.rank)

    paths, prior_loader = prepare_priors(cfg, images, out, dist)
    if not paths:
        raise UserError("no usable images (all failed to read)", images)
    if cfg.data.norm_mean is None or cfg.data.norm_std is None:
        cfg.data.norm_mean, cfg.data.norm_std = D.run_on_main(lambda: compute_norm_stats(paths, seed=cfg.train.seed), dist)
    norm_mean, norm_std = cfg.data.norm_mean, cfg.data.norm_std

    model = build_model(cfg).to(device)
    masking = build_masking_strategy(cfg)
    per_sample = None
    if cfg.train.deterministic:
        # Each sample's mask from its own seed: the same masks for any number of processes.
        masking = per_sample = D.PerSampleMasking(masking, cfg.train.seed)
    segmentor = None
    if cfg.consistency.enabled or cfg.masking.segmentor_weight > 0:
        segmentor = prepare_segmentor(cfg, paths, prior_loader, out, dist, device)

    dataset = PretrainDataset(
        paths,
        transform=paired_train_transform(cfg.model.img_size, crop_scale=cfg.data.crop_scale, hflip=cfg.data.hflip,
                                         interpolation=cfg.data.interpolation),
        norm_mean=norm_mean,
        norm_std=norm_std,
        prior_loader=prior_loader,
        seed=cfg.train.seed,
        skip_unreadable=True,
    )
    batch_size = min(cfg.optim.batch_size, len(dataset) // dist.world_size)
    if batch_size < 1:
        raise UserError(f"{len(dataset)} image(s) for {dist.world_size} processes; each process needs at least one "
                        "image per step (add images or use fewer processes)", images)
    sampler = D.GlobalBatchSampler(len(dataset), batch_size, rank=dist.rank, world_size=dist.world_size,
                                   seed=cfg.train.seed)
    eff_batch = batch_size * cfg.optim.accum_iter * dist.world_size
    lr = cfg.optim.lr if cfg.optim.lr is not None else cfg.optim.blr * eff_batch / 256
    optimizer = timm.optim.create_optimizer_v2(
        model, opt="adamw", lr=lr, weight_decay=cfg.optim.weight_decay, betas=tuple(cfg.optim.betas)
    )
    steps_per_epoch = max(1, len(sampler))
    if cfg.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    scheduler = build_lr_schedule(cfg, optimizer, lr=lr, steps_per_epoch=steps_per_epoch)
    mask_generator = torch.Generator(device=device).manual_seed(cfg.train.seed * 1000 + dist.rank)

    start_epoch, global_step, history = 0, 0, []
    if resume:
        found = D.run_on_main(lambda: _latest_checkpoint_path(out), dist)
        if found is None:
            log.warning("--resume: no checkpoint in %s, starting from scratch", out)
            if dist.is_main:
                truncate_log(out / "log.jsonl", None)
        else:
            ckpt = check_pretrain_checkpoint(load_checkpoint(found), found)
            check_resume_config(ckpt["config"], cfg.to_dict(), found)
            if (ckpt["scheduler"].get("kind") == "mae_cosine") != (cfg.optim.schedule == "mae"):
                raise UserError("the checkpoint was made with another lr schedule; resume with the run's own "
                                "optim.schedule (see its config.yaml)", found)
            try:
                model.load_state_dict(ckpt["model"])
                optimizer.load_state_dict(ckpt["optimizer"])
                scheduler.load_state_dict(ckpt["scheduler"])
            except (RuntimeError, ValueError, KeyError) as exc:
                raise UserError(f"--resume: the checkpoint does not fit this model ({str(exc).splitlines()[0][:160]}); "
                                "start a new run with --overwrite or another --out", found) from exc
            start_epoch, global_step = ckpt["epoch"] + 1, ckpt["step"]
            history = list(ckpt.get("history", []))
            rng = ckpt["rng"]
            if isinstance(rng, list):  # one state per rank; a different world size reuses the first ones
                rng = rng[dist.rank % len(rng)]
            set_rng_state(rng, mask_generator)
            if dist.is_main:
                truncate_log(out / "log.jsonl", ckpt["epoch"])  # the epochs after it are trained (and logged) again
                print(f"resumed from {found} (epoch {start_epoch}, step {global_step})", file=sys.stderr)
    scheduler.step_update(num_updates=global_step)

    forward: nn.Module = model
    if dist.enabled:
        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if dist.is_main:
        save_config(cfg, out / "config.yaml")
    workers = max(0, int(cfg.data.num_workers))
    loader = DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=_loader_worker_init if workers > 0 else None,
        generator=torch.Generator().manual_seed(cfg.train.seed),  # keeps the global RNG out of it
    )
    bound = D.BoundLoader(loader, per_sample)
    # Steps after the checkpoint are trained again; records at its own step (its epoch) stay.
    logger = JsonlLogger(out, dist.is_main, purge_step=global_step + 1 if global_step else None)
    try:
        with _sigterm_as_interrupt():
            for epoch in range(start_epoch, cfg.optim.epochs):
                # The shuffle and the augmentation depend on (seed, epoch, sample) only, so a
                # resumed run sees the same batches as an uninterrupted one.
                sampler.set_epoch(epoch)
                means, global_step = train_one_epoch(
                    model=model, forward=forward, loader=bound, masking=masking, optimizer=optimizer,
                    scheduler=scheduler, cfg=cfg, epoch=epoch, global_step=global_step, device=device,
                    segmentor=segmentor, norm_mean=norm_mean, norm_std=norm_std,
                    mask_generator=mask_generator, logger=logger, dist=dist,
                )
                history.append(means)
                rngs = D.all_gather_object(rng_state(mask_generator))  # every rank's streams
                if dist.is_main:
                    logger.log(means, global_step, "epoch")
                    state = {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch,
                        "step": global_step,
                        "masking": {k: float(v) for k, v in masking.state(
                            MaskingContext(batch_size=1, grid_size=model.grid_size,
                                           progress=masking_progress(cfg, epoch))).items()},
                        "rng": rngs,
                        "world_size": dist.world_size,
                        "config": cfg.to_dict(),
                        "history": history,
                    }
                    save_checkpoint(state, out / "last.ckpt")
                    if (epoch + 1) % cfg.train.save_every == 0 or epoch + 1 == cfg.optim.epochs:
                        save_checkpoint(state, out / f"checkpoint-{epoch + 1:04d}.ckpt")
                D.barrier()
    except OSError as exc:  # log or TensorBoard file on a full disk, ...: one line, checkpoints kept
        if isinstance(exc, UserError):
            raise
        raise UserError(f"cannot write ({exc.strerror or exc}); free disk space or fix permissions, then "
                        "continue with --resume (finished epochs are kept)", exc.filename or out) from exc
    finally:
        try:
            logger.close()
        except OSError:
            pass
    skipped = int(D.all_reduce_sum(torch.tensor(bound.skipped)))
    if skipped and dist.is_main:
        log.warning("%d unreadable image load(s) were skipped (replaced by the next image); see the warnings above", skipped)
    encoder_path = None
    if dist.is_main:
        encoder_path = export_run_encoder(model, cfg, out / "encoder.safetensors")
        atomic_write_bytes(out / "history.json", json.dumps(history, indent=1).encode())
    D.barrier()
    return PretrainResult(run_dir=out, encoder_path=encoder_path, history=history)


RUN_MARKERS = ("last.ckpt", "previous.ckpt", "checkpoint-*.ckpt", "encoder.safetensors", "log.jsonl", "history.json")
RUN_OWNED = ("config.yaml", "tb", "segmentor.safetensors", ".*.tmp")


def _claim_run_folder(cfg: PretrainConfig, out: Path, *, resume: bool, overwrite: bool) -> None:
    """Rank 0: never write over an input, refuse a finished run unless resume/overwrite."""
    from priormim.outputs import check_writable_dir, claim_output, refuse_input_overlap

    refuse_input_overlap(out, [("the training data", cfg.data.images), ("data.priors", cfg.data.priors),
                               ("consistency.segmentor", cfg.consistency.segmentor)], inside=False, around=False)
    claim_output(out, markers=RUN_MARKERS, owned=RUN_OWNED, resume=resume, overwrite=overwrite)
    check_writable_dir(out)


def _latest_checkpoint_path(out: Path) -> Path | None:
    found = latest_valid_checkpoint(out)
    return None if found is None else found[0]


def _loader_worker_init(worker_id: int) -> None:
    # Decoding and cropping one image needs no intra-op threads; N workers x M threads would
    # oversubscribe the cores that also feed the GPU.
    torch.set_num_threads(1)


@contextlib.contextmanager
def _sigterm_as_interrupt():
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


def export_run_encoder(model: nn.Module, cfg: PretrainConfig, path: Path) -> Path:
    """Write ``model.encoder`` only (never a zoo model's teacher, heads or predictor)."""
    kwargs = dict(cfg.model.encoder_kwargs)
    kwargs["img_size"] = cfg.model.img_size
    return export_encoder(
        model.encoder, path, model_name=cfg.model.encoder, model_kwargs=kwargs,
        norm_mean=cfg.data.norm_mean, norm_std=cfg.data.norm_std, method=cfg.method,
    )


def prepare_segmentor(cfg: PretrainConfig, paths, prior_loader, out: Path, dist: D.DistInfo, device) -> nn.Module:
    """Load the frozen consistency segmentor, training it on the prior's pseudo-labels if needed."""
    from priormim.models.segmentor import load_segmentor
    from priormim.training.segmentor import SegmentorTrainConfig, train_segmentor

    path = Path(cfg.consistency.segmentor) if cfg.consistency.segmentor else out / "segmentor.safetensors"
    if not path.exists():
        if cfg.consistency.segmentor:
            raise UserError("segmentor file does not exist; train one with `priormim train-segmentor`", path)
        if prior_loader is None or cfg.data.prior != "vessel":
            raise UserError("the consistency loss and masking.segmentor_weight need vessel priors (data.prior=vessel) "
                            "or consistency.segmentor=PATH")
        if dist.is_main:
            train_segmentor(
                SegmentorTrainConfig(
                    recipe=cfg.consistency.segmentor_recipe,
                    arch=cfg.consistency.segmentor_arch,
                    epochs=cfg.consistency.segmentor_epochs,
                    base_channels=cfg.consistency.segmentor_base_channels,
                    img_size=cfg.model.img_size,
                    seed=cfg.train.seed,
                    progress=cfg.train.progress,
                ),
                paths=paths, prior_loader=prior_loader, out=path, device=device,
            )
        D.barrier()
    return freeze(load_segmentor(path).to(device))
