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


def soft_skeleton(prob: torch.Tensor, *, iterations: int = 10) -> torch.Tensor:
    """Differentiable skeleton of ``[B, 1, H, W]`` probabilities (Shit et al., CVPR 2021).

    Iterated soft erosion (min-pool as ``-max_pool(-x)``) and opening; each iteration keeps the
    pixels the opening removes, so the result is ~1 on the centre line of thin structures.
    """

    def erode(x: torch.Tensor) -> torch.Tensor:
        return torch.minimum(-F.max_pool2d(-x, (3, 1), 1, (1, 0)), -F.max_pool2d(-x, (1, 3), 1, (0, 1)))

    def dilate(x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 3, 1, 1)

    skel = F.relu(prob - dilate(erode(prob)))
    for _ in range(iterations):
        prob = erode(prob)
        delta = F.relu(prob - dilate(erode(prob)))
        skel = skel + F.relu(delta - skel * delta)
    return skel


def soft_cldice_loss(logits: torch.Tensor, target: torch.Tensor, *, iterations: int = 10, smooth: float = 1.0) -> torch.Tensor:
    """``1 - soft clDice`` (Shit et al. 2021) on ``[B, 1, H, W]`` logits and ``{0, 1}`` targets.

    Topology precision (the predicted skeleton inside the true mask) and sensitivity (the true
    skeleton inside the prediction), harmonic mean, per batch. Rewards connected thin vessels
    that pixel losses give little weight to. Returns a scalar tensor.
    """
    prob = torch.sigmoid(logits)
    tgt = target.to(prob.dtype)
    sp, st = soft_skeleton(prob, iterations=iterations), soft_skeleton(tgt, iterations=iterations)
    tprec = ((sp * tgt).sum() + smooth) / (sp.sum() + smooth)
    tsens = ((st * prob).sum() + smooth) / (st.sum() + smooth)
    return 1.0 - 2.0 * tprec * tsens / (tprec + tsens)

