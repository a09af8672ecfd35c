"""Segmentation data: reading image / mask pairs, normalisation, resizing, paired augmentation."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from priormim.errors import UserError
from priormim.io import read_gray, read_mask
from priormim.models.seg import NormStats
from priormim.training.seg.config import SegFinetuneConfig, carve_validation, fixed_split

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# Data


@dataclass
class SegSample:
    """One image ``float32 [H, W]`` in [0, 1] and its mask ``bool [H, W]``."""

    name: str
    image: np.ndarray
    mask: np.ndarray


def read_label_mask(path: str | Path, *, max_ambiguous: float = 0.01) -> np.ndarray:
    """Read a vessel mask as ``bool [H, W]``, tolerating a few stray grey values.

    Real annotation files are sometimes almost binary (DCA1's ``train_29.png`` has 26 pixels
    with values like 3 or 230 among 0/255); those are thresholded at half range with a logged
    warning. More than ``max_ambiguous`` of the pixels strictly between 10% and 90% of the range
    means the file is not a mask (UserError).
    """
    arr = read_gray(path)
    # Relative to the file's own two values (0/1, 0/100 and 0/255 masks all read alike).
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.full(arr.shape, hi > 0, dtype=bool)
    arr = (arr - lo) / (hi - lo)
    ambiguous = int(((arr > 0.1) & (arr < 0.9)).sum())
    if ambiguous > max_ambiguous * arr.size:
        return read_mask(path)  # raises the standard "not binary" UserError
    values = np.unique(arr)
    if values.size > 2:
        log.warning("%s: mask has %d distinct values; thresholded at half range (%d pixels were not 0 or max)",
                    path, values.size, int(((arr > 0) & (arr < 1)).sum()))
    return arr > 0.5


def load_samples(pairs: Sequence[Any], skipped: list[tuple[str, str]] | None = None) -> list[SegSample]:
    """Read ``SegPair``-like objects (``.image``, ``.mask`` paths, ``.name``) into memory.

    A pair whose image or mask file cannot be decoded (corrupt, truncated, not an image) is
    logged and left out; with a ``skipped`` list, ``(name, reason)`` is appended to it. A mask
    that is readable but wrong (not binary, another size than its image) is a UserError: that
    is a data-preparation mistake to fix, not a damaged file.
    """
    out = []
    for p in pairs:
        try:
            image = read_gray(p.image)
            read_gray(p.mask)
        except UserError as exc:
            log.warning("skipped %s: %s", p.name, exc)
            if skipped is not None:
                skipped.append((p.name, str(exc)))
            continue
        mask = read_label_mask(p.mask)
        if image.shape != mask.shape:
            raise UserError(f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is {image.shape[1]}x{image.shape[0]}; resize the mask", p.mask)
        out.append(SegSample(name=p.name, image=image, mask=mask))
    return out


def compute_norm_stats(images: Sequence[np.ndarray]) -> NormStats:
    """Mean and std over all pixels of ``images`` (each ``[H, W]`` in [0, 1])."""
    total = sum(im.size for im in images)
    mean = sum(float(im.sum(dtype=np.float64)) for im in images) / total
    var = sum(float(((im.astype(np.float64) - mean) ** 2).sum()) for im in images) / total
    return NormStats(mean=mean, std=max(math.sqrt(var), 1e-3))


def resize_image(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """``[B, 1, H, W]`` float -> ``[B, 1, *size]`` bilinear (antialiased when shrinking)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def resize_mask(m: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """``[B, 1, H, W]`` bool -> ``[B, 1, *size]`` bool, nearest neighbour."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(m.shape[-2:]) == size:
        return m
    return F.interpolate(m.float(), size=size, mode="nearest-exact") > 0.5


def stack_resized(samples: Sequence[SegSample], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``float32 [N, 1, size, size]`` and masks ``bool [N, 1, size, size]``."""
    images = torch.cat([resize_image(torch.from_numpy(s.image)[None, None], size) for s in samples])
    masks = torch.cat([resize_mask(torch.from_numpy(s.mask)[None, None], size) for s in samples])
    return images, masks


def stack_native(samples: Sequence[SegSample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``float32 [N, 1, H, W]`` and masks ``bool [N, 1, H, W]`` at their own pixels
    (no resize); smaller images are reflect-padded to the largest ``H, W`` (masks with False)."""
    h = max(s.image.shape[0] for s in samples)
    w = max(s.image.shape[1] for s in samples)
    images, masks = [], []
    for s in samples:
        ph, pw = h - s.image.shape[0], w - s.image.shape[1]
        x = torch.from_numpy(np.ascontiguousarray(s.image, dtype=np.float32))[None, None]
        m = torch.from_numpy(np.ascontiguousarray(s.mask))[None, None]
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
            m = F.pad(m, (0, pw, 0, ph))
        images.append(x)
        masks.append(m)
    return torch.cat(images), torch.cat(masks)


@dataclass
class AugmentConfig:
    """Ranges of the random paired augmentation."""

    crop_scale: tuple[float, float] = (0.5, 1.0)  # area fraction of the resized crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    max_rotation_deg: float = 15.0
    hflip: bool = True
    vflip: bool = True
    gamma: tuple[float, float] = (0.7, 1.5)
    contrast: tuple[float, float] = (0.8, 1.2)
    brightness: float = 0.1
    noise_std: float = 0.02
    # Off by default (the "basic" level): the "strong" recipe turns them on (STRONG_AUGMENT).
    rot90: bool = False  # add a random multiple of 90 degrees to the rotation
    elastic_p: float = 0.0  # share of samples deformed elastically
    elastic_alpha: float = 4.0  # peak displacement, output px
    elastic_sigma: float = 8.0  # smoothness of the displacement field, output px
    blur_p: float = 0.0  # share of samples blurred (Gaussian, sigma from blur_sigma)
    blur_sigma: tuple[float, float] = (0.5, 1.2)


# X-ray fits: any orientation (flips, 90-degree turns), +-15 degrees, 0.77-1.26x zoom, gamma /
# contrast / noise for dose and detector differences, blur for motion, small elastic warps for
# vessel bending. Used by the "strong" recipe (priormim.training.seg.recipe).
STRONG_AUGMENT = AugmentConfig(crop_scale=(0.6, 1.6), crop_ratio=(0.8, 1.25), rot90=True, contrast=(0.7, 1.3), noise_std=0.03,
                               elastic_p=0.3, blur_p=0.2)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def paired_augment(
    image: torch.Tensor,
    mask: torch.Tensor,
    *,
    generator: torch.Generator,
    cfg: AugmentConfig = AugmentConfig(),
    out_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random geometry shared by image and mask, then intensity jitter on the image.

    Args:
        image: ``float [B, 1, S, S]`` in [0, 1].
        mask: ``bool [B, 1, S, S]``.
        generator: CPU generator (reproducible per seed).
        out_size: output side ``s <= S`` (default ``S``); a smaller size takes random
            ``s``-pixel windows at about the input's pixel scale (patch training, cheaper).

    Returns ``(image [B, 1, s, s], mask [B, 1, s, s])``; the geometry is one affine map per
    sample (resized crop, flips, rotation) applied with bilinear sampling to the image and
    nearest to the mask.
    """
    b, _, h, w = image.shape
    out_h, out_w = (h, w) if out_size is None else (out_size, out_size)
    g = generator
    # Resized crop in normalised coordinates: half-widths (sw, sh) and centre (tx, ty).
    area = _uniform(b, *cfg.crop_scale, g)
    log_r = _uniform(b, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), g)
    sw = (torch.sqrt(area * torch.exp(log_r)) * out_w / w).clamp(max=1.0)
    sh = (torch.sqrt(area / torch.exp(log_r)) * out_h / h).clamp(max=1.0)
    tx = (torch.rand(b, generator=g) * 2 - 1) * (1 - sw)
    ty = (torch.rand(b, generator=g) * 2 - 1) * (1 - sh)
    angle = torch.deg2rad(_uniform(b, -cfg.max_rotation_deg, cfg.max_rotation_deg, g))
    if cfg.rot90:
        angle = angle + (math.pi / 2) * torch.randint(0, 4, (b,), generator=g)
    fx = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones(b)
    fy = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0) if cfg.vflip else torch.ones(b)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # input = T + S @ R @ Flip @ output  (rotation in the output's square pixel frame)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = sw * cos * fx
    theta[:, 0, 1] = -sw * sin * fy
    theta[:, 1, 0] = sh * sin * fx
    theta[:, 1, 1] = sh * cos * fy
    theta[:, 0, 2], theta[:, 1, 2] = tx, ty
    grid = F.affine_grid(theta.to(image.dtype), [b, 1, out_h, out_w], align_corners=False)
    if cfg.elastic_p > 0:
        from priormim.training.seg.recipe import elastic_grid_offsets

        on = (torch.rand(b, generator=g) < cfg.elastic_p).to(grid.dtype).view(b, 1, 1, 1)
        grid = grid + on * elastic_grid_offsets(b, out_h, out_w, alpha=cfg.elastic_alpha, sigma=cfg.elastic_sigma, generator=g)
    grid = grid.to(image.device)
    image = F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    mask = F.grid_sample(mask.to(image.dtype), grid, mode="nearest", padding_mode="reflection", align_corners=False) > 0.5

    # Intensity: gamma, contrast around the image mean, brightness, noise (image only).
    shape = (b, 1, 1, 1)
    gamma = torch.exp(_uniform(b, math.log(cfg.gamma[0]), math.log(cfg.gamma[1]), g)).view(shape).to(image)
    contrast = _uniform(b, *cfg.contrast, g).view(shape).to(image)
    bright = _uniform(b, -cfg.brightness, cfg.brightness, g).view(shape).to(image)
    image = image.clamp(0, 1) ** gamma
    mean = image.mean(dim=(2, 3), keepdim=True)
    image = (image - mean) * contrast + mean + bright
    if cfg.noise_std > 0:
        sigma = (torch.rand(b, generator=g) * cfg.noise_std).view(shape).to(image)
        image = image + sigma * torch.randn(image.shape, generator=g).to(image)
    if cfg.blur_p > 0:
        from priormim.training.seg.recipe import gaussian_blur_batch

        on = torch.rand(b, generator=g) < cfg.blur_p
        sigma = torch.where(on, _uniform(b, *cfg.blur_sigma, g), torch.zeros(b))
        image = gaussian_blur_batch(image, sigma.to(image))
    return image.clamp(0, 1), mask

@dataclass
class SegData:
    train: list[SegSample]
    val: list[SegSample]
    test: list[SegSample]
    split: dict[str, Any]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason): unreadable pairs left out


