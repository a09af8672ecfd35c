import pytest
import torch
import torch.nn.functional as F

from priormim.losses import masked_reconstruction_loss, normalize_patches
from priormim.losses.gaze_weighting import cls_attention, gaze_loss_weights, recalibrate_gaze
from priormim.masking import random_mask
from priormim.models.mae import MaskedAutoencoder, patchify
from priormim.models.vpmim import (
    VPMIMAutoencoder,
    VPMIMOutput,
    default_source_blocks,
    pool_patches,
    pyramid_targets,
    vpmim_loss,
)

# Patch 4 with scale 4 is degenerate under norm-pix (warned about; tested once below).
pytestmark = pytest.mark.filterwarnings("ignore:pyramid scale 4 equals the patch size")

TINY = dict(encoder_name="vit_tiny_patch16_224", img_size=32, encoder_kwargs={"patch_size": 4, "depth": 2,
            "embed_dim": 32, "num_heads": 2}, decoder_embed_dim=16, decoder_depth=2, decoder_num_heads=2)


def _batch(b=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, 32, 32, generator=g)
    mask = random_mask(b, 64, 0.75, generator=g)
    return x, mask


def test_pyramid_targets_hand_computed():
    x = torch.arange(64.0).reshape(1, 1, 8, 8)  # pixel (r, c) = 8r + c; 2x2 grid of 4x4 patches
    t1, t2, t4 = pyramid_targets(x, 4, (1, 2, 4))
    assert t1.shape == (1, 4, 16) and t2.shape == (1, 4, 4) and t4.shape == (1, 4, 1)
    assert t1[0, 0].tolist() == [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27]
    # patch 0's 2x2 blocks: {0,1,8,9}, {2,3,10,11}, {16,17,24,25}, {18,19,26,27}
    assert t2[0, 0].tolist() == [4.5, 6.5, 20.5, 22.5]
    assert t2[0, 3].tolist() == [4.5 + 36, 6.5 + 36, 20.5 + 36, 22.5 + 36]  # patch 3 = +4 rows, +4 cols
    assert t4[0, :, 0].tolist() == [13.5, 17.5, 45.5, 49.5]


