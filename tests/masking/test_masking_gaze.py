"""VP-MIM gaze-guided masking: relevant set, rho extremes, overflow, fallback."""

from __future__ import annotations

import pytest
import torch

from priormim.masking import gaze_guided_mask, gaze_split, num_masked


def _distinct_heat(B: int, L: int, g: torch.Generator) -> torch.Tensor:
    # A random permutation of 1..L per row: distinct positive values, so top-q is unique.
    return torch.rand(B, L, generator=g).argsort(1).float() + 1.0


def _top_set(heat: torch.Tensor, n: int) -> torch.Tensor:
    ref = torch.zeros_like(heat, dtype=torch.bool)
    return ref.scatter_(1, heat.topk(n, dim=1).indices, True)


@pytest.mark.parametrize(
    "L,ratio,q,rho,expected",
    [
        (100, 0.5, 0.3, 0.5, (30, 25, 25)),  # plain split
        (196, 0.75, 0.3, 0.75, (59, 59, 88)),  # ceil(58.8)=59; round(110.25)=110 capped at 59
        (10, 0.3, 0.3, 0.5, (3, 2, 1)),  # n_mask=3: round_half_up(1.5)=2; ceil(0.3*10)=3
        # n_mask = 19 (20 * (1 - 0.9) = 1.99.. -> keep 1, MAE's convention) > 14 irrelevant
        (20, 0.9, 0.3, 0.0, (6, 5, 14)),
        (20, 0.5, 1.0, 0.0, (20, 10, 0)),  # everything relevant
        (20, 0.5, 0.0, 1.0, (0, 0, 10)),  # nothing relevant
    ],
)
def test_gaze_split_hand_values(L, ratio, q, rho, expected):
    n_set, n_rel, n_irr = gaze_split(L, ratio, q, rho)
    assert (n_set, n_rel, n_irr) == expected
    assert n_rel + n_irr == num_masked(L, ratio)


def test_relevant_is_top_q_and_counts_per_set():
    g = torch.Generator().manual_seed(0)
    B, L, ratio, q, rho = 16, 100, 0.5, 0.3, 0.5
    heat = _distinct_heat(B, L, g)
    res = gaze_guided_mask(heat, ratio, q=q, rho=rho, generator=g)
    assert torch.equal(res.relevant, _top_set(heat, 30))
    assert (res.mask & res.relevant).sum(1).tolist() == [25] * B
    assert (res.mask & ~res.relevant).sum(1).tolist() == [25] * B
    assert not bool(res.fallback.any())


def test_rho_one_masks_only_top_q_when_budget_fits():
    g = torch.Generator().manual_seed(1)
    B, L, ratio, q = 16, 20, 0.4, 0.5
    heat = _distinct_heat(B, L, g)
    assert num_masked(L, ratio) == 8  # <= 10 relevant patches
    res = gaze_guided_mask(heat, ratio, q=q, rho=1.0, generator=g)
    assert not bool((res.mask & ~_top_set(heat, 10)).any())


def test_rho_one_overflow_masks_whole_relevant_set():
    g = torch.Generator().manual_seed(2)
    B, L, ratio, q = 16, 20, 0.75, 0.3  # n_mask = 15 > 6 relevant
    heat = _distinct_heat(B, L, g)
    res = gaze_guided_mask(heat, ratio, q=q, rho=1.0, generator=g)
    top = _top_set(heat, 6)
    assert bool((res.mask | ~top).all())  # every relevant patch masked
    assert res.mask.sum(1).tolist() == [15] * B


def test_rho_zero_keeps_relevant_visible():
    g = torch.Generator().manual_seed(3)
    B, L, q = 16, 20, 0.3
    heat = _distinct_heat(B, L, g)
    top = _top_set(heat, 6)
    res = gaze_guided_mask(heat, 0.5, q=q, rho=0.0, generator=g)  # 10 <= 14 irrelevant
    assert not bool((res.mask & top).any())
    n = num_masked(L, 0.8)  # 17 (MAE rounding) > 14 irrelevant: overflow into the relevant set
    assert n > 14
    res = gaze_guided_mask(heat, 0.8, q=q, rho=0.0, generator=g)
    assert (res.mask & ~top).sum(1).tolist() == [14] * B
    assert (res.mask & top).sum(1).tolist() == [n - 14] * B


def test_zero_heat_rows_fall_back_and_are_flagged():
    g = torch.Generator().manual_seed(4)
    B, L, ratio = 4000, 10, 0.5
    heat = torch.zeros(B, L)
    heat[::2, 0] = 1.0
    res = gaze_guided_mask(heat, ratio, q=0.1, rho=1.0, generator=g)
    n = num_masked(L, ratio)
    assert res.mask.sum(1).eq(n).all()
    assert res.fallback.tolist() == [False, True] * (B // 2)
    assert not bool(res.relevant[1::2].any())
    assert bool(res.mask[::2, 0].all())  # the only relevant patch, rho = 1
    freq = res.mask[1::2].float().mean(0)
    p, N = n / L, B // 2
    assert torch.allclose(freq, torch.full_like(freq, p), atol=5 * (p * (1 - p) / N) ** 0.5)


def test_ties_in_heat_broken_at_random():
    g = torch.Generator().manual_seed(5)
    B, L = 2000, 10
    heat = torch.ones(B, L)  # every patch tied: relevant set must be a random 3-subset
    res = gaze_guided_mask(heat, 0.5, q=0.3, rho=1.0, generator=g)
    assert res.relevant.sum(1).eq(3).all()
    freq = res.relevant.float().mean(0)
    assert torch.allclose(freq, torch.full_like(freq, 0.3), atol=5 * (0.21 / B) ** 0.5)


def test_gaze_input_errors():
    with pytest.raises(ValueError, match="non-negative"):
        gaze_guided_mask(torch.tensor([[1.0, -1.0]]), 0.5)
    with pytest.raises(ValueError, match="rho"):
        gaze_guided_mask(torch.ones(1, 4), 0.5, rho=1.2)
    with pytest.raises(ValueError, match="q"):
        gaze_guided_mask(torch.ones(1, 4), 0.5, q=-0.1)
