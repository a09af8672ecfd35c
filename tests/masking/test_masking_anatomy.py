"""VasoMIM anatomy-guided masking and patch_prob_from_prior against hand/exact references."""

from __future__ import annotations

import itertools

import pytest
import torch

from priormim.masking import anatomy_guided_mask, num_masked, patch_prob_from_prior


def _within(freq: torch.Tensor, prob: torch.Tensor, n: int, sigmas: float = 5.0) -> None:
    """Assert empirical frequencies lie within ``sigmas`` binomial std of the exact ones."""
    std = (prob * (1 - prob) / n).sqrt().clamp_min(1e-3)
    z = ((freq - prob).abs() / std).max().item()
    assert z < sigmas, f"max z-score {z:.2f}: freq={freq.tolist()} exact={prob.tolist()}"


def _assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    # torch.testing.assert_close costs ~1.5 s of lazy imports on first use; allclose is enough.
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-6), f"{a} != {b}"


# ------------------------------------------------------------------ patch_prob_from_prior
def test_patch_prob_hand_computed_8x8():
    prior = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    prior[0, 0, 0, 0] = prior[0, 0, 1, 1] = prior[0, 0, 3, 2] = True  # patch (0,0): 3 pixels
    prior[0, 0, 2, 7] = True  # patch (0,1): 1 pixel
    prior[0, 0, 4:6, 4:6] = True  # patch (1,1): 4 pixels; patch (1,0): none
    p = patch_prob_from_prior(prior, 4)
    assert p.shape == (1, 4)
    _assert_close(p, torch.tensor([[3 / 8, 1 / 8, 0.0, 4 / 8]]))


def test_patch_prob_non_square_patches_and_soft_prior():
    prior = torch.zeros(2, 1, 8, 8)
    prior[0, 0, 0, 0] = 0.5  # patch (row 0, col 0) with (ph, pw) = (4, 2): grid 2 x 4
    prior[0, 0, 7, 7] = 1.0  # patch (1, 3) -> index 7
    prior[0, 0, 5, 2] = 0.5  # patch (1, 1) -> index 5
    p = patch_prob_from_prior(prior, (4, 2))
    assert p.shape == (2, 8)
    expected = torch.zeros(2, 8)
    expected[0, 0], expected[0, 5], expected[0, 7] = 0.25, 0.25, 0.5
    _assert_close(p, expected)  # row 1 is empty -> all zeros


def test_patch_prob_non_square_image():
    prior = torch.zeros(1, 1, 4, 12, dtype=torch.bool)
    prior[0, 0, :, 11] = True  # last column -> last of the 1 x 3 patches
    prior[0, 0, 0, 0] = True
    _assert_close(patch_prob_from_prior(prior, 4), torch.tensor([[0.2, 0.0, 0.8]]))


def test_patch_prob_errors():
    with pytest.raises(ValueError, match="divisible"):
        patch_prob_from_prior(torch.ones(1, 1, 8, 10), 4)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        patch_prob_from_prior(torch.ones(1, 8, 8), 4)
    with pytest.raises(ValueError, match="non-negative"):
        patch_prob_from_prior(-torch.ones(1, 1, 8, 8), 4)


# ------------------------------------------------------------------ anatomy_guided_mask
def test_beta_one_binary_prior_masks_only_vessels():
    g = torch.Generator().manual_seed(0)
    B, L, ratio = 64, 196, 0.75
    n = num_masked(L, ratio)  # 147
    vessel = torch.zeros(B, L, dtype=torch.bool)
    vessel[:, :160] = True
    vessel = vessel.gather(1, torch.argsort(torch.rand(B, L, generator=g), dim=1))  # 160 random
    p = vessel.float() / vessel.sum(1, keepdim=True)
    m = anatomy_guided_mask(p, ratio, 1.0, generator=g)
    assert m.sum(1).tolist() == [n] * B
    assert not bool((m & ~vessel).any())  # k = n_mask <= 160 vessel patches


def test_beta_one_few_vessels_are_all_masked():
    g = torch.Generator().manual_seed(1)
    B, L, ratio = 32, 49, 0.75
    n = num_masked(L, ratio)
    nv = torch.randint(1, 20, (B,), generator=g)  # fewer vessel patches than n_mask = 37
    vessel = torch.rand(B, L, generator=g).argsort(1).argsort(1) < nv[:, None]
    p = torch.rand(B, L, generator=g) * vessel  # soft, unnormalised
    m = anatomy_guided_mask(p, ratio, 1.0, generator=g)
    assert m.sum(1).tolist() == [n] * B
    assert bool((m | ~vessel).all())  # every vessel patch masked


def test_guided_part_at_least_k_vessel_patches():
    g = torch.Generator().manual_seed(2)
    B, L, ratio, beta = 50, 64, 0.5, 0.5
    n = num_masked(L, ratio)
    k = int(n * beta)  # 16
    vessel = torch.rand(B, L, generator=g) < 0.4
    vessel[:, :20] = True  # >= 20 vessel patches per row > k
    m = anatomy_guided_mask(vessel.float(), ratio, beta, generator=g)
    assert bool(((m & vessel).sum(1) >= k).all())


