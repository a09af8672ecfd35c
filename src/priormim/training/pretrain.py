"""Masked-image-model pretraining engine (MAE, VasoMIM and their ablations).

A plain PyTorch loop in the style of the MAE reference: ``train_one_epoch`` does the steps,
``pretrain`` sets up data, model, optimiser and checkpoints around it. Launch several
processes with ``torchrun``; each process runs this same code on its shard.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
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
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from priormim.config import PretrainConfig, save_config
from priormim.data.pretrain import PretrainDataset, compute_norm_stats, paired_train_transform
from priormim.errors import UserError
from priormim.io import list_images
from priormim.losses import consistency_loss, denormalize_prediction, freeze, masked_reconstruction_loss
from priormim.masking import MaskingContext, MaskingStrategy, build_masking, patch_prob_from_prior
from priormim.models.export import export_encoder
from priormim.models.mae import MaskedAutoencoder
from priormim.training import distributed as D
from priormim.training.checkpoint import latest_valid_checkpoint, rng_state, save_checkpoint, set_rng_state

log = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    run_dir: Path
    encoder_path: Path | None
    history: list[dict] = field(default_factory=list)  # one record per epoch


class LossNotFinite(UserError):
    pass


# -- set-up helpers ------------------------------------------------------------------------------
def build_model(cfg: PretrainConfig) -> MaskedAutoencoder:
    """MAE, or VP-MIM's pyramid model when ``model.pyramid_scales`` is set."""
    m = cfg.model
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


