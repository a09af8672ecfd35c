"""Train the consistency segmentor on vessel-prior pseudo-labels.

Two recipes (:data:`RECIPES`); any field of :class:`SegmentorTrainConfig` left at ``None`` takes
the chosen recipe's value, any field given explicitly wins:

* ``official`` (default), VasoMIM's: UNeXt-S, 200 epochs, Adam lr 1e-3 (weight decay 1e-4, the
  UNeXt reference's default) with per-step poly decay ``lr * (1 - step / total) ** 0.9``,
  ``0.5 * BCE + 0.5 * Dice``, random resized crops of scale 0.2-1 and horizontal flips (the
  official ``util/vessel_dataset.py`` flips horizontally only; ``vflip=True`` adds vertical ones).
* ``priormim``, this project's earlier one: 8-channel 3-level U-Net, 30 epochs, AdamW (weight
  decay 1e-4) with per-step cosine decay, ``BCE + Dice``, crops of scale 0.3-1, horizontal flips.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from priormim.data.pretrain import PretrainDataset, compute_norm_stats, paired_train_transform
from priormim.losses.segmentation import bce_dice_loss
from priormim.models.segmentor import SEGMENTOR_ARCHS, VesselSegmentor
from priormim.training.loop import GradientUpdater, RunLogger, autocast_context, progress_bar, run_epoch

log = logging.getLogger(__name__)

RECIPES: dict[str, dict] = {
    "official": dict(arch="unext_s", epochs=200, optimizer="adam", weight_decay=1e-4, schedule="poly",
                     crop_scale=(0.2, 1.0), hflip=True, vflip=False, bce_weight=0.5, dice_weight=0.5),
    "priormim": dict(arch="unet", epochs=30, optimizer="adamw", weight_decay=1e-4, schedule="cosine",
                     crop_scale=(0.3, 1.0), hflip=True, vflip=False, bce_weight=1.0, dice_weight=1.0),
}
POLY_POWER = 0.9


@dataclass
class SegmentorTrainConfig:
    """How to train the segmentor. ``None`` fields are filled from ``RECIPES[recipe]``."""

    recipe: str = "official"  # official | priormim
    arch: str | None = None  # unext_s | unext | unet
    epochs: int | None = None
    optimizer: str | None = None  # adam | adamw
    lr: float = 1e-3
    weight_decay: float | None = None
    schedule: str | None = None  # poly (power 0.9) | cosine, both stepped per batch
    crop_scale: tuple[float, float] | None = None
    hflip: bool | None = None
    vflip: bool | None = None
    bce_weight: float | None = None
    dice_weight: float | None = None
    base_channels: int = 8  # U-Net only
    levels: int = 3  # U-Net only
    batch_size: int = 16
    img_size: int = 224
    seed: int = 0
    num_workers: int = 0
    progress: bool = True
    amp: str = "off"  # the loop skeleton's AMP policy: auto | bf16 | fp16 | off (full precision, as always)

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown segmentor recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        for f in fields(self):
            if getattr(self, f.name) is None and f.name in RECIPES[self.recipe]:
                setattr(self, f.name, RECIPES[self.recipe][f.name])
        self.crop_scale = (float(self.crop_scale[0]), float(self.crop_scale[1]))
        if self.arch not in SEGMENTOR_ARCHS:
            raise ValueError(f"unknown segmentor arch {self.arch!r}; choose one of {', '.join(SEGMENTOR_ARCHS)}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose adam or adamw")
        if self.schedule not in ("poly", "cosine"):
            raise ValueError(f"unknown schedule {self.schedule!r}; choose poly or cosine")


def build_optimizer(cfg: SegmentorTrainConfig, params) -> torch.optim.Optimizer:
    opt_cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(opt: torch.optim.Optimizer, *, schedule: str, total_steps: int,
                    power: float = POLY_POWER) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule over ``total_steps`` optimiser steps.

    ``poly``: after ``k`` calls to ``step()`` the rate is ``lr * (1 - k / total_steps) ** power``
    (0 from ``total_steps`` on). ``cosine``: cosine annealing to 0 over ``total_steps``.
    """
    total = max(1, int(total_steps))
    if schedule == "poly":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: max(0.0, 1.0 - k / total) ** power)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    raise ValueError(f"unknown schedule {schedule!r}; choose poly or cosine")