def test_first_pick_proportional_to_p():
    # n_mask = 1 and beta = 1: the single masked patch is the first weighted draw.
    p = torch.tensor([0.4, 0.25, 0.2, 0.1, 0.05, 0.0])
    L, ratio = 6, 0.1
    assert num_masked(L, ratio) == 1
    N = 20000
    m = anatomy_guided_mask(p.expand(N, L), ratio, 1.0, generator=torch.Generator().manual_seed(0))
    _within(m.float().mean(0), p, N)
    assert not bool(m[:, 5].any())


def _exact_pair_probs(p: torch.Tensor) -> dict[tuple[int, int], float]:
    """Two sequential draws without replacement, proportional to p: P({i, j})."""
    out = {}
    for i, j in itertools.combinations(range(len(p)), 2):
        pi, pj = p[i].item(), p[j].item()
        out[(i, j)] = pi * pj / (1 - pi) + pj * pi / (1 - pj)
    return out


def test_two_draws_without_replacement_pair_frequencies():
    p = torch.tensor([0.5, 0.25, 0.15, 0.1, 0.0])
    L, ratio = 5, 0.4
    assert num_masked(L, ratio) == 2
    N = 20000
    m = anatomy_guided_mask(p.expand(N, L), ratio, 1.0, generator=torch.Generator().manual_seed(1))
    exact = _exact_pair_probs(p)
    pairs = list(exact)
    freq = torch.stack([(m[:, i] & m[:, j]).float().mean() for i, j in pairs])
    _within(freq, torch.tensor([exact[q] for q in pairs]), N)
    # Without replacement: exactly two distinct patches, never the zero-probability one.
    assert not bool(m[:, 4].any())


def test_guided_then_uniform_inclusion():
    # n_mask = 3, beta = 0.5 -> k = 1 weighted draw, then 2 uniform among the other 4.
    p = torch.tensor([0.6, 0.2, 0.1, 0.1, 0.0])
    L, ratio = 5, 0.5
    n = num_masked(L, ratio)
    assert n == 3 and int(n * 0.5) == 1
    N = 20000
    m = anatomy_guided_mask(p.expand(N, L), ratio, 0.5, generator=torch.Generator().manual_seed(2))
    exact = p + (1 - p) * 2 / 4
    _within(m.float().mean(0), exact, N)


def test_beta_zero_is_uniform_and_ignores_prior():
    L, ratio, N = 12, 0.5, 8000
    p = torch.zeros(L)
    p[0] = 1.0  # a prior that beta > 0 would always hit
    m = anatomy_guided_mask(p.expand(N, L), ratio, 0.0, generator=torch.Generator().manual_seed(3))
    n = num_masked(L, ratio)
    _within(m.float().mean(0), torch.full((L,), n / L), N)


def test_empty_rows_fall_back_to_uniform():
    L, ratio, N = 10, 0.6, 8000
    p = torch.zeros(N, L)
    p[::2, 3] = 1.0  # half the rows have a single vessel patch
    m = anatomy_guided_mask(p, ratio, 1.0, generator=torch.Generator().manual_seed(4))
    n = num_masked(L, ratio)
    assert m.sum(1).eq(n).all()
    assert bool(m[::2, 3].all())
    _within(m[1::2].float().mean(0), torch.full((L,), n / L), N // 2)  # empty rows: uniform
    # Vessel rows: patch 3 fixed, the other n-1 uniform over the 9 others.
    others = torch.cat([m[::2, :3], m[::2, 4:]], 1).float().mean(0)
    _within(others, torch.full((L - 1,), (n - 1) / (L - 1)), N // 2)


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.tensor([[0.5, -0.1, 0.6]]), "non-negative"),
        (torch.tensor([[0.5, float("nan"), 0.5]]), "finite"),
        (torch.ones(3), r"\[B, L\]"),
    ],
)
def test_anatomy_input_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        anatomy_guided_mask(bad, 0.5, 0.5)


def test_anatomy_rejects_bad_beta():
    with pytest.raises(ValueError, match="beta"):
        anatomy_guided_mask(torch.ones(1, 4), 0.5, 1.5)


def test_scale_free_and_dtypes():
    # Only ratios within a row matter: a power-of-two rescale (exact in float) gives the same
    # draw, and bool / half inputs are accepted.
    p = torch.rand(16, 49, generator=torch.Generator().manual_seed(5))
    p = p * (p > 0.6)
    a = anatomy_guided_mask(p, 0.75, 0.5, generator=torch.Generator().manual_seed(6))
    b = anatomy_guided_mask(p * 2.0**-100, 0.75, 0.5, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    n = num_masked(49, 0.75)
    for x in (p > 0, p.half(), p.double()):
        assert anatomy_guided_mask(x, 0.75, 1.0).sum(1).eq(n).all()
