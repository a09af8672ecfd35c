"""num_masked, linear_schedule, mask_to_indices (vs MAE's random_masking), build_masking."""

from __future__ import annotations

import pytest
import torch

from priormim.masking import (
    MaskingContext,
    build_masking,
    linear_schedule,
    mask_to_indices,
    masking_names,
    num_masked,
    random_mask,
)


def mae_random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor):
    """facebookresearch/mae models_mae.MaskedAutoencoderViT.random_masking, noise passed in."""
    N, L, D = x.shape
    len_keep = int(L * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
    mask = torch.ones([N, L])
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return x_masked, mask, ids_restore


def mae_unshuffle(x_kept: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor):
    """MAE's forward_decoder token re-ordering (without the cls token)."""
    N, L = ids_restore.shape
    D = x_kept.shape[-1]
    tokens = mask_token.repeat(N, L - x_kept.shape[1], 1)
    x_ = torch.cat([x_kept, tokens], dim=1)
    return torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, D))


@pytest.mark.parametrize(
    "L,ratio,expected",
    [(196, 0.75, 147), (196, 0.6, 118), (10, 0.0, 0), (10, 0.95, 10), (12, 0.6, 8), (7, 0.5, 4), (1, 0.5, 1), (20, 0.9, 19)],
)
def test_num_masked_hand_values(L, ratio, expected):
    # 196*0.4 = 78.4 -> keep 78 -> 118; 12*0.4 = 4.8 -> keep 4 -> 8; 7*0.5 = 3.5 -> keep 3 -> 4;
    # 20*(1-0.9) = 1.9999999999999996 in floating point -> keep 1 -> 19, exactly as MAE does.
    assert num_masked(L, ratio) == expected


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_num_masked_rejects_bad_ratio(bad):
    with pytest.raises(ValueError, match="mask_ratio"):
        num_masked(10, bad)


def test_num_masked_rejects_bad_length():
    with pytest.raises(ValueError):
        num_masked(0, 0.5)


def test_linear_schedule_endpoints_and_clamp():
    assert linear_schedule(0.0) == 0.0
    assert linear_schedule(1.0) == 0.5
    assert linear_schedule(0.5, 0.2, 0.6) == pytest.approx(0.4)
    assert linear_schedule(-3.0, 0.2, 0.6) == pytest.approx(0.2)
    assert linear_schedule(7.0, 0.2, 0.6) == pytest.approx(0.6)
    assert linear_schedule(0.25, 1.0, 0.0) == pytest.approx(0.75)  # decreasing works too
    with pytest.raises(ValueError):
        linear_schedule(float("nan"))


def test_mask_to_indices_hand_example():
    mask = torch.tensor([[True, False, False, True, False], [False, True, True, False, False]])
    idx = mask_to_indices(mask)
    assert idx.ids_keep.tolist() == [[1, 2, 4], [0, 3, 4]]
    assert idx.ids_masked.tolist() == [[0, 3], [1, 2]]
    # ids_shuffle row 0 = [1, 2, 4, 0, 3] -> ids_restore = position of each patch in it
    assert idx.ids_restore.tolist() == [[3, 0, 1, 4, 2], [0, 3, 4, 1, 2]]


def test_mask_to_indices_round_trip():
    g = torch.Generator().manual_seed(0)
    B, L, D = 5, 23, 3
    mask = random_mask(B, L, 0.6, generator=g)
    x = torch.randn(B, L, D, generator=g)
    idx = mask_to_indices(mask)
    kept = torch.gather(x, 1, idx.ids_keep[..., None].expand(-1, -1, D))
    masked = torch.gather(x, 1, idx.ids_masked[..., None].expand(-1, -1, D))
    restored = torch.gather(torch.cat([kept, masked], 1), 1, idx.ids_restore[..., None].expand(-1, -1, D))
    assert torch.equal(restored, x)
    assert torch.equal(mask.gather(1, idx.ids_keep), torch.zeros_like(idx.ids_keep, dtype=torch.bool))
    assert bool(mask.gather(1, idx.ids_masked).all())
    assert bool((idx.ids_keep.diff(dim=1) > 0).all())  # ascending patch order


def test_mask_to_indices_matches_mae_random_masking():
    B, L, D, ratio = 4, 49, 6, 0.75
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, L, D, generator=g)
    noise = torch.rand(B, L, generator=g)
    x_masked, mae_mask, mae_restore = mae_random_masking(x, ratio, noise)

    # random_mask with the same generator state draws the same noise -> the same mask.
    g2 = torch.Generator().manual_seed(1)
    torch.randn(B, L, D, generator=g2)
    ours = random_mask(B, L, ratio, generator=g2)
    assert torch.equal(ours, mae_mask.bool())

    idx = mask_to_indices(ours)
    kept = torch.gather(x, 1, idx.ids_keep[..., None].expand(-1, -1, D))
    # Same visible set (MAE keeps it in noise order, we keep ascending order) ...
    mae_keep = torch.argsort(noise, dim=1)[:, : x_masked.shape[1]]
    assert torch.equal(idx.ids_keep, mae_keep.sort(dim=1).values)
    # ... and the same decoder input once mask tokens are un-shuffled.
    token = torch.randn(1, 1, D, generator=g)
    assert torch.equal(mae_unshuffle(kept, idx.ids_restore, token), mae_unshuffle(x_masked, mae_restore, token))


def test_mask_to_indices_rejects_ragged_and_non_bool():
    with pytest.raises(ValueError, match="same number"):
        mask_to_indices(torch.tensor([[True, False, False], [True, True, False]]))
    with pytest.raises(ValueError, match="bool"):
        mask_to_indices(torch.zeros(2, 3))
    with pytest.raises(ValueError):
        mask_to_indices(torch.zeros(3, dtype=torch.bool))


def test_build_masking_names_and_errors():
    assert masking_names() == ["anatomy", "block", "gaze", "random", "score"]
    s = build_masking("anatomy", mask_ratio=0.6, beta_end=0.8)
    assert (s.mask_ratio, s.beta_start, s.beta_end) == (0.6, 0.0, 0.8)
    with pytest.raises(ValueError, match="anatomy, block, gaze, random, score"):
        build_masking("vessel")
    with pytest.raises(ValueError, match="betta"):
        build_masking("anatomy", betta=0.3)
    with pytest.raises(ValueError, match="mask_ratio"):
        build_masking("random", mask_ratio=1.2)


def test_context_rejects_wrong_prior_shape():
    s = build_masking("anatomy")
    ctx = MaskingContext(batch_size=2, grid_size=(3, 4), patch_prior=torch.ones(2, 13))
    with pytest.raises(ValueError, match=r"\[2, 12\]"):
        s(ctx)
