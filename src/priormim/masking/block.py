"""Block-wise masking (SimMIM): square blocks of patches instead of single patches."""

from __future__ import annotations

import math
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

__all__ = ["BlockMasking", "block_mask"]


def block_mask(
    batch_size: int,
    grid_size: tuple[int, int],
    mask_ratio: float,
    *,
    mask_patch_size: int = 2,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SimMIM block mask, bool ``[B, gh * gw]`` (row-major), exactly ``n_mask`` True per row.

    The patch grid is tiled with ``s x s`` blocks (``s = mask_patch_size``; 32-px blocks on
    16-px patches is ``s = 2``), starting at the top-left corner; when ``s`` does not divide
    the grid, the last block row/column is cut to the grid. Blocks are visited in a uniformly
    random order and masked whole until the next block would exceed ``n_mask``; that block is
    then masked partially, at uniformly random patches inside it.

    Guarantee: every row has exactly ``n_mask = num_masked(gh * gw, mask_ratio)`` masked
    patches, made of complete blocks plus at most one partially masked block. ``s = 1`` is
    uniform random masking. ``device`` defaults to the generator's device (CPU without one).
    """
    if int(batch_size) != batch_size or batch_size < 0:
        raise ValueError(f"batch_size must be a non-negative int, got {batch_size!r}")
    if len(grid_size) != 2 or min(grid_size) < 1:
        raise ValueError(f"grid_size must be (gh, gw) with positive entries, got {grid_size!r}")
    if int(mask_patch_size) != mask_patch_size or mask_patch_size < 1:
        raise ValueError(f"mask_patch_size must be a positive int, got {mask_patch_size!r}")
    if device is None and generator is not None:
        device = generator.device  # a CUDA generator implies CUDA masks
    gh, gw = int(grid_size[0]), int(grid_size[1])
    s = int(mask_patch_size)
    B, L = int(batch_size), gh * gw
    n_mask = num_masked(L, mask_ratio)
    bh, bw = math.ceil(gh / s), math.ceil(gw / s)

    # Block id of every patch, row-major over the block grid: [L].
    rows = torch.arange(gh, device=device) // s
    cols = torch.arange(gw, device=device) // s
    block_of_patch = (rows[:, None] * bw + cols[None, :]).flatten()

    # Random visiting order of the blocks (rank 0 = first), per row: [B, nb].
    block_noise = torch.rand((B, bh * bw), generator=generator, device=device)
    block_rank = torch.argsort(torch.argsort(block_noise, dim=1), dim=1)
    # Patch key = its block's rank + a uniform tiebreak in [0, 1): the n_mask smallest keys
    # fill blocks in rank order and take random patches of the last block. In float64 an
    # integer rank plus a float32 u is exact, so keys order lexicographically (rank, u).
    patch_noise = torch.rand((B, L), generator=generator, device=device)
    keys = block_rank[:, block_of_patch].to(torch.float64) + patch_noise.to(torch.float64)
    return top_n_mask(-keys, n_mask)


@register_masking("block")
@dataclass
class BlockMasking(MaskingStrategy):
    """SimMIM block-wise masking (default ratio 0.6, 2x2-patch blocks)."""

    mask_ratio: float = 0.6
    mask_patch_size: int = 2

    def __post_init__(self) -> None:
        self.mask_ratio = check_mask_ratio(self.mask_ratio)
        if int(self.mask_patch_size) != self.mask_patch_size or self.mask_patch_size < 1:
            raise ValueError(
                f"mask_patch_size must be a positive int, got {self.mask_patch_size!r}"
            )
        self.mask_patch_size = int(self.mask_patch_size)

    def __call__(self, ctx: MaskingContext) -> Tensor:
        return block_mask(
            ctx.batch_size,
            ctx.grid_size,
            self.mask_ratio,
            mask_patch_size=self.mask_patch_size,
            device=ctx.device,
            generator=ctx.generator,
        )
