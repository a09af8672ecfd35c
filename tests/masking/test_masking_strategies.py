"""MaskingStrategy objects: schedules, priors, logged state, and a CUDA run."""

from __future__ import annotations

import pytest
import torch

from priormim.masking import (
    AnatomyGuidedMasking,
    BlockMasking,
    GazeGuidedMasking,
    MaskingContext,
    RandomMasking,
    ScoreGuidedMasking,
    anatomy_guided_mask,
    block_mask,
    build_masking,
    gaze_guided_mask,
    num_masked,
    random_mask,
    score_guided_mask,
)


def _ctx(prior=None, progress=0.0, seed=0, B=4, grid=(4, 5)):
    return MaskingContext(
        batch_size=B, grid_size=grid, patch_prior=prior, progress=progress,
        generator=torch.Generator().manual_seed(seed),
    )


@pytest.mark.parametrize("name", ["random", "anatomy", "gaze", "block", "score"])
def test_every_strategy_counts_with_and_without_prior(name):
    s = build_masking(name)
    L = 20
    prior = torch.rand(4, L, generator=torch.Generator().manual_seed(9))
    for p in (None, prior):
        m = s(_ctx(prior=p, progress=0.7))
        assert m.dtype == torch.bool and m.shape == (4, L)
        assert m.sum(1).tolist() == [num_masked(L, s.mask_ratio)] * 4
    assert s.needs_prior == (name in {"anatomy", "gaze", "score"})


def test_strategies_match_pure_functions_with_same_generator():
    prior = torch.rand(4, 20, generator=torch.Generator().manual_seed(9))
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    ctx = _ctx(prior=prior, progress=0.5)
    assert torch.equal(RandomMasking(0.6)(ctx), random_mask(4, 20, 0.6, generator=g()))
    ctx = _ctx(prior=prior, progress=0.5)
    assert torch.equal(AnatomyGuidedMasking(0.75, 0.2, 0.6)(ctx), anatomy_guided_mask(prior, 0.75, 0.4, g()))
    ctx = _ctx(prior=prior, progress=0.5)
    assert torch.equal(
        GazeGuidedMasking(0.75, q=0.3, rho=0.8, rho_start=0.2)(ctx),
        gaze_guided_mask(prior, 0.75, q=0.3, rho=0.5, generator=g()).mask,
    )
    ctx = _ctx(prior=prior, progress=0.5)
    assert torch.equal(BlockMasking(0.5, 2)(ctx), block_mask(4, (4, 5), 0.5, mask_patch_size=2, generator=g()))
    ctx = _ctx(prior=prior, progress=0.5)
    assert torch.equal(
        ScoreGuidedMasking(0.75, 0.0, 1.0)(ctx), score_guided_mask(prior, 0.75, hard_share=0.5, generator=g())
    )


def test_states_follow_schedules():
    assert AnatomyGuidedMasking(beta_start=0.1, beta_end=0.5).state(_ctx(progress=0.5)) == {"beta": pytest.approx(0.3)}
    assert ScoreGuidedMasking().state(_ctx(progress=1.0)) == {"hard_share": 0.5}
    assert RandomMasking().state(_ctx()) == {}
    gz = GazeGuidedMasking(rho=0.9, rho_start=0.1)
    assert gz.state(_ctx(progress=0.25))["rho"] == pytest.approx(0.3)
    assert GazeGuidedMasking(rho=0.6).state(_ctx(progress=0.25))["rho"] == 0.6


def test_gaze_state_counts_fallbacks_of_last_call():
    gz = GazeGuidedMasking()
    heat = torch.rand(6, 20)
    heat[[1, 4]] = 0.0
    gz(_ctx(prior=heat, B=6))
    assert gz.state(_ctx())["fallback"] == 2.0
    gz(_ctx(prior=None, B=6))  # no gaze at all: every row is a fallback
    assert gz.state(_ctx())["fallback"] == 6.0


def test_anatomy_beta_schedule_affects_masks():
    # A one-patch prior: at progress 0 (beta 0) patch 0 is hit ~n/L of the time, at 1 always.
    N, L = 400, 20
    prior = torch.zeros(N, L)
    prior[:, 0] = 1.0
    s = AnatomyGuidedMasking(mask_ratio=0.5, beta_start=0.0, beta_end=1.0)
    early = s(_ctx(prior=prior, progress=0.0, B=N))[:, 0].float().mean().item()
    late = s(_ctx(prior=prior, progress=1.0, B=N))[:, 0].float().mean().item()
    assert late == 1.0 and 0.35 < early < 0.65


def test_invalid_hyper_parameters():
    with pytest.raises(ValueError, match="beta_end"):
        AnatomyGuidedMasking(beta_end=1.5)
    with pytest.raises(ValueError, match="rho_start"):
        GazeGuidedMasking(rho_start=-0.5)
    with pytest.raises(ValueError, match="mask_patch_size"):
        BlockMasking(mask_patch_size=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_all_functions():
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    B, grid, ratio = 32, (14, 14), 0.75
    L = grid[0] * grid[1]
    n = num_masked(L, ratio)
    prior = torch.rand(B, L, device=dev, generator=g) * (torch.rand(B, L, device=dev, generator=g) < 0.2)
    prior[0] = 0
    masks = [
        random_mask(B, L, ratio, device=dev, generator=g),
        anatomy_guided_mask(prior, ratio, 1.0, generator=g),
        gaze_guided_mask(prior, ratio, generator=g).mask,
        block_mask(B, grid, ratio, device=dev, generator=g),
        score_guided_mask(prior, ratio, hard_share=0.5, generator=g),
    ]
    for m in masks:
        assert m.device.type == "cuda" and m.sum(1).eq(n).all()
    a = masks[1]
    # beta = 1: rows with few vessel patches have all of them masked
    few = (prior > 0).sum(1) <= n
    assert bool((a[few] | (prior[few] == 0)).all())
    for name in ["random", "anatomy", "gaze", "block", "score"]:
        ctx = MaskingContext(B, grid, device=dev, patch_prior=prior, progress=0.5, generator=g)
        assert build_masking(name)(ctx).device.type == "cuda"
