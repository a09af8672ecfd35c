"""Anatomy-guided masking (VasoMIM, AAAI 2026).

A share ``beta`` of the masked patches is drawn in proportion to each patch's share of the
vessel pixels, so the model must reconstruct vessels from context; the rest is uniform.
``beta`` grows during training (weak-to-strong) with :func:`linear_schedule`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (
    MaskingContext,
    MaskingStrategy,
    as_float,
    check_2d,
    check_mask_ratio,
    check_non_negative,
    check_unit,
    fill_uniform,
    linear_schedule,
    num_masked,
    register_masking,
)
from .random import random_mask

__all__ = ["AnatomyGuidedMasking", "anatomy_guided_mask", "blend_guidance", "patch_prob_from_prior"]


def blend_guidance(prior: Tensor, seg_probs: Tensor, weight: float = 0.5) -> Tensor:
    """The official VasoMIM guidance map ``(1 - w) * prior + w * seg_probs`` (``w = 0.5``).

    Args:
        prior: ``[B, 1, H, W]`` vessel prior of the current crop (0/1 or soft).
        seg_probs: ``[B, 1, H, W]`` ``sigmoid(S(crop))`` of the frozen segmentor.
        weight: ``w`` in ``[0, 1]``; 0 returns the prior.
    Returns: ``[B, 1, H, W]``; feed it to :func:`patch_prob_from_prior`. Since the sigmoid is
    never 0, every patch can be drawn once ``w > 0`` (the guided share is never capped).
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"guidance weight must be in [0, 1], got {weight}")
    if prior.shape != seg_probs.shape:
        raise ValueError(f"prior {tuple(prior.shape)} and segmentor map {tuple(seg_probs.shape)} differ in shape")
    if weight == 0.0:
        return prior
    return (1.0 - weight) * as_float(prior) + weight * seg_probs.to(as_float(prior).dtype)


def patch_prob_from_prior(prior: Tensor, patch_size: int | tuple[int, int]) -> Tensor:
    """Per-patch share of a pixel prior (e.g. a vessel segmentation).

    Args:
        prior: ``[B, 1, H, W]`` bool or float in ``[0, 1]`` (hard mask or soft vesselness);
            ``H`` and ``W`` divisible by the patch size (non-square is fine).
        patch_size: ``p`` or ``(ph, pw)`` in pixels.

    Returns:
        float ``[B, L]`` with ``L = (H // ph) * (W // pw)`` in row-major patch order: each
        patch's sum of the prior divided by the image's total, so rows sum to 1; all-zero
        rows for an empty prior.
    """
    if not isinstance(prior, Tensor) or prior.dim() != 4 or prior.shape[1] != 1:
        shape = tuple(prior.shape) if isinstance(prior, Tensor) else type(prior).__name__
        raise ValueError(f"prior must be [B, 1, H, W], got {shape}")
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    if ph < 1 or pw < 1:
        raise ValueError(f"patch_size must be positive, got {patch_size!r}")
    H, W = prior.shape[-2:]
    if H % ph or W % pw:
        raise ValueError(f"prior size {H}x{W} is not divisible by patch size {ph}x{pw}")
    x = as_float(prior)
    if x.numel() and bool((x < 0).any()):
        raise ValueError("prior must be non-negative")
    # Patch means times the patch area = patch sums; the area cancels in the normalisation.
    per_patch = F.avg_pool2d(x, kernel_size=(ph, pw), stride=(ph, pw)).flatten(1)  # [B, L]
    total = per_patch.sum(dim=1, keepdim=True)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, per_patch / safe, torch.zeros_like(per_patch))