def train_segmentor(
    cfg: SegmentorTrainConfig,
    *,
    paths: Sequence[Path],
    prior_loader: Callable[[Path], np.ndarray],
    out: str | Path,
    device: torch.device | str = "cpu",
    history: list[float] | None = None,
    log_dir: str | Path | None = None,
) -> Path:
    """Fit a :class:`VesselSegmentor` to ``prior_loader``'s masks and save it to ``out``.

    ``history``, if given, receives the mean training loss of each epoch; ``log_dir``, if given
    (an existing folder), receives ``log.jsonl`` and TensorBoard scalars of each epoch.
    """
    torch.manual_seed(cfg.seed)
    mean, std = compute_norm_stats(paths, seed=cfg.seed)
    # The dataset normalises images to (x - mean) / std; undo that so the segmentor sees [0, 1].
    ds = PretrainDataset(
        paths,
        transform=paired_train_transform(cfg.img_size, crop_scale=cfg.crop_scale, hflip=cfg.hflip, vflip=cfg.vflip),
        norm_mean=0.0,
        norm_std=1.0,
        prior_loader=prior_loader,
    )
    model = VesselSegmentor(arch=cfg.arch, base_channels=cfg.base_channels, levels=cfg.levels,
                            norm_mean=mean, norm_std=std).to(device)
    opt = build_optimizer(cfg, model.parameters())
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(ds, batch_size=min(cfg.batch_size, len(ds)), shuffle=True, drop_last=True,
                        num_workers=cfg.num_workers, generator=gen)
    sched = build_scheduler(opt, schedule=cfg.schedule, total_steps=cfg.epochs * len(loader))
    # The shared loop skeleton: one update per batch, the per-step schedule after it, the
    # non-finite guard, the AMP policy (cfg.amp), the tqdm bar (per epoch) and, with log_dir,
    # log.jsonl + TensorBoard records of each epoch.
    updater = GradientUpdater(optimizer=opt, params=model.parameters, after_update=[lambda _: sched.step()])
    amp = functools.partial(autocast_context, torch.device(device), cfg.amp)
    bar = progress_bar(cfg.epochs, f"segmentor ({cfg.arch})", enabled=cfg.progress)
    logger = RunLogger(Path(log_dir), True) if log_dir is not None else None
    sums = {"loss": 0.0}

    def step(it: int, batch: dict) -> tuple[torch.Tensor, None]:
        x = batch["image"].to(device)
        y = batch["prior"].to(device)
        with amp():
            return bce_dice_loss(model(x), y, bce_weight=cfg.bce_weight, dice_weight=cfg.dice_weight), None

    def record(it: int, loss: torch.Tensor, _: None, lr: float) -> None:
        sums["loss"] += float(loss.detach())

    model.train()
    try:
        for epoch in range(cfg.epochs):
            sums["loss"] = 0.0
            run_epoch(loader, steps=len(loader), step=step, updater=updater, record=record,
                      where=lambda it, e=epoch: f"segmentor epoch {e}, step {it}",
                      hint="lower --lr or check the images and priors")
            mean_loss = sums["loss"] / max(len(loader), 1)
            if history is not None:
                history.append(mean_loss)
            if logger is not None:
                logger.log({"epoch": epoch, "step": updater.updates, "loss": mean_loss, "lr": updater.lr},
                           updater.updates, "segmentor")
            if bar is not None:
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if logger is not None:
            logger.close()
    model.eval()
    return model.save(out)
