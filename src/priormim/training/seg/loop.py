"""The training loop of one seed: optimizer, schedule, checkpoints, best-epoch choice, final scoring."""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from priormim.errors import UserError
from priormim.io import atomic_write_bytes
from priormim.losses.segmentation import bce_dice_loss
from priormim.models.seg import NormStats
from priormim.training.distributed import resolve_device
from priormim.training.results import read_metrics
from priormim.training.seg.config import SegFinetuneConfig
from priormim.losses.segmentation import soft_cldice_loss
from priormim.training.seg.data import STRONG_AUGMENT, AugmentConfig, SegData, compute_norm_stats, paired_augment, stack_native, stack_resized
from priormim.training.loop import (
    GradientUpdater,
    RunLogger,
    autocast_context,
    progress_bar,
    remove_checkpoints,
    resume_checkpoint,
    run_epoch,
    save_last_checkpoint,
)
from priormim.training.seg.inference import PostProcess, evaluate_samples, pick_postprocess, tta_settings, val_dice
from priormim.training.seg.model_io import create_segmenter, load_segmenter, save_segmenter

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# Training


def make_optimizer(model: nn.Module, *, lr: float, weight_decay: float, layer_decay: float | None) -> torch.optim.Optimizer:
    """AdamW via timm; with ``layer_decay`` the lr of ViT layer ``i`` is scaled by
    ``layer_decay ** (top - i)`` (the decoder sits in the top layer, see ViTSegmenter.group_matcher)."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=weight_decay, layer_decay=layer_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int, min_lr: float, kind: str = "cosine"):
    """Per-step cosine (or ``kind="poly"``: ``(1 - t)^0.9``, nnU-Net's) schedule with linear
    warm-up (timm); call ``step_update(step)`` after each step."""
    from timm.scheduler import CosineLRScheduler, PolyLRScheduler

    base = max(g["lr"] for g in optimizer.param_groups)
    if kind == "poly":
        return PolyLRScheduler(optimizer, t_initial=max(1, total_steps), power=0.9, lr_min=min(min_lr, base),
                               warmup_t=warmup_steps, warmup_lr_init=min(1e-6, base), warmup_prefix=True, t_in_epochs=False)
    return CosineLRScheduler(
        optimizer,
        t_initial=max(1, total_steps),
        lr_min=min(min_lr, base),
        warmup_t=warmup_steps,
        warmup_lr_init=min(1e-6, base),
        warmup_prefix=True,
        t_in_epochs=False,
    )

def _seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# Settings that change where and how a run is shown, not its numbers (as pretraining's
# RESUMABLE_KEYS; amp too): a resumed or finished seed may differ in them.
RUN_ONLY_KEYS = ("out", "device", "label", "progress", "amp", "ensemble")


def _resume_fingerprint(cfg: SegFinetuneConfig, seed: int) -> dict[str, Any]:
    """The settings a checkpoint must share with the run that resumes it."""
    d = cfg.to_dict()
    for k in RUN_ONLY_KEYS:
        d.pop(k, None)
    d["seeds"] = [seed]
    return d


def _eval_kwargs(cfg: SegFinetuneConfig, data: SegData, *, norm: NormStats, device: torch.device,
                 model_config: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`predict_logits` for validation and test scoring."""
    return dict(img_size=cfg.img_size, norm=norm, device=device, batch_size=max(min(cfg.batch_size, len(data.train)), 4),
                window=model_config.get("window"), **tta_settings(model_config))


def train_one_seed(cfg: SegFinetuneConfig, seed: int, data: SegData, run_dir: Path, *, resume: bool = False,
                   device: torch.device | None = None) -> dict[str, Any]:
    """Train with ``seed``, keep the best-val-Dice epoch, score it on the test set.

    After every epoch ``run_dir/last.ckpt`` is written atomically (the one before it kept as
    ``previous.ckpt``): model, optimizer, scheduler, epoch, step, best-so-far (Dice, epoch,
    weights), the validation curve and every RNG stream. With ``resume`` the newest loadable one
    is restored and training continues after its epoch, giving the same result as an
    uninterrupted run (deterministic on CPU); a changed setting is refused naming it. Steps run
    on :func:`priormim.training.loop.run_epoch` (non-finite guard, autocast with ``cfg.amp``);
    per-epoch records go to ``run_dir/log.jsonl`` + ``run_dir/tb`` with a tqdm bar. Writes
    ``model.safetensors``, ``config.json`` then ``metrics.json`` into ``run_dir``, removes the
    checkpoints and returns the metrics.
    """
    from priormim.training.checkpoint import rng_state, set_rng_state, truncate_log

    device = device if device is not None else resolve_device(cfg.device)
    gen = _seed_everything(seed)
    model, model_config, norm = create_segmenter(cfg)
    norm = norm or compute_norm_stats([s.image for s in data.train])
    model_config.update(norm=norm.to_dict(), method=cfg.label, tta=cfg.tta, tta_dihedral=cfg.tta_dihedral, hysteresis=cfg.hysteresis)
    model.to(device)

    train_x, train_y = stack_native(data.train) if cfg.img_size is None else stack_resized(data.train, cfg.img_size)
    aug_cfg = STRONG_AUGMENT if cfg.augment_level == "strong" else AugmentConfig()
    n_draws = len(data.train) * cfg.crops_per_image  # training windows per epoch
    bs = min(cfg.batch_size, n_draws)
    steps_per_epoch = n_draws // bs  # drop the ragged last batch (BatchNorm)
    total = steps_per_epoch * cfg.epochs
    optimizer = make_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay)
    scheduler = make_scheduler(optimizer, total_steps=total, warmup_steps=min(cfg.warmup_epochs * steps_per_epoch, total // 5),
                               min_lr=cfg.min_lr, kind=cfg.schedule)
    # Epochs are compared without flip averaging (4x cheaper); the final choice and test use it.
    eval_kw = {**_eval_kwargs(cfg, data, norm=norm, device=device, model_config=model_config), "tta": False, "tta_dihedral": False}
    # Epochs are compared at threshold 0.5 with the final field-of-view rule; the threshold
    # itself is picked once, for the best epoch (see finish_seed).
    val_post = PostProcess(threshold=0.5, fov=cfg.fov)
    val_outside = [val_post.outside_fov(s.image) for s in data.val]

    best_dice, best_epoch, best_state, curve = -1.0, 0, None, []
    step, t0, start_epoch, elapsed = 0, time.time(), 1, 0.0
    fingerprint = _resume_fingerprint(cfg, seed)
    updater = GradientUpdater(optimizer=optimizer, params=model.parameters,
                              after_update=[lambda n: scheduler.step_update(num_updates=n)])
    ckpt = None
    if resume:
        # last.ckpt, else previous.ckpt; a changed setting is a one-line error naming it.
        ckpt = resume_checkpoint(run_dir, fingerprint, what=f"--resume (seed {seed})", key="fingerprint")
        if ckpt is None:
            log.info("seed %d: no checkpoint in %s, starting from scratch", seed, run_dir)
        else:
            path = ckpt["path"]
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            start_epoch, step = int(ckpt["epoch"]) + 1, int(ckpt["step"])
            best_dice, best_epoch, curve = float(ckpt["best_dice"]), int(ckpt["best_epoch"]), list(ckpt["curve"])
            best_state = ckpt["best_state"]
            elapsed = float(ckpt.get("train_time_s", 0.0))
            gen.set_state(ckpt["generator"])
            set_rng_state(ckpt["rng"])
            log.info("seed %d: resumed from %s after epoch %d", seed, path, start_epoch - 1)
    t0 -= elapsed
    updater.updates = step
    run_dir.mkdir(parents=True, exist_ok=True)
    truncate_log(run_dir / "log.jsonl", start_epoch - 1 if ckpt is not None else None)
    run_log = RunLogger(run_dir, True, purge_step=start_epoch if ckpt is not None else None)
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            model.train()
            order = torch.randperm(n_draws, generator=gen) % len(data.train)
            losses: list[float] = []

            def train_step(i: int, idx: torch.Tensor) -> tuple[torch.Tensor, None]:
                x, y = train_x[idx], train_y[idx]
                if cfg.augment:
                    x, y = paired_augment(x, y, generator=gen, cfg=aug_cfg, out_size=cfg.train_crop)
                x = ((x - norm.mean) / norm.std).to(device)
                y = y.to(device)
                with autocast_context(device, cfg.amp):
                    logits = model(x)
                loss = bce_dice_loss(logits.float(), y)
                if cfg.cldice_weight > 0:
                    loss = loss + cfg.cldice_weight * soft_cldice_loss(logits.float(), y)
                return loss, None

            run_epoch((order[i * bs : (i + 1) * bs] for i in range(steps_per_epoch)), steps=steps_per_epoch, step=train_step,
                      updater=updater, hint="lower --lr", where=lambda i: f"seed {seed}, epoch {epoch}, step {i}",
                      record=lambda i, loss, _p, _lr: losses.append(float(loss.detach())),
                      bar=progress_bar(steps_per_epoch, f"seed {seed} epoch {epoch}/{cfg.epochs}", enabled=cfg.progress))
            # Validation can cost as much as an epoch of training (windowed ViTs): every val_every epochs.
            validate = epoch % cfg.val_every == 0 or epoch == cfg.epochs
            dice = val_dice(model, data.val, post=val_post, outside=val_outside, **eval_kw) if validate else None
            lr = max(g["lr"] for g in optimizer.param_groups)
            curve.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_dice": dice, "lr": lr})
            if dice is not None and dice > best_dice:  # strict: ties keep the earlier epoch
                best_dice, best_epoch = dice, epoch
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            run_log.log(curve[-1], step=epoch, prefix="finetune")
            log.info("seed %d epoch %d/%d  loss %.4f  val DSC %s  (best %.4f @%d)  lr %.2e  %.0fs",
                     seed, epoch, cfg.epochs, curve[-1]["train_loss"], "-" if dice is None else f"{dice:.4f}",
                     best_dice, best_epoch, lr, time.time() - t0)
            if epoch < cfg.epochs:  # last.ckpt, the one before kept as previous.ckpt
                save_last_checkpoint({
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "epoch": epoch, "step": updater.updates, "best_dice": best_dice, "best_epoch": best_epoch,
                    "best_state": best_state, "curve": curve, "generator": gen.get_state(), "rng": rng_state(),
                    "fingerprint": fingerprint, "train_time_s": time.time() - t0,
                }, run_dir)
    finally:
        run_log.close()

    model.load_state_dict(best_state)
    metrics = finish_seed(cfg, seed, data, run_dir, model, model_config, norm=norm, device=device, best_epoch=best_epoch,
                          best_dice=best_dice, curve=curve, train_time_s=round(time.time() - t0, 1))
    remove_checkpoints(run_dir)  # finished: metrics.json marks the seed done
    return metrics


def finish_seed(cfg: SegFinetuneConfig, seed: int, data: SegData, run_dir: Path, model: nn.Module, model_config: dict[str, Any], *,
                norm: NormStats, device: torch.device, best_epoch: int, best_dice: float, curve: list[dict[str, Any]],
                train_time_s: float) -> dict[str, Any]:
    """Pick the post-processing on the validation split (threshold unless ``cfg.threshold`` is
    set), score the test split once, and write ``model.safetensors``, ``config.json`` and
    ``metrics.json`` (last: it marks the seed done) into ``run_dir``."""
    eval_kw = _eval_kwargs(cfg, data, norm=norm, device=device, model_config=model_config)
    post = PostProcess(threshold=0.5 if cfg.threshold is None else float(cfg.threshold), fov=cfg.fov)
    val_by_threshold = None
    if cfg.threshold is None:
        post, val_by_threshold = pick_postprocess(model, data.val, post=post, hysteresis=cfg.hysteresis, **eval_kw)
    model_config = {**model_config, "postprocess": post.to_dict()}
    summary, per_image = evaluate_samples(model, data.test, post=post, **eval_kw)
    save_segmenter(model, model_config, run_dir)
    metrics = {
        "method": cfg.label,
        "seed": seed,
        "model": cfg.model,
        "best_epoch": best_epoch,
        "best_val_dice": best_dice,
        "postprocess": post.to_dict(),
        "val_dice_by_threshold": val_by_threshold,
        "test": {"summary": summary, "per_image": per_image},
        "val_curve": curve,
        "norm": norm.to_dict(),
        "data": {"n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test),
                 "n_skipped_unreadable": len(data.skipped), "source": data.split["source"]},
        "config": cfg.to_dict(),
        "train_time_s": train_time_s,
        "device": str(device),
    }
    atomic_write_bytes(run_dir / "metrics.json", json.dumps(metrics, indent=2).encode("utf-8"))
    log.info("seed %d: test DSC %.4f ± %.4f, clDice %.4f (best epoch %d, threshold %.2f, fov %s) -> %s", seed,
             summary["dice"]["mean"], summary["dice"]["std"], summary["cldice"]["mean"], best_epoch, post.threshold, post.fov, run_dir)
    return metrics


# Settings that only change inference and post-processing: --rescore may change them without retraining.
POSTPROCESS_KEYS = ("fov", "threshold", "tta", "tta_dihedral")


def rescore_seed(cfg: SegFinetuneConfig, seed: int, data: SegData, run_dir: Path, *, device: torch.device) -> dict[str, Any]:
    """Re-pick the post-processing of a finished seed on the validation split and re-score the
    test split with the saved weights (no training): for a run made before a post-processing
    option existed, or to try ``--fov`` / ``--threshold`` / ``--tta-dihedral`` on a finished run."""
    old = read_metrics(run_dir / "metrics.json")
    changed = [k for k in _changed_settings(old.get("config") or {}, cfg) if k not in POSTPROCESS_KEYS]
    if changed:
        raise UserError(f"seed {seed} was trained with other settings ({', '.join(changed)}); --rescore only changes "
                        f"post-processing ({', '.join(POSTPROCESS_KEYS)}); use the same options or a new --out", run_dir / "metrics.json")
    model, model_config = load_segmenter(run_dir, device=device)
    model_config.update(tta=cfg.tta, tta_dihedral=cfg.tta_dihedral)
    return finish_seed(cfg, seed, data, run_dir, model, model_config, norm=NormStats(**model_config["norm"]), device=device,
                       best_epoch=int(old["best_epoch"]), best_dice=float(old["best_val_dice"]), curve=list(old.get("val_curve", [])),
                       train_time_s=float(old.get("train_time_s", 0.0)))


def _changed_settings(trained: dict[str, Any], cfg: SegFinetuneConfig) -> list[str]:
    """The options (config keys) in which ``cfg`` differs from a finished seed's ``trained``
    config; where it runs, its label and the seed list may differ."""

    def comparable(d: dict[str, Any]) -> dict[str, Any]:
        # Paths compare resolved (a relative and an absolute spelling are the same folder).
        return {k: str(Path(v).resolve()) if k in ("train", "test", "val", "data", "encoder") and v else v for k, v in d.items()
                if k not in (*RUN_ONLY_KEYS, "seeds")}

    a, b = comparable(trained), comparable(cfg.to_dict())
    return sorted(k for k in a if json.dumps(a[k]) != json.dumps(b.get(k)))


def _check_finished_seed(cfg: SegFinetuneConfig, seed: int, rescore: bool) -> None:
    """A finished seed is reused on a re-run only when it was trained with the same options."""
    path = cfg.out / f"seed{seed}" / "metrics.json"
    changed = _changed_settings(read_metrics(path).get("config") or {}, cfg)
    if rescore:
        return  # rescore_seed names the non-post-processing changes itself
    if changed:
        post = all(k in POSTPROCESS_KEYS for k in changed)
        opts = ", ".join(f"--{k.replace('_', '-')}" for k in changed)
        raise UserError(f"seed {seed} was finished with another {opts}; "
                        + ("add --rescore to re-pick the post-processing, " if post else "")
                        + "pass --overwrite to retrain, or choose another --out", path)
