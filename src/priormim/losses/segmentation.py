"""Losses for binary (vessel) segmentation: BCE + soft Dice on logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, smooth: float = 1.0) -> torch.Tensor:
    """``1 - soft Dice`` per image, averaged over the batch.

    Args:
        logits: ``[B, 1, H, W]`` (or ``[B, H, W]``) raw scores.
        target: same shape, ``{0, 1}`` (bool or float).
        smooth: additive smoothing; keeps images without vessels from dividing by zero.

    Returns a scalar tensor.
    """
    prob = torch.sigmoid(logits).flatten(1)
    tgt = target.to(prob.dtype).flatten(1)
    inter = (prob * tgt).sum(1)
    denom = prob.sum(1) + tgt.sum(1)
    return (1.0 - (2.0 * inter + smooth) / (denom + smooth)).mean()


def bce_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    bce_weight: float = 1.0,
    dice_weight: float = 1.0,
    smooth: float = 1.0,
) -> torch.Tensor:
    """``bce_weight * BCE + dice_weight * soft Dice``.

    BCE gives dense per-pixel gradients; Dice counters the class imbalance (vessels are a few
    percent of pixels), so thin vessels are not traded away for background accuracy.
    Shapes as in :func:`soft_dice_loss`; returns a scalar tensor.
    """
    tgt = target.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, tgt)
    return bce_weight * bce + dice_weight * soft_dice_loss(logits, tgt, smooth=smooth)
