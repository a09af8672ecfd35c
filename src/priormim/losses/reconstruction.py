"""MAE reconstruction loss on masked patches, optionally with per-patch weights."""

from __future__ import annotations

import torch
from torch import Tensor

PATCH_NORM_EPS = 1e-6


def patch_stats(target: Tensor) -> tuple[Tensor, Tensor]:
    """Per-patch mean and std of ``[B, L, P]`` pixels -> ``([B, L, 1], [B, L, 1])`` (MAE's eps)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return mean, (var + PATCH_NORM_EPS) ** 0.5


def normalize_patches(target: Tensor) -> Tensor:
    """MAE's ``norm_pix_loss`` target: each patch normalised by its own mean and std."""
    mean, std = patch_stats(target)
    return (target - mean) / std


def denormalize_prediction(pred: Tensor, target: Tensor) -> Tensor:
    """Map a norm-pix prediction ``[B, L, P]`` back to pixels with each *target* patch's stats."""
    mean, std = patch_stats(target)
    return pred * std + mean


def masked_reconstruction_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    *,
    norm_pix_loss: bool = True,
    weights: Tensor | None = None,
) -> Tensor:
    """Mean squared error over the masked patches.

    Args:
        pred: ``[B, L, P]`` predicted patches.
        target: ``[B, L, P]`` patchified input pixels (see :func:`priormim.models.mae.patchify`).
        mask: bool ``[B, L]``, True = masked (only these count).
        norm_pix_loss: compare against per-patch normalised targets.
        weights: optional ``[B, L]`` non-negative per-patch weights (VP-MIM's gaze weighting);
            the loss is ``sum(w * m * e) / sum(w * m)``, so uniform weights give the MAE loss.
    Returns: scalar loss.
    """
    if norm_pix_loss:
        target = normalize_patches(target)
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)  # [B, L]
    m = mask.to(per_patch.dtype)
    if weights is not None:
        m = m * weights.to(per_patch.dtype)
    return (per_patch * m).sum() / m.sum().clamp_min(1e-12)
