"""random_mask and the properties every pure masking function shares (counts, seeds)."""

from __future__ import annotations

import itertools

import pytest
import torch

from priormim.masking import (
    anatomy_guided_mask,
    block_mask,
    gaze_guided_mask,
    num_masked,
    random_mask,
    score_guided_mask,
)

GRIDS = [(1, 1), (2, 3), (7, 5), (14, 14), (4, 16)]
RATIOS = [0.0, 0.4, 0.6, 0.75, 0.9]


def _prior(B: int, L: int, g: torch.Generator) -> torch.Tensor:
    # Sparse non-negative prior with some empty rows, like vessel shares / gaze heat.
    p = torch.rand(B, L, generator=g) * (torch.rand(B, L, generator=g) < 0.3)
    p[::3] = 0.0
    return p


def _all_masks(B: int, grid: tuple[int, int], ratio: float, g: torch.Generator) -> dict[str, torch.Tensor]:
    L = grid[0] * grid[1]
    p = _prior(B, L, g)
    return {
        "random": random_mask(B, L, ratio, generator=g),
        "anatomy": anatomy_guided_mask(p, ratio, 0.5, generator=g),
        "anatomy_b1": anatomy_guided_mask(p, ratio, 1.0, generator=g),
        "gaze": gaze_guided_mask(p, ratio, q=0.3, rho=0.75, generator=g).mask,
        "block": block_mask(B, grid, ratio, mask_patch_size=2, generator=g),
        "block3": block_mask(B, grid, ratio, mask_patch_size=3, generator=g),
        "score": score_guided_mask(torch.randn(B, L, generator=g), ratio, hard_share=0.5, generator=g),
    }


@pytest.mark.parametrize("grid,ratio", list(itertools.product(GRIDS, RATIOS)))
def test_exact_counts_and_shapes(grid, ratio):
    g = torch.Generator().manual_seed(0)
    B, L = 6, grid[0] * grid[1]
    n = num_masked(L, ratio)
    for name, m in _all_masks(B, grid, ratio, g).items():
        assert m.dtype == torch.bool and m.shape == (B, L), name
        assert m.sum(1).tolist() == [n] * B, name


def test_same_seed_same_masks_different_seed_differs():
    a = _all_masks(8, (14, 14), 0.75, torch.Generator().manual_seed(3))
    b = _all_masks(8, (14, 14), 0.75, torch.Generator().manual_seed(3))
    c = _all_masks(8, (14, 14), 0.75, torch.Generator().manual_seed(4))
    for name in a:
        assert torch.equal(a[name], b[name]), name
        assert not torch.equal(a[name], c[name]), name


def test_random_mask_is_uniform():
    B, L, ratio = 4000, 10, 0.7
    n = num_masked(L, ratio)  # 7
    m = random_mask(B, L, ratio, generator=torch.Generator().manual_seed(0))
    freq = m.float().mean(0)
    p = n / L
    tol = 5 * (p * (1 - p) / B) ** 0.5
    assert torch.allclose(freq, torch.full_like(freq, p), atol=tol)
    # Rows differ from each other (not the same permutation broadcast over the batch).
    assert m.unique(dim=0).shape[0] > 100


def test_random_mask_rejects_bad_batch():
    with pytest.raises(ValueError):
        random_mask(-1, 10, 0.5)
