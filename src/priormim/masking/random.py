"""Uniform random masking (MAE)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import (
    MaskingContext,
    MaskingStrategy,
    check_mask_ratio,
    num_masked,
    register_masking,
    top_n_mask,
)

__all__ = ["RandomMasking", "random_mask"]


def random_mask(
    batch_size: int,
    num_patches: int,
    mask_ratio: float,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniform random mask, bool ``[batch_size, num_patches]``, exactly
    ``num_masked(num_patches, mask_ratio)`` True per row.

    Same draw as MAE's ``random_masking``: per-patch noise ``torch.rand(B, L)``, the
    ``len_keep`` lowest-noise patches stay visible. With the same generator state the mask
    equals MAE's. ``device`` defaults to the generator's device (CPU without one).
    """
    if int(batch_size) != batch_size or batch_size < 0:
        raise ValueError(f"batch_size must be a non-negative int, got {batch_size!r}")
    n_mask = num_masked(num_patches, mask_ratio)
    if device is None and generator is not None:
        device = generator.device  # a CUDA generator implies CUDA masks
    noise = torch.rand((int(batch_size), int(num_patches)), generator=generator, device=device)
    return top_n_mask(noise, n_mask)  # highest noise = masked, as MAE keeps the lowest


@register_masking("random")
@dataclass
class RandomMasking(MaskingStrategy):
    """MAE's uniform random masking."""

    mask_ratio: float = 0.75

    def __post_init__(self) -> None:
        self.mask_ratio = check_mask_ratio(self.mask_ratio)

    def __call__(self, ctx: MaskingContext) -> Tensor:
        return self.random_fallback(ctx)
