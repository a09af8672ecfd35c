"""Gaze-guided masking (VP-MIM): radiologist fixations steer which patches are masked.

Per image, the top ``q`` share of patches by gaze heat forms the *relevant* set. A share
``rho`` of the masked budget comes from that set, the rest from the other patches, uniformly
within each set. ``rho`` near 1 hides what the radiologist looked at (harder reconstruction
of diagnostically relevant regions); ``rho`` near 0 keeps it visible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .base import (
    MaskingContext,
    MaskingStrategy,
    as_float,
    check_2d,
    check_mask_ratio,
    check_non_negative,
    check_unit,
    linear_schedule,
    num_masked,
    register_masking,
    top_n_mask,
    top_n_random_ties,
)

__all__ = ["GazeGuidedMasking", "GazeMaskResult", "gaze_guided_mask", "gaze_split"]


@dataclass
class GazeMaskResult:
    """Output of :func:`gaze_guided_mask`.

    Attributes:
        mask: bool ``[B, L]``, exactly ``n_mask`` True per row.
        relevant: bool ``[B, L]``, the top-``q`` heat patches (all False on fallback rows).
        fallback: bool ``[B]``, rows without gaze (all-zero heat) that were masked at random.
    """

    mask: Tensor
    relevant: Tensor
    fallback: Tensor


def gaze_split(num_patches: int, mask_ratio: float, q: float, rho: float) -> tuple[int, int, int]:
    """Set sizes used by :func:`gaze_guided_mask`: ``(n_relevant_set, n_rel, n_irr)``.

    ``n_relevant_set = ceil(q * L)``; ``n_rel = round_half_up(rho * n_mask)`` capped at the
    relevant-set size, ``n_irr = n_mask - n_rel``; if the irrelevant set is too small the
    overflow moves back to the relevant set, so ``n_rel + n_irr == n_mask`` always.
    """
    L = int(num_patches)
    n_mask = num_masked(L, mask_ratio)
    q = check_unit("q", q)
    rho = check_unit("rho", rho)
    # round() first: q * L like 0.3 * 10 may land a hair above an integer.
    n_set = min(L, math.ceil(round(q * L, 9)))
    n_rel = min(int(math.floor(rho * n_mask + 0.5)), n_set)
    n_irr = n_mask - n_rel
    if n_irr > L - n_set:
        n_irr = L - n_set
        n_rel = n_mask - n_irr
    return n_set, n_rel, n_irr


def gaze_guided_mask(
    heat: Tensor,
    mask_ratio: float,
    *,
    q: float = 0.3,
    rho: float = 0.75,
    generator: torch.Generator | None = None,
) -> GazeMaskResult:
    """VP-MIM gaze-guided mask.

    Args:
        heat: ``[B, L]`` non-negative per-patch gaze heat (any scale).
        mask_ratio: in ``[0, 1)``; ``n_mask = num_masked(L, mask_ratio)``.
        q: share of patches in the relevant set, ``ceil(q * L)`` highest heat (ties at the
            boundary broken uniformly at random).
        rho: share of the masked budget drawn from the relevant set (see :func:`gaze_split`
            for rounding and overflow).
        generator: optional generator on ``heat``'s device.

    Returns:
        :class:`GazeMaskResult`; rows whose heat is all zero are masked uniformly at random
        and flagged in ``fallback``.
    """
    check_2d("heat", heat)
    B, L = heat.shape
    n_set, n_rel, n_irr = gaze_split(L, mask_ratio, q, rho)
    h = as_float(heat)
    check_non_negative("heat", h)

    relevant = top_n_random_ties(h, n_set, generator)
    # Uniform within each set: one noise draw, the other set pushed below every real key.
    u = torch.rand((B, L), generator=generator, device=h.device)
    in_rel = top_n_mask(torch.where(relevant, u, -1.0), n_rel)
    in_irr = top_n_mask(torch.where(relevant, -1.0, u), n_irr)
    mask = in_rel | in_irr

    # Rows without gaze need no separate draw: with all-equal heat the relevant set is a
    # uniformly random subset (random ties), and the whole procedure is invariant under any
    # relabelling of the patches, so its fixed-size mask is uniform over all n_mask-subsets,
    # i.e. exactly random masking. Only the flag and the meaningless relevant set change.
    fallback = h.amax(dim=1) <= 0  # heat is non-negative: all zero
    relevant = relevant & ~fallback[:, None]
    return GazeMaskResult(mask=mask, relevant=relevant, fallback=fallback)


@register_masking("gaze")
@dataclass
class GazeGuidedMasking(MaskingStrategy):
    """VP-MIM masking; ``ctx.patch_prior`` is the per-patch gaze heat.

    With ``rho_start`` set, ``rho`` grows from ``rho_start`` to ``rho`` over training
    (weak-to-strong); otherwise it is constant. Without a prior every row is random and
    counted as a fallback. ``state()`` logs ``rho`` and the fallback count of the last call.
    """

    mask_ratio: float = 0.75
    q: float = 0.3
    rho: float = 0.75
    rho_start: float | None = None
    _last_fallback: Tensor | int = field(default=0, init=False, repr=False, compare=False)
    needs_prior = True

    def __post_init__(self) -> None:
        self.mask_ratio = check_mask_ratio(self.mask_ratio)
        self.q = check_unit("q", self.q)
        self.rho = check_unit("rho", self.rho)
        if self.rho_start is not None:
            self.rho_start = check_unit("rho_start", self.rho_start)

    def current_rho(self, progress: float) -> float:
        if self.rho_start is None:
            return self.rho
        return linear_schedule(progress, self.rho_start, self.rho)

    def __call__(self, ctx: MaskingContext) -> Tensor:
        heat = ctx.checked_prior()
        if heat is None:
            self._last_fallback = ctx.batch_size
            return self.random_fallback(ctx)
        rho = self.current_rho(ctx.progress)
        res = gaze_guided_mask(heat, self.mask_ratio, q=self.q, rho=rho, generator=ctx.generator)
        self._last_fallback = res.fallback.sum()  # tensor: no device sync until state() asks
        return res.mask

    def state(self, ctx: MaskingContext) -> dict[str, float]:
        return {"rho": self.current_rho(ctx.progress), "fallback": float(self._last_fallback)}
