"""Score-guided masking (HPM / AMT style): mask the hardest or most-attended patches.

``scores`` are per-patch difficulty (predicted reconstruction loss, HPM) or attention (AMT).
A share ``hard_share`` of the masked budget takes the highest scores; the rest is uniform, so
training does not collapse onto a fixed set of patches. HPM grows the share over training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import (
    MaskingContext,
    MaskingStrategy,
    as_float,
    check_2d,
    check_mask_ratio,
    check_unit,
    fill_uniform,
    linear_schedule,
    num_masked,
    register_masking,
    top_n_random_ties,
)
from .random import random_mask

__all__ = ["ScoreGuidedMasking", "score_guided_mask"]


def score_guided_mask(
    scores: Tensor,
    mask_ratio: float,
    *,
    hard_share: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mask the top-scoring patches plus uniform ones.

    Args:
        scores: float ``[B, L]``, finite, any sign (higher = harder / more attended).
        mask_ratio: in ``[0, 1)``; ``n_mask = num_masked(L, mask_ratio)``.
        hard_share: in ``[0, 1]``; ``int(n_mask * hard_share)`` masked patches are the
            highest-scoring ones (ties broken uniformly at random), the remaining ones are
            uniform among the other patches.
        generator: optional generator on ``scores``' device.

    Returns:
        bool ``[B, L]``, exactly ``n_mask`` True per row.
    """
    check_2d("scores", scores)
    hard_share = check_unit("hard_share", hard_share)
    B, L = scores.shape
    n_mask = num_masked(L, mask_ratio)
    s = as_float(scores)
    if s.numel() and not bool(torch.isfinite(s).all()):
        raise ValueError("scores must be finite")
    n_hard = int(n_mask * hard_share)
    if n_hard == 0:
        return random_mask(B, L, mask_ratio, device=s.device, generator=generator)
    return fill_uniform(top_n_random_ties(s, n_hard, generator), n_mask, generator)


@register_masking("score")
@dataclass
class ScoreGuidedMasking(MaskingStrategy):
    """HPM-style masking with a growing hard share,
    ``hard_share = linear_schedule(progress, hard_share_start, hard_share_end)``.

    ``ctx.patch_prior`` holds the scores (e.g. the predicted loss of the previous step, which
    should be detached); without it the masking is uniform.
    """

    mask_ratio: float = 0.75
    hard_share_start: float = 0.0
    hard_share_end: float = 0.5
    needs_prior = True

    def __post_init__(self) -> None:
        self.mask_ratio = check_mask_ratio(self.mask_ratio)
        self.hard_share_start = check_unit("hard_share_start", self.hard_share_start)
        self.hard_share_end = check_unit("hard_share_end", self.hard_share_end)

    def hard_share(self, progress: float) -> float:
        return linear_schedule(progress, self.hard_share_start, self.hard_share_end)

    def __call__(self, ctx: MaskingContext) -> Tensor:
        scores = ctx.checked_prior()
        if scores is None:
            return self.random_fallback(ctx)
        share = self.hard_share(ctx.progress)
        return score_guided_mask(scores, self.mask_ratio, hard_share=share, generator=ctx.generator)

    def state(self, ctx: MaskingContext) -> dict[str, float]:
        return {"hard_share": self.hard_share(ctx.progress)}
