"""Batched image augmentations for the zoo: Gaussian blur and the two-view pipeline of the
contrastive / self-distillation baselines (MoCo v3, DINO).

Everything runs on the whole batch with tensor ops (``affine_grid`` + ``grid_sample`` for the
crops, a grouped convolution for per-image blur), on the images' device, without a per-sample
Python loop. Images are the engine's normalised grey levels (about mean 0, std 1), so
brightness shifts are in units of the data set's std.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ViewConfig", "gaussian_blur", "random_view"]


def _gaussian_kernels(sigma: Tensor, radius: int) -> Tensor:
    """``[N, 2 * radius + 1]`` normalised 1-D Gaussian kernels, one per ``sigma`` ``[N]``."""
    x = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (x[None] / sigma.float().clamp_min(1e-3)[:, None]) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(images: Tensor, sigma: float | Tensor, *, max_sigma: float | None = None) -> Tensor:
    """Separable Gaussian blur with reflect padding.

    Args:
        images: ``[B, C, H, W]``.
        sigma: standard deviation in pixels, one float for the batch or ``[B]`` per image;
            images with ``sigma <= 0`` are returned unchanged.
        max_sigma: an upper bound of ``sigma`` that sets the kernel radius (``ceil(3 * max_sigma)``);
            default: read from ``sigma`` (one device sync).
    Returns:
        ``[B, C, H, W]``, same dtype.
    """
    b, c, h, w = images.shape
    s = torch.as_tensor(sigma, device=images.device, dtype=torch.float32).reshape(-1).expand(b)
    s_max = float(max_sigma) if max_sigma is not None else (float(s.max()) if b else 0.0)
    if s_max <= 0:
        return images
    radius = max(1, min(int(math.ceil(3 * s_max)), (min(h, w) - 1)))
    k = _gaussian_kernels(s, radius).repeat_interleave(c, dim=0).to(images.dtype)  # [B*C, K]
    x = images.reshape(1, b * c, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=b * c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=b * c)
    out = x.reshape(b, c, h, w)
    return torch.where((s > 0)[:, None, None, None], out, images)


@dataclass
class ViewConfig:
    """Augmentation strengths of one view (MoCo v3 / DINO-style, without colour jitter on grey).

    crop_scale: area share range of the random resized crop; ratio: aspect ratio range.
    flip_p: horizontal flip probability. brightness: shift ~ U(-b, b) std units.
    contrast: factor ~ U(1 - c, 1 + c) around each image's mean. blur_p: probability of a
    Gaussian blur with sigma ~ U(blur_sigma) pixels at 224 px (scaled with the image size).
    """

    crop_scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)


def _uniform(n: int, lo: float, hi: float, device: torch.device, generator: torch.Generator | None) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, device=device, generator=generator)


def random_view(images: Tensor, cfg: ViewConfig | None = None, *, generator: torch.Generator | None = None) -> Tensor:
    """One random augmented view of every image: resized crop + flip, contrast, brightness, blur.

    Args:
        images: ``[B, C, H, W]`` float.
        cfg: augmentation strengths (default :class:`ViewConfig`).
        generator: optional generator on ``images``' device.
    Returns:
        ``[B, C, H, W]``: each crop is resampled (bilinear) back to the full size.
    """
    cfg = cfg or ViewConfig()
    b, _, h, w = images.shape
    dev = images.device
    # Random resized crop as an affine sampling grid in normalised [-1, 1] coordinates.
    area = _uniform(b, *cfg.crop_scale, dev, generator)
    log_r = _uniform(b, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), dev, generator)
    sx = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)  # half-extent share of the width
    sy = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    cx = (1 - sx) * (2 * torch.rand(b, device=dev, generator=generator) - 1)
    cy = (1 - sy) * (2 * torch.rand(b, device=dev, generator=generator) - 1)
    flip = torch.where(torch.rand(b, device=dev, generator=generator) < cfg.flip_p, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = sx * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = sy, cy
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    x = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # Intensity: contrast around the image mean, then a brightness shift.
    c = _uniform(b, 1 - cfg.contrast, 1 + cfg.contrast, dev, generator)[:, None, None, None]
    shift = _uniform(b, -cfg.brightness, cfg.brightness, dev, generator)[:, None, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * c + mean + shift
    # Blur a random subset of the images.
    scale = min(h, w) / 224
    sigma = _uniform(b, cfg.blur_sigma[0] * scale, cfg.blur_sigma[1] * scale, dev, generator)
    sigma = torch.where(torch.rand(b, device=dev, generator=generator) < cfg.blur_p, sigma, torch.zeros_like(sigma))
    return gaussian_blur(x, sigma, max_sigma=cfg.blur_sigma[1] * scale).to(images.dtype)
