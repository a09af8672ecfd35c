import math

import pytest
import timm
import torch

from priormim.losses.gaze_weighting import (
    attention_entropy,
    cls_attention,
    gaze_loss_weights,
    normalize_rows,
    recalibrate_gaze,
)

VIT = dict(num_classes=0, in_chans=1, img_size=32, patch_size=4, depth=2, embed_dim=32, num_heads=2)


def _manual_last_block_probs(vit, x):
    """Full attention probabilities [B, h, N, N] of the last block, recomputed from timm's
    own weights with plain matmuls, and checked against timm's attention output."""
    attn = vit.blocks[-1].attn
    seen = {}
    handle = attn.register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0], y=out))
    with torch.no_grad():
        vit.forward_features(x)
    handle.remove()
    a_in, a_out = seen["x"], seen["y"]
    b, n, d = a_in.shape
    h = attn.num_heads
    hd = d // h
    w, bias = attn.qkv.weight, attn.qkv.bias
    q = (a_in @ w[:d].T + bias[:d]).reshape(b, n, h, hd).transpose(1, 2)
    k = (a_in @ w[d : 2 * d].T + bias[d : 2 * d]).reshape(b, n, h, hd).transpose(1, 2)
    v = (a_in @ w[2 * d :].T + bias[2 * d :]).reshape(b, n, h, hd).transpose(1, 2)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(hd)
    probs = torch.exp(logits - logits.amax(-1, keepdim=True))
    probs = probs / probs.sum(-1, keepdim=True)
    # The probabilities are the ones timm used: they reproduce its attention output.
    merged = (probs @ v).transpose(1, 2).reshape(b, n, d)
    assert torch.allclose(attn.proj(merged), a_out, atol=1e-5)
    return probs


@pytest.mark.parametrize("qk_norm,reg_tokens", [(False, 0), (True, 2)])
def test_cls_attention_matches_manual_softmax(qk_norm, reg_tokens):
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", qk_norm=qk_norm, reg_tokens=reg_tokens, **VIT).eval()
    # Make attention far from uniform so a wrong row/column would show.
    with torch.no_grad():
        vit.blocks[-1].attn.qkv.weight.mul_(6.0)
    x = torch.randn(3, 1, 32, 32)
    a = cls_attention(vit, x)
    assert a.shape == (3, 64) and a.dtype == torch.float32
    assert torch.allclose(a.sum(-1), torch.ones(3), atol=1e-6)
    probs = _manual_last_block_probs(vit, x)
    prefix = 1 + reg_tokens
    row = probs[:, :, 0, prefix:]
    expect = (row / row.sum(-1, keepdim=True)).mean(1)
    assert torch.allclose(a, expect, atol=1e-6)
    assert a.max() > 2 * a.min()  # not uniform, so the comparison is meaningful


def test_cls_attention_eval_semantics_and_restores_mode():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", drop_path_rate=0.5, **VIT).train()
    x = torch.randn(2, 1, 32, 32)
    a1, a2 = cls_attention(vit, x), cls_attention(vit, x)
    assert torch.equal(a1, a2)  # no drop-path noise
    assert vit.training and all(m.training for m in vit.modules())
    assert not a1.requires_grad


def test_cls_attention_needs_class_token():
    vit = timm.create_model("vit_tiny_patch16_224", class_token=False, global_pool="avg", **VIT)
    with pytest.raises(ValueError, match="class token"):
        cls_attention(vit, torch.randn(1, 1, 32, 32))


def test_recalibrate_gaze_hand_computed():
    heat = torch.tensor([[1.0, 3.0, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    attn = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    # alpha = 0.5: A~ = 4 A = [0.4, 0.8, 1.2, 1.6]; factor = 0.5 + 0.5 A~ = [0.7, 0.9, 1.1, 1.3]
    out = recalibrate_gaze(heat, attn, alpha=0.5)
    assert torch.allclose(out[0], torch.tensor([0.7, 2.7, 0.0, 5.2]) / 8.6)
    assert torch.equal(out[1], torch.zeros(4))  # no gaze stays no gaze
    assert torch.allclose(recalibrate_gaze(heat, attn, alpha=1.0)[0], torch.tensor([1.0, 3.0, 0.0, 4.0]) / 8)
    assert torch.allclose(recalibrate_gaze(heat, None, alpha=1.0)[0], torch.tensor([1.0, 3.0, 0.0, 4.0]) / 8)
    assert torch.allclose(recalibrate_gaze(heat, attn, alpha=0.0)[0], torch.tensor([0.1, 0.6, 0.0, 1.6]) / 2.3)
    # Attention scale does not matter; an all-zero attention row counts as uniform.
    assert torch.allclose(recalibrate_gaze(heat, 7 * attn, alpha=0.3), recalibrate_gaze(heat, attn, alpha=0.3))
    zero_attn = recalibrate_gaze(heat[:1], torch.zeros(1, 4), alpha=0.2)
    assert torch.allclose(zero_attn, normalize_rows(heat[:1]))


def test_recalibrate_gaze_rejects_bad_input():
    h = torch.ones(1, 4)
    with pytest.raises(ValueError):
        recalibrate_gaze(h, h, alpha=1.5)
    with pytest.raises(ValueError):
        recalibrate_gaze(h, None, alpha=0.5)
    with pytest.raises(ValueError):
        recalibrate_gaze(-h, h)
    with pytest.raises(ValueError):
        recalibrate_gaze(h, torch.ones(1, 5))


def test_gaze_loss_weights_hand_computed_mean_one_and_uniform():
    recal = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.0, 0.0, 0.0, 0.0]])
    w = gaze_loss_weights(recal, gamma=1.0)
    # row 0: L*H' = [2, 2, 0, 0]; 1 + H~ = [3, 3, 1, 1]; mean 2
    assert torch.allclose(w[0], torch.tensor([1.5, 1.5, 0.5, 0.5]))
    assert torch.allclose(w[1:], torch.ones(2, 4))  # uniform heat and no gaze -> MAE
    assert torch.allclose(w.mean(-1), torch.ones(3))
    assert torch.equal(gaze_loss_weights(recal, gamma=0.0), torch.ones(3, 4))
    torch.manual_seed(0)
    r = normalize_rows(torch.rand(5, 49))
    assert torch.allclose(gaze_loss_weights(r, gamma=3.0).mean(-1), torch.ones(5))
    with pytest.raises(ValueError):
        gaze_loss_weights(recal, gamma=-0.5)


@pytest.mark.parametrize("L", [4, 64, 196])
def test_gaze_loss_weights_gamma_is_scale_free(L):
    # Heat spread evenly over half the patches: weights do not depend on the grid size.
    recal = torch.zeros(1, L)
    recal[0, : L // 2] = 1.0 / (L // 2)
    w = gaze_loss_weights(recal, gamma=2.0)
    assert torch.allclose(w[0, : L // 2], torch.full((L // 2,), 5 / 3))
    assert torch.allclose(w[0, L // 2 :], torch.full((L - L // 2,), 1 / 3))


def test_attention_entropy_bounds():
    assert torch.isclose(attention_entropy(torch.full((2, 8), 1 / 8)), torch.tensor(1.0))
    assert torch.isclose(attention_entropy(torch.eye(8)[:2]), torch.tensor(0.0))


def test_cls_attention_float32_under_autocast():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", **VIT)
    x = torch.randn(2, 1, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = cls_attention(vit, x)
    assert a.dtype == torch.float32
    assert torch.allclose(a.sum(-1), torch.ones(2), atol=1e-6)