def prepare_data(cfg: SegFinetuneConfig) -> SegData:
    """Read the folders and make the fixed train / val / test split (``cfg`` resolved)."""
    from priormim.data.readers import read_segmentation_folder

    # Sizes are checked on the decoded pixels (load_samples), so that a corrupt file is skipped
    # and counted there instead of failing the header check here.
    if cfg.data is not None:
        pairs = read_segmentation_folder(cfg.data, check_sizes=False, check_binary=False)
        split = fixed_split([p.name for p in pairs], seed=cfg.split_seed, fractions=cfg.split_fractions)
        by_name = {p.name: p for p in pairs}
        sets = {k: [by_name[n] for n in v] for k, v in split.items()}
        source = {"data": str(cfg.data), "split_seed": cfg.split_seed, "fractions": list(cfg.split_fractions)}
    else:
        train_pairs = read_segmentation_folder(cfg.train, check_sizes=False, check_binary=False)
        test_pairs = read_segmentation_folder(cfg.test, check_sizes=False, check_binary=False)
        if cfg.val is not None:
            val_pairs = read_segmentation_folder(cfg.val, check_sizes=False, check_binary=False)
        else:
            tr, va = carve_validation([p.name for p in train_pairs], fraction=cfg.val_fraction, seed=cfg.split_seed)
            val_pairs = [p for p in train_pairs if p.name in set(va)]
            train_pairs = [p for p in train_pairs if p.name in set(tr)]
        sets = {"train": train_pairs, "val": val_pairs, "test": test_pairs}
        source = {"train": str(cfg.train), "val": str(cfg.val) if cfg.val else f"carved from train ({cfg.val_fraction:.0%}, seed {cfg.split_seed})",
                  "test": str(cfg.test)}
        overlap = {p.image.resolve() for p in sets["train"]} & {p.image.resolve() for p in sets["test"]}
        if overlap:
            raise UserError(f"{len(overlap)} test images are also training images; pass separate folders", cfg.test)
    split = {"source": source, **{k: [p.name for p in v] for k, v in sets.items()}}
    skipped: list[tuple[str, str]] = []
    loaded = {k: load_samples(v, skipped) for k, v in sets.items()}
    for k, where in (("train", cfg.train or cfg.data), ("val", cfg.val or cfg.train or cfg.data), ("test", cfg.test or cfg.data)):
        if not loaded[k]:
            raise UserError(f"no readable {k} image/mask pair is left ({len(sets[k])} listed, all unreadable); "
                            "check the files named in the warnings above", where)
    if skipped:
        log.warning("%d unreadable image/mask pair(s) skipped: %s", len(skipped), ", ".join(n for n, _ in skipped[:5])
                    + (", ..." if len(skipped) > 5 else ""))
    return SegData(train=loaded["train"], val=loaded["val"], test=loaded["test"], split=split, skipped=skipped)