def _mae_kwargs(cfg: PretrainConfig) -> dict[str, Any]:
    m = cfg.model
    return dict(
        encoder_name=m.encoder,
        img_size=m.img_size,
        in_chans=m.in_chans,
        encoder_kwargs=m.encoder_kwargs,
        decoder_embed_dim=m.decoder_embed_dim,
        decoder_depth=m.decoder_depth,
        decoder_num_heads=m.decoder_num_heads,
        norm_pix_loss=m.norm_pix_loss,
        drop_path_rate=m.drop_path_rate,
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
    """Compute missing priors (rank 0) and return (usable image paths, prior loader or None)."""
    paths = list_images(images)
    kind = cfg.data.prior
    if kind == "none":
        return paths, None
    prior_dir = Path(cfg.data.priors) if cfg.data.priors else default_prior_dir(images, out, kind)
    cfg.data.priors = str(prior_dir)
    if kind == "vessel":
        from priormim.priors.cache import ensure_vessel_priors, load_prior, prior_path

        if dist.is_main:
            summary = ensure_vessel_priors(images, prior_dir, progress=cfg.train.progress)
            if summary.n_failed:
                log.warning("%d image(s) could not be read and are skipped", summary.n_failed)
        D.barrier()
        usable = [p for p in paths if prior_path(prior_dir, p).exists()]
        return usable, lambda p: load_prior(prior_dir, p)
    if kind == "gaze":
        from priormim.priors.gaze_cache import compute_gaze_priors, load_gaze_prior

        if not cfg.data.gaze and (images.resolve().parent / "gaze").is_dir():
            cfg.data.gaze = str(images.resolve().parent / "gaze")  # the layout `priormim synth cxr` writes
        if dist.is_main:
            if not cfg.data.gaze:
                raise UserError("data.prior=gaze needs data.gaze=<REFLACX-format gaze root>")
            compute_gaze_priors(root=cfg.data.gaze, images=images, out=prior_dir, format="reflacx")
        D.barrier()
        return paths, lambda p: load_gaze_prior(prior_dir, p, missing="none")
    raise UserError(f"data.prior must be vessel, gaze or none, got '{kind}'")


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

    def __init__(self, out: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.writer = None
        self.file = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.file = open(out / "log.jsonl", "a", buffering=1)
            self.writer = SummaryWriter(str(out / "tb"))

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
    model: MaskedAutoencoder,
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
) -> StepOutput:
    """``L = L_rec + lambda * L_cons`` for one batch. ``forward`` is the (DDP-wrapped) model.

    A VP-MIM model (pyramid heads) uses :func:`priormim.models.vpmim.vpmim_loss` instead,
    weighted by ``patch_heat`` ``[B, L]`` (recalibrated gaze) when it is given.
    """
    from priormim.models.vpmim import VPMIMAutoencoder, vpmim_loss

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
        l_cons = consistency_loss(segmentor, original, recon)
        loss = loss + consistency_weight * l_cons
        terms["loss_cons"] = l_cons.detach()
    terms["loss"] = loss.detach()
    return StepOutput(loss=loss, terms=terms)


def train_one_epoch(
    *,
    model: MaskedAutoencoder,
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
    progress_value = 1.0 if epochs == 1 else epoch / (epochs - 1)  # weak-to-strong, per epoch
    sums: dict[str, float] = {}
    n_batches = 0
    steps = len(loader) if cfg.train.max_steps_per_epoch is None else min(len(loader), cfg.train.max_steps_per_epoch)
    bar = None
    if dist.is_main and cfg.train.progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", leave=False, file=sys.stderr)
    optimizer.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    for it, batch in enumerate(loader):
        if it >= steps:
            break
        imgs = batch["image"].to(device, non_blocking=True)
        prior = batch["prior"].to(device, non_blocking=True)
        patch_prior = patch_prob_from_prior(prior, model.patch_size)
        ctx = MaskingContext(
            batch_size=imgs.shape[0],
            grid_size=model.grid_size,
            device=device,
            patch_prior=patch_prior,
            progress=progress_value,
            generator=mask_generator,
        )
        mask = masking(ctx)
        sync = (it + 1) % accum == 0 or it + 1 == steps
        no_sync = forward.no_sync if (dist.enabled and not sync) else contextlib.nullcontext
        with no_sync(), autocast_context(device, cfg.train.amp):
            step_out = compute_losses(
                model, imgs, mask,
                segmentor=segmentor,
                consistency_weight=cfg.consistency.weight,
                norm_mean=norm_mean,
                norm_std=norm_std,
                forward=forward,
                patch_heat=patch_prior if cfg.gaze_weighting.enabled else None,
                gaze_alpha=cfg.gaze_weighting.alpha,
                gaze_gamma=cfg.gaze_weighting.gamma,
            )
        loss_value = float(step_out.loss.detach())
        if not math.isfinite(loss_value):
            raise LossNotFinite(
                f"loss is {loss_value} at epoch {epoch}, step {it}; lower optim.blr or set optim.clip_grad "
                "(the last good checkpoint is kept; resume with --resume)"
            )
        with no_sync():
            (step_out.loss / accum).backward()
        if sync:
            if cfg.optim.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            scheduler.step_update(num_updates=global_step)
        # Share of masked patches that contain vessel (prior > 0): the quantity guidance raises.
        vessel_share = ((patch_prior > 0) & mask).sum() / mask.sum().clamp_min(1)
        terms = {k: float(v) for k, v in step_out.terms.items()}
        terms["masked_vessel_share"] = float(vessel_share)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v
        n_batches += 1
        lr = optimizer.param_groups[0]["lr"]
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
    means.update({"epoch": epoch, "step": global_step, "lr": optimizer.param_groups[0]["lr"],
                  "epoch_time_s": time.perf_counter() - t0})
    means.update(masking.state(MaskingContext(batch_size=1, grid_size=model.grid_size, progress=progress_value)))
    return means, global_step


# -- the run -------------------------------------------------------------------------------------
def pretrain(cfg: PretrainConfig, out: str | Path, *, resume: bool = False) -> PretrainResult:
    """Pretrain per ``cfg`` into run folder ``out``; returns the exported encoder path."""
    out = Path(out)
    device = D.resolve_device(cfg.train.device)
    dist = D.init_distributed(device.type)
    if dist.enabled:
        device = D.resolve_device(cfg.train.device, dist.local_rank)
    if cfg.data.images is None:
        raise UserError("no training images: pass --data DIR (or data.images=DIR)")
    images = Path(cfg.data.images)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write_test").touch()
        (out / ".write_test").unlink()
    except OSError as exc:
        raise UserError(f"cannot write to the output folder ({exc.strerror}); choose another --out", out) from exc
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(cfg.train.seed + dist.rank)

    paths, prior_loader = prepare_priors(cfg, images, out, dist)
    if not paths:
        raise UserError("no usable images (all failed to read)", images)
    if cfg.data.norm_mean is None or cfg.data.norm_std is None:
        cfg.data.norm_mean, cfg.data.norm_std = compute_norm_stats(paths, seed=cfg.train.seed)
    norm_mean, norm_std = cfg.data.norm_mean, cfg.data.norm_std

    model = build_model(cfg).to(device)
    masking = build_masking_strategy(cfg)
    segmentor = None
    if cfg.consistency.enabled:
        segmentor = prepare_segmentor(cfg, paths, prior_loader, out, dist, device)

    dataset = PretrainDataset(
        paths,
        transform=paired_train_transform(cfg.model.img_size, crop_scale=cfg.data.crop_scale, hflip=cfg.data.hflip),
        norm_mean=norm_mean,
        norm_std=norm_std,
        prior_loader=prior_loader,
    )
    batch_size = min(cfg.optim.batch_size, len(dataset))
    eff_batch = batch_size * cfg.optim.accum_iter * dist.world_size
    lr = cfg.optim.lr if cfg.optim.lr is not None else cfg.optim.blr * eff_batch / 256
    optimizer = timm.optim.create_optimizer_v2(
        model, opt="adamw", lr=lr, weight_decay=cfg.optim.weight_decay, betas=tuple(cfg.optim.betas)
    )
    steps_per_epoch = max(1, len(dataset) // (batch_size * dist.world_size))
    if cfg.train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.max_steps_per_epoch)
    updates_per_epoch = max(1, steps_per_epoch // max(1, cfg.optim.accum_iter))
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=cfg.optim.epochs * updates_per_epoch,
        lr_min=cfg.optim.min_lr,
        warmup_t=cfg.optim.warmup_epochs * updates_per_epoch,
        warmup_lr_init=lr * 1e-3,
        t_in_epochs=False,
    )
    mask_generator = torch.Generator(device=device).manual_seed(cfg.train.seed * 1000 + dist.rank)

    start_epoch, global_step, history = 0, 0, []
    if resume:
        found = latest_valid_checkpoint(out)
        if found is None:
            log.warning("--resume: no checkpoint in %s, starting from scratch", out)
        else:
            ckpt_path, ckpt = found
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            start_epoch, global_step = ckpt["epoch"] + 1, ckpt["step"]
            history = list(ckpt.get("history", []))
            set_rng_state(ckpt["rng"][min(dist.rank, len(ckpt["rng"]) - 1)] if isinstance(ckpt["rng"], list) else ckpt["rng"], mask_generator)
            if dist.is_main:
                print(f"resumed from {ckpt_path} (epoch {start_epoch}, step {global_step})", file=sys.stderr)
    scheduler.step_update(num_updates=global_step)

    forward: nn.Module = model
    if dist.enabled:
        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if dist.is_main:
        save_config(cfg, out / "config.yaml")
    logger = JsonlLogger(out, dist.is_main)
    try:
        for epoch in range(start_epoch, cfg.optim.epochs):
            # The shuffle and the augmentation stream depend on (seed, epoch) only, so a resumed
            # run sees the same batches as an uninterrupted one.
            loader_gen = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch)
            if dist.enabled:
                sampler = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank,
                                             shuffle=True, seed=cfg.train.seed, drop_last=True)
                sampler.set_epoch(epoch)
            else:
                sampler = RandomSampler(dataset, generator=loader_gen)
            loader = DataLoader(
                dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
                num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda",
                generator=loader_gen, persistent_workers=False,
            )
            means, global_step = train_one_epoch(
                model=model, forward=forward, loader=loader, masking=masking, optimizer=optimizer,
                scheduler=scheduler, cfg=cfg, epoch=epoch, global_step=global_step, device=device,
                segmentor=segmentor, norm_mean=norm_mean, norm_std=norm_std,
                mask_generator=mask_generator, logger=logger, dist=dist,
            )
            history.append(means)
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
                                       progress=1.0 if cfg.optim.epochs == 1 else epoch / (cfg.optim.epochs - 1))).items()},
                    "rng": rng_state(mask_generator),
                    "config": cfg.to_dict(),
                    "history": history,
                }
                save_checkpoint(state, out / "last.ckpt")
                if (epoch + 1) % cfg.train.save_every == 0 or epoch + 1 == cfg.optim.epochs:
                    save_checkpoint(state, out / f"checkpoint-{epoch + 1:04d}.ckpt")
            D.barrier()
    finally:
        logger.close()
    encoder_path = None
    if dist.is_main:
        encoder_path = export_run_encoder(model, cfg, out / "encoder.safetensors")
        (out / "history.json").write_text(json.dumps(history, indent=1))
    D.barrier()
    return PretrainResult(run_dir=out, encoder_path=encoder_path, history=history)


def export_run_encoder(model: MaskedAutoencoder, cfg: PretrainConfig, path: Path) -> Path:
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
            raise UserError("the consistency loss needs vessel priors (data.prior=vessel) or consistency.segmentor=PATH")
        if dist.is_main:
            train_segmentor(
                SegmentorTrainConfig(
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
