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


def consistency_loss(segmentor: nn.Module, original: Tensor, reconstruction: Tensor) -> Tensor:
    """Anatomical consistency between the segmentations of ``original`` and ``reconstruction``.

    Args:
        segmentor: frozen module mapping ``[B, 1, H, W]`` images to vessel logits ``[B, 1, H, W]``.
        original: ``[B, 1, H, W]`` input images (the same intensity space the segmentor expects).
        reconstruction: ``[B, 1, H, W]`` the decoder's full prediction, unpatchified.
    Returns: scalar loss; the soft target ``sigmoid(S(x))`` carries no gradient.
    """
    if segmentor.training:
        raise RuntimeError("consistency_loss needs a frozen segmentor in eval mode; call freeze(segmentor)")
    with torch.no_grad():
        target = torch.sigmoid(segmentor(original).float())
    logits = segmentor(reconstruction).float()
    return F.binary_cross_entropy_with_logits(logits, target)
