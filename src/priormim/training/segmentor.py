"""Train the consistency segmentor on vessel-prior pseudo-labels (BCE + soft Dice)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from priormim.data.pretrain import PretrainDataset, compute_norm_stats, paired_train_transform
from priormim.losses.segmentation import bce_dice_loss
from priormim.models.segmentor import VesselSegmentor

log = logging.getLogger(__name__)


@dataclass
class SegmentorTrainConfig:
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    base_channels: int = 8
    levels: int = 3
    img_size: int = 224
    seed: int = 0
    num_workers: int = 0
    progress: bool = True


def train_segmentor(
    cfg: SegmentorTrainConfig,
    *,
    paths: Sequence[Path],
    prior_loader: Callable[[Path], np.ndarray],
    out: str | Path,
    device: torch.device | str = "cpu",
) -> Path:
    """Fit a :class:`VesselSegmentor` to ``prior_loader``'s masks and save it to ``out``."""
    torch.manual_seed(cfg.seed)
    mean, std = compute_norm_stats(paths, seed=cfg.seed)
    # The dataset normalises images to (x - mean) / std; undo that so the segmentor sees [0, 1].
    ds = PretrainDataset(
        paths,
        transform=paired_train_transform(cfg.img_size, crop_scale=(0.3, 1.0)),
        norm_mean=0.0,
        norm_std=1.0,
        prior_loader=prior_loader,
    )
    model = VesselSegmentor(base_channels=cfg.base_channels, levels=cfg.levels, norm_mean=mean, norm_std=std).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(ds, batch_size=min(cfg.batch_size, len(ds)), shuffle=True, drop_last=True,
                        num_workers=cfg.num_workers, generator=gen)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * len(loader)))
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.epochs, desc="segmentor", leave=False, file=sys.stderr)
    model.train()
    for epoch in range(cfg.epochs):
        total = 0.0
        for batch in loader:
            x = batch["image"].to(device)
            y = batch["prior"].to(device)
            loss = bce_dice_loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        if bar is not None:
            bar.set_postfix(loss=f"{total / max(len(loader), 1):.4f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    model.eval()
    return model.save(out)
