"""Losses: MAE reconstruction (optionally weighted) and VasoMIM's anatomical consistency."""

from priormim.losses.consistency import consistency_loss, freeze, soft_target_entropy
from priormim.losses.reconstruction import (
    denormalize_prediction,
    masked_reconstruction_loss,
    normalize_patches,
    patch_stats,
)

__all__ = [
    "consistency_loss",
    "freeze",
    "masked_reconstruction_loss",
    "normalize_patches",
    "denormalize_prediction",
    "patch_stats",
    "soft_target_entropy",
]