def anatomy_guided_mask(
    patch_prob: Tensor,
    mask_ratio: float,
    beta: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """VasoMIM anatomy-guided mask.

    Per row, ``k = int(n_mask * beta)`` patches (capped at the number of patches with nonzero
    probability) are drawn *without replacement* with probability proportional to
    ``patch_prob`` (sequential draws, like ``torch.multinomial(p, k, replacement=False)``);
    the remaining ``n_mask - k_row`` are drawn uniformly from the patches not yet chosen.
    Rows with no vessels (all zero) are fully random.

    Vectorised with Gumbel-top-k / Efraimidis-Spirakis: with i.i.d. ``E ~ Exp(1)`` the ``k``
    smallest ``E / p`` (equivalently the ``k`` largest Gumbel keys ``log p - log E``) are a
    sequential without-replacement sample proportional to ``p``. One batched ``topk(k)``
    serves every row; picks with ``p = 0`` (ratio ``+inf``) are dropped, which is the same
    as ``rank < min(k, nnz_row)``.

    Args:
        patch_prob: float ``[B, L]``, non-negative; each row is a vessel share (rows need not
            be normalised: the draw only depends on ratios within a row).
        mask_ratio: in ``[0, 1)``; ``n_mask = num_masked(L, mask_ratio)``.
        beta: share of the masked budget that is vessel-guided, in ``[0, 1]``.
        generator: optional generator on ``patch_prob``'s device.

    Returns:
        bool ``[B, L]``, exactly ``n_mask`` True per row.
    """
    check_2d("patch_prob", patch_prob)
    beta = check_unit("beta", beta)
    B, L = patch_prob.shape
    n_mask = num_masked(L, mask_ratio)
    p = as_float(patch_prob)
    check_non_negative("patch_prob", p)
    k = int(n_mask * beta)
    if k == 0:
        return random_mask(B, L, mask_ratio, device=p.device, generator=generator)
    # Efraimidis-Spirakis in ratio form: the k smallest E / p, E ~ Exp(1), are a sequential
    # draw without replacement proportional to p (same order as the Gumbel keys log p - log E,
    # but no log of zeros, which is slow on CPU). E = -log(1 - U) with U in [0, 1), clamped
    # above 0 so that p == 0 gives exactly +inf (never 0 / 0). Scaling p by its row maximum
    # makes the draw scale-free: only shares below ~1e-38 of the row's largest one could
    # overflow to inf and be treated as zero.
    tiny = torch.finfo(p.dtype).tiny
    expo = torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype)
    expo = expo.neg_().log1p_().neg_().clamp_min_(tiny)
    ratio = expo.div_(p / p.amax(dim=1, keepdim=True).clamp_min(tiny))
    top = torch.topk(ratio, k, dim=1, largest=False, sorted=False)
    guided = torch.zeros((B, L), dtype=torch.bool, device=p.device)
    # Keep only finite picks (p > 0): per row that is rank < k_row = min(k, nnz).
    guided.scatter_(1, top.indices, top.values < float("inf"))
    return fill_uniform(guided, n_mask, generator)


@register_masking("anatomy")
@dataclass
class AnatomyGuidedMasking(MaskingStrategy):
    """VasoMIM masking with ``beta = linear_schedule(progress, beta_start, beta_end)``.

    Uses ``ctx.patch_prior`` as the per-patch vessel share (see :func:`patch_prob_from_prior`);
    without a prior it masks uniformly at random.
    """

    mask_ratio: float = 0.75
    beta_start: float = 0.0
    beta_end: float = 0.5
    needs_prior = True

    def __post_init__(self) -> None:
        self.mask_ratio = check_mask_ratio(self.mask_ratio)
        self.beta_start = check_unit("beta_start", self.beta_start)
        self.beta_end = check_unit("beta_end", self.beta_end)

    def beta(self, progress: float) -> float:
        return linear_schedule(progress, self.beta_start, self.beta_end)

    def __call__(self, ctx: MaskingContext) -> Tensor:
        prior = ctx.checked_prior()
        if prior is None:
            return self.random_fallback(ctx)
        beta = self.beta(ctx.progress)
        return anatomy_guided_mask(prior, self.mask_ratio, beta, generator=ctx.generator)

    def state(self, ctx: MaskingContext) -> dict[str, float]:
        return {"beta": self.beta(ctx.progress)}
