"""VasoMIM's anatomical consistency loss.

A frozen vessel segmentor S must agree on the original image x and the reconstruction x_hat:
``L_cons = BCE_with_logits(S(x_hat), sigmoid(S(x)))``. S stays in eval mode and its
parameters never update, but gradients flow through it into x_hat (and so into the MAE).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def freeze(module: nn.Module) -> nn.Module:
    """Put ``module`` in eval mode with ``requires_grad=False`` everywhere; returns it."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def consistency_loss(
    segmentor: nn.Module, original: Tensor, reconstruction: Tensor, *, target: Tensor | None = None
) -> Tensor:
    """Anatomical consistency between the segmentations of ``original`` and ``reconstruction``.

    Args:
        segmentor: frozen module mapping ``[B, 1, H, W]`` images to vessel logits ``[B, 1, H, W]``.
        original: ``[B, 1, H, W]`` input images (the same intensity space the segmentor expects).
        reconstruction: ``[B, 1, H, W]`` the decoder's full prediction, unpatchified.
        target: ``sigmoid(S(original))`` ``[B, 1, H, W]`` when the caller already computed it
            (VasoMIM's masking uses it too); ``original`` is then not run again.
    Returns: scalar loss; the soft target ``sigmoid(S(x))`` carries no gradient.
    """
    if segmentor.training:
        raise RuntimeError("consistency_loss needs a frozen segmentor in eval mode; call freeze(segmentor)")
    if target is None:
        with torch.no_grad():
            target = torch.sigmoid(segmentor(original).float())
    logits = segmentor(reconstruction).float()
    return F.binary_cross_entropy_with_logits(logits, target.detach().float())


def soft_target_entropy(target: Tensor) -> Tensor:
    """Mean Bernoulli entropy (nats) of soft targets ``[B, 1, H, W]`` in [0, 1]: the lowest value
    :func:`consistency_loss` can reach, so ``loss - entropy`` is the KL divergence (>= 0)."""
    t = target.detach().float().clamp(1e-7, 1 - 1e-7)
    return -(t * t.log() + (1 - t) * (1 - t).log()).mean()
