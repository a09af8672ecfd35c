"""Uniform random masking (MAE)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

# random_mask lives in base.py (the strategies' shared fallback) and is re-exported here, its
# public home, so that base.py does not import this module back.
from .base import MaskingContext, MaskingStrategy, check_mask_ratio, random_mask, register_masking

__all__ = ["RandomMasking", "random_mask"]


@register_masking("random")
@dataclass
class RandomMasking(MaskingStrategy):
    """MAE's uniform random masking."""

    mask_ratio: float = 0.75

    def __post_init__(self) -> None:
        self.mask_ratio = check_mask_ratio(self.mask_ratio)

    def __call__(self, ctx: MaskingContext) -> Tensor:
        return self.random_fallback(ctx)
