"""Masked-image-model pretraining engine (MAE, VasoMIM, VP-MIM and the method zoo).

A plain PyTorch loop in the style of the MAE reference. :func:`pretrain` sets up data, method,
optimiser and checkpoints; each epoch is :func:`~priormim.training.pretrain_step.train_one_epoch`
on the shared loop skeleton (:mod:`priormim.training.loop`). The method
(:class:`priormim.methods.PretrainMethod`, from the registry) owns masking guidance and loss; the
engine wraps it once for DDP and calls it only through the protocol. Launch several processes
with ``torchrun``; each process runs this same code on its shard.

The pieces live in :mod:`~priormim.training.pretrain_setup` (building),
:mod:`~priormim.training.pretrain_priors` (data and priors) and
:mod:`~priormim.training.pretrain_step` (the step); their public names are re-exported here.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import timm.optim
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from priormim.config import PretrainConfig, save_config
from priormim.data.pretrain import PretrainDataset, compute_norm_stats, paired_train_transform
from priormim.errors import UserError
from priormim.io import atomic_write_bytes
from priormim.masking import MaskingContext
from priormim.methods import build_method
from priormim.training import distributed as D
from priormim.training.checkpoint import (
    check_pretrain_checkpoint,
    check_resume_config,
    load_checkpoint,
    rng_state,
    set_rng_state,
    truncate_log,
)
from priormim.training.loop import (
    GradientUpdater,
    LossNotFinite,
    RunLogger,
    autocast_context,
    save_epoch_checkpoint,
    seed_everything,
    sigterm_as_interrupt,
)
from priormim.training.pretrain_priors import default_prior_dir, prepare_priors
from priormim.training.pretrain_setup import (
    RUN_MARKERS,
    RUN_OWNED,
    build_lr_schedule,
    build_masking_strategy,
    build_model,
    claim_run_folder,
    export_run_encoder,
    latest_checkpoint_path,
    loader_worker_init,
    masking_progress,
    needs_segmentor,
    prepare_segmentor,
)
from priormim.training.pretrain_step import (
    EpochState,
    MaskedStep,
    StepOutput,
    compute_losses,
    masked_step,
    segmentor_probs,
    train_one_epoch,
)

log = logging.getLogger(__name__)

# Older names, kept for callers of this module.
JsonlLogger = RunLogger
_sigterm_as_interrupt = sigterm_as_interrupt
_loader_worker_init = loader_worker_init
_claim_run_folder = claim_run_folder
_latest_checkpoint_path = latest_checkpoint_path

__all__ = [
    "RUN_MARKERS", "RUN_OWNED", "EpochState", "JsonlLogger", "LossNotFinite", "MaskedStep", "PretrainResult",
    "StepOutput", "autocast_context", "build_lr_schedule", "build_masking_strategy", "build_method", "build_model",
    "compute_losses", "default_prior_dir", "export_run_encoder", "masked_step", "masking_progress",
    "prepare_priors", "prepare_segmentor", "pretrain", "seed_everything", "segmentor_probs", "train_one_epoch",
]


@dataclass
class PretrainResult:
    run_dir: Path
    encoder_path: Path | None
    history: list[dict] = field(default_factory=list)  # one record per epoch


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
    D.run_on_main(lambda: claim_run_folder(cfg, out, resume=resume, overwrite=overwrite), dist)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(cfg.train.seed + dist.rank)

    paths, prior_loader = prepare_priors(cfg, images, out, dist)
    if not paths:
        raise UserError("no usable images (all failed to read)", images)
    if cfg.data.norm_mean is None or cfg.data.norm_std is None:
        cfg.data.norm_mean, cfg.data.norm_std = D.run_on_main(lambda: compute_norm_stats(paths, seed=cfg.train.seed), dist)
    norm_mean, norm_std = cfg.data.norm_mean, cfg.data.norm_std

    method = build_method(cfg).to(device)  # the network's initialisation draws from the global RNG
    model = method.model  # what is optimised, checkpointed and exported
    masking = build_masking_strategy(cfg)
    per_sample = None
    if cfg.train.deterministic:
        # Each sample's mask from its own seed: the same masks for any number of processes.
        masking = per_sample = D.PerSampleMasking(masking, cfg.train.seed)
    if needs_segmentor(cfg):
        method.attach_segmentor(prepare_segmentor(cfg, paths, prior_loader, out, dist, device),
                                norm_mean=norm_mean, norm_std=norm_std)

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
        found = D.run_on_main(lambda: latest_checkpoint_path(out), dist)
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

    forward = method  # wrapped once for DDP; the engine calls it only through the protocol
    if dist.enabled:
        forward = DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None)
    if dist.is_main:
        save_config(cfg, out / "config.yaml")
    workers = max(0, int(cfg.data.num_workers))
    loader = DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
        worker_init_fn=loader_worker_init if workers > 0 else None,
        generator=torch.Generator().manual_seed(cfg.train.seed),  # keeps the global RNG out of it
    )
    bound = D.BoundLoader(loader, per_sample)
    # Steps after the checkpoint are trained again; records at its own step (its epoch) stay.
    logger = RunLogger(out, dist.is_main, purge_step=global_step + 1 if global_step else None)
    updater = GradientUpdater(
        optimizer=optimizer, params=model.parameters, accum_iter=cfg.optim.accum_iter, clip_grad=cfg.optim.clip_grad,
        ddp=forward if dist.enabled else None, updates=global_step,
        after_update=[lambda n: scheduler.step_update(num_updates=n)],  # per-update lr
    )
    state = EpochState(cfg=cfg, method=method, forward=forward, masking=masking, generator=mask_generator,
                       updater=updater, logger=logger, dist=dist, device=device)
    try:
        with sigterm_as_interrupt():
            for epoch in range(start_epoch, cfg.optim.epochs):
                # The shuffle and the augmentation depend on (seed, epoch, sample) only, so a
                # resumed run sees the same batches as an uninterrupted one.
                sampler.set_epoch(epoch)
                means = train_one_epoch(state, bound, epoch)
                global_step = updater.updates
                history.append(means)
                rngs = D.all_gather_object(rng_state(mask_generator))  # every rank's streams
                if dist.is_main:
                    logger.log(means, global_step, "epoch")
                    ckpt_state = {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch,
                        "step": global_step,
                        "masking": {k: float(v) for k, v in masking.state(
                            MaskingContext(batch_size=1, grid_size=method.grid_size,
                                           progress=masking_progress(cfg, epoch))).items()},
                        "rng": rngs,
                        "world_size": dist.world_size,
                        "config": cfg.to_dict(),
                        "history": history,
                    }
                    save_epoch_checkpoint(ckpt_state, out, epoch=epoch, epochs=cfg.optim.epochs,
                                          save_every=cfg.train.save_every)
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