def test_pyramid_targets_equal_pooled_image_and_norm_pix():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 24)
    for s, t in zip((1, 2, 4), pyramid_targets(x, 8, (1, 2, 4))):
        assert torch.allclose(t, patchify(F.avg_pool2d(x, s), 8 // s), atol=1e-6)
    n1, n2 = pyramid_targets(x, 8, (1, 2), norm_pix_loss=True)
    assert torch.equal(n1, normalize_patches(patchify(x, 8)))
    assert torch.allclose(n2, pool_patches(n1, 8, 2, 3))
    with pytest.raises(ValueError):
        pyramid_targets(x, 8, (3,))


def test_single_scale_reduces_exactly_to_mae():
    torch.manual_seed(0)
    mae = MaskedAutoencoder(**TINY)
    vp = VPMIMAutoencoder(pyramid_scales=(1,), **TINY)
    assert set(vp.state_dict()) == set(mae.state_dict())  # no extra parameters
    vp.load_state_dict(mae.state_dict())
    x, mask = _batch()
    mae_loss = masked_reconstruction_loss(mae(x, mask).pred, mae.patchify(x), mask, norm_pix_loss=True)
    out = vp(x, mask)
    assert torch.equal(out.pred, mae(x, mask).pred) and out.pyramid_preds == [out.pred]
    assert torch.equal(vpmim_loss(vp, x, mask, None).loss, mae_loss)
    assert torch.equal(vpmim_loss(vp, x, mask, torch.zeros(2, 64)).loss, mae_loss)  # no gaze -> uniform
    uniform = torch.full((2, 64), 1 / 64)
    res = vpmim_loss(vp, x, mask, uniform, alpha=1.0, gamma=2.0)
    assert torch.allclose(res.loss, mae_loss, rtol=1e-6)
    assert set(res.terms) == {"loss", "loss_rec", "loss_rec_unweighted", "gaze_rows"}


@pytest.mark.parametrize("depth,blocks", [(1, (0, 0, 0)), (2, (1, 0, 0))])
def test_pyramid_shapes(depth, blocks):
    torch.manual_seed(0)
    model = VPMIMAutoencoder(**{**TINY, "decoder_depth": depth})
    assert model.source_blocks == blocks and model.pyramid_weights == (1.0, 0.5, 0.25)
    x, mask = _batch(3)
    out = model(x, mask)
    assert isinstance(out, VPMIMOutput) and out.decoder_hidden == []
    assert [tuple(p.shape) for p in out.pyramid_preds] == [(3, 64, 16), (3, 64, 4), (3, 64, 1)]
    assert out.pyramid_preds[0] is out.pred
    assert len(out.pyramid_gates) == 2
    for g in out.pyramid_gates:
        assert g.shape == (3, 64) and bool(((g > 0) & (g < 1)).all())


def test_default_and_custom_source_blocks():
    assert default_source_blocks(3, 8) == (7, 6, 5)
    torch.manual_seed(0)
    model = VPMIMAutoencoder(source_blocks=(-1, -1, 0), **TINY).eval()
    assert model.source_blocks == (1, 1, 0)
    x, mask = _batch()
    out = model(x, mask, return_hidden=True)
    assert len(out.decoder_hidden) == 2
    for head, blk, pred in zip(model.pyramid_heads, (1, 0), out.pyramid_preds[1:]):
        assert torch.allclose(head(out.decoder_hidden[blk])[0], pred)
    for bad in (dict(source_blocks=(0, 1, 1)), dict(source_blocks=(1, 0)), dict(pyramid_scales=(2, 4)),
                dict(pyramid_scales=(1, 3)), dict(pyramid_weights=(1.0, 0.5))):
        with pytest.raises(ValueError):
            VPMIMAutoencoder(**bad, **TINY)


def test_degenerate_scale_warns():
    with pytest.warns(UserWarning, match="constant 0"):
        VPMIMAutoencoder(**TINY)


def test_gate_changes_prediction():
    # The gate sits after the LayerNorm; before it, a per-token scalar would cancel out.
    torch.manual_seed(0)
    model = VPMIMAutoencoder(**TINY).eval()
    x, mask = _batch()
    with torch.no_grad():
        before = model(x, mask).pyramid_preds[1].clone()
        model.pyramid_heads[0].gate.spatial.bias.fill_(-3.0)
        after = model(x, mask).pyramid_preds[1]
    assert not torch.allclose(before, after, atol=1e-3)


def test_gradient_reaches_every_head_and_encoder_stays_timm():
    import timm

    torch.manual_seed(0)
    model = VPMIMAutoencoder(**TINY)
    ref = timm.create_model("vit_tiny_patch16_224", num_classes=0, in_chans=1, img_size=32, **TINY["encoder_kwargs"])
    assert set(model.encoder.state_dict()) == set(ref.state_dict())
    x, mask = _batch()
    vpmim_loss(model, x, mask, torch.rand(2, 64)).loss.backward()
    named = list(model.pyramid_heads.named_parameters()) + list(model.decoder_pred.named_parameters())
    assert len(named) == 2 * 8 + 2  # per head: norm, gate reduce + spatial, pred (weight, bias)
    for name, p in named:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_vpmim_loss_matches_manual_weighted_sum_and_uses_forward():
    torch.manual_seed(0)
    model = VPMIMAutoencoder(norm_pix_loss=False, pyramid_weights=(1.0, 0.3, 0.2), **TINY)
    x, mask = _batch()
    heat = torch.rand(2, 64)
    heat[1] = 0  # second image has no gaze

    calls = []

    class Wrapper(torch.nn.Module):  # stands in for DDP
        def __init__(self, m):
            super().__init__()
            self.module = m

        def forward(self, *a, **k):
            calls.append(1)
            return self.module(*a, **k)

    res = vpmim_loss(model, x, mask, heat, alpha=0.25, gamma=2.0, forward=Wrapper(model))
    assert calls == [1]
    w = gaze_loss_weights(recalibrate_gaze(heat, cls_attention(model.encoder, x), alpha=0.25), gamma=2.0)
    assert torch.equal(w[1], torch.ones(64))
    with torch.no_grad():
        out = model(x, mask)
    targets = pyramid_targets(x, 4, (1, 2, 4))
    parts = [masked_reconstruction_loss(p, t, mask, norm_pix_loss=False, weights=w)
             for p, t in zip(out.pyramid_preds, targets)]
    assert torch.allclose(res.terms["loss_rec"], parts[0], rtol=1e-5)
    assert torch.allclose(res.terms["loss_s2"], parts[1], rtol=1e-5)
    assert torch.allclose(res.terms["loss_s4"], parts[2], rtol=1e-5)
    assert torch.allclose(res.loss, parts[0] + 0.3 * parts[1] + 0.2 * parts[2], rtol=1e-5)
    assert res.terms["gaze_rows"] == 0.5
    assert 0 < res.terms["cls_attn_entropy"] <= 1
    assert not torch.allclose(res.terms["loss_rec"], res.terms["loss_rec_unweighted"])


def test_vpmim_loss_rejects_plain_mae_and_bad_heat():
    torch.manual_seed(0)
    x, mask = _batch()
    with pytest.raises(TypeError):
        vpmim_loss(MaskedAutoencoder(**TINY), x, mask, None)
    with pytest.raises(ValueError):
        vpmim_loss(VPMIMAutoencoder(**TINY), x, mask, torch.rand(2, 63))


def test_vpmim_loss_decreases_when_optimised():
    torch.manual_seed(0)
    model = VPMIMAutoencoder(**{**TINY, "decoder_depth": 1})
    x, mask = _batch(4, seed=3)
    x = F.avg_pool2d(x, 3, stride=1, padding=1)  # some spatial structure to learn
    heat = torch.rand(4, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        res = vpmim_loss(model, x, mask, heat)
        opt.zero_grad()
        res.loss.backward()
        opt.step()
        losses.append(float(res.loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0]
