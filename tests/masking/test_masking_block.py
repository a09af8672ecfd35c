"""SimMIM block masking: exact counts, whole blocks plus at most one partial block."""

from __future__ import annotations

import math

import pytest
import torch

from priormim.masking import block_mask, num_masked


def _block_fill(mask: torch.Tensor, grid: tuple[int, int], s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked patches and size of every block ``[B, nb]`` (edge blocks cut to the grid)."""
    gh, gw = grid
    B = mask.shape[0]
    H, W = math.ceil(gh / s) * s, math.ceil(gw / s) * s
    m = torch.zeros(B, H, W)
    m[:, :gh, :gw] = mask.view(B, gh, gw).float()
    size = torch.zeros(1, H, W)
    size[:, :gh, :gw] = 1.0
    pool = lambda x: x.view(x.shape[0], H // s, s, W // s, s).sum((2, 4)).flatten(1)  # noqa: E731
    return pool(m), pool(size).expand(B, -1)


@pytest.mark.parametrize(
    "grid,s,ratio",
    [((8, 8), 2, 0.5), ((14, 14), 2, 0.6), ((7, 9), 2, 0.6), ((12, 6), 3, 0.75), ((5, 5), 4, 0.3), ((6, 4), 1, 0.5)],
)
def test_whole_blocks_plus_at_most_one_partial(grid, s, ratio):
    g = torch.Generator().manual_seed(0)
    B = 64
    m = block_mask(B, grid, ratio, mask_patch_size=s, generator=g)
    L = grid[0] * grid[1]
    assert m.shape == (B, L)
    assert m.sum(1).tolist() == [num_masked(L, ratio)] * B
    filled, size = _block_fill(m, grid, s)
    partial = ((filled > 0) & (filled < size)).sum(1)
    assert partial.max().item() <= 1


def test_divisible_budget_has_only_whole_blocks():
    m = block_mask(32, (8, 8), 0.5, mask_patch_size=2, generator=torch.Generator().manual_seed(1))
    filled, _ = _block_fill(m, (8, 8), 2)
    assert set(filled.unique().tolist()) <= {0.0, 4.0}
    assert filled.eq(4).sum(1).tolist() == [8] * 32  # 32 masked patches = 8 blocks


def test_blocks_are_chosen_uniformly():
    B = 4000
    m = block_mask(B, (4, 4), 0.5, mask_patch_size=2, generator=torch.Generator().manual_seed(2))
    filled, _ = _block_fill(m, (4, 4), 2)
    freq = filled.eq(4).float().mean(0)  # 2 of 4 blocks
    assert torch.allclose(freq, torch.full_like(freq, 0.5), atol=5 * (0.25 / B) ** 0.5)


def test_block_mask_errors():
    with pytest.raises(ValueError, match="mask_patch_size"):
        block_mask(2, (4, 4), 0.5, mask_patch_size=0)
    with pytest.raises(ValueError, match="grid_size"):
        block_mask(2, (0, 4), 0.5)
