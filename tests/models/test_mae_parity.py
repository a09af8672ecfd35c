"""The MAE family's encoder equals MAE's: fixed 2-D sin-cos position embedding, MAE's init.

References are derived here from the published definitions (facebookresearch/mae
``util/pos_embed.py`` and ``models_mae.initialize_weights``), not from the code under test.
"""

import math

import numpy as np
import pytest
import timm.optim
import torch

from priormim.config import load_config
from priormim.training.pretrain import build_model

TINY = ["model.encoder_kwargs={patch_size: 8, depth: 2, embed_dim: 32, num_heads: 2}", "model.img_size=32",
        "model.decoder_embed_dim=16", "model.decoder_depth=1", "model.decoder_num_heads=2"]

MAE_FAMILY = ["mae", "vasomim", "vasomim_guidance_only", "vasomim_consistency_only", "vpmim", "amt", "hpm",
              "crossmae", "deblurmim"]


def mae_sincos_reference(embed_dim: int, grid: int) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed(embed_dim, grid, cls_token=True), written from its definition."""
    def one_d(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = pos.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))  # 'xy' indexing
    emb = np.concatenate([one_d(embed_dim // 2, gw), one_d(embed_dim // 2, gh)], axis=1)
    return np.concatenate([np.zeros((1, embed_dim)), emb], axis=0)


@pytest.mark.parametrize("recipe", MAE_FAMILY)
def test_mae_family_encoder_has_frozen_2d_sincos_pos_embed(recipe):
    model = build_model(load_config(recipe, TINY))
    pos = model.encoder.pos_embed
    assert not pos.requires_grad
    ref = mae_sincos_reference(32, 4)
    np.testing.assert_allclose(pos.detach()[0].numpy(), ref, atol=1e-6)
    # Not among the optimised (and so never weight-decayed) parameters.
    opt = timm.optim.create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
    assert all(p is not pos for g in opt.param_groups for p in g["params"])


@pytest.mark.parametrize("recipe,frozen", [("simmim", False), ("dino", False), ("mocov3", True), ("chexworld", True)])
def test_other_methods_follow_their_own_reference(recipe, frozen):
    model = build_model(load_config(recipe, TINY))
    pos = model.encoder.pos_embed
    assert pos.requires_grad is (not frozen)
    if frozen:
        np.testing.assert_allclose(pos.detach()[0].numpy(), mae_sincos_reference(32, 4), atol=1e-6)


def test_encoder_init_override_restores_timm():
    model = build_model(load_config("mae", TINY + ["model.encoder_init=timm"]))
    assert model.encoder.pos_embed.requires_grad


def test_mae_init_statistics_match_xavier_and_normal():
    torch.manual_seed(0)
    model = build_model(load_config("mae", ["model.img_size=64", "model.encoder_kwargs={patch_size: 16, depth: 4}"]))
    enc = model.encoder  # vit_tiny: D = 192
    d = enc.embed_dim
    qkv = enc.blocks[0].attn.qkv.weight.detach()  # Linear(D, 3D): xavier bound sqrt(6 / (D + 3D))
    bound = math.sqrt(6.0 / (d + 3 * d))
    assert float(qkv.abs().max()) <= bound + 1e-7
    assert float(qkv.std()) == pytest.approx(bound / math.sqrt(3), rel=0.03)
    assert float(enc.blocks[0].attn.qkv.bias.detach().abs().max()) == 0.0
    w = enc.patch_embed.proj.weight.detach().flatten(1)  # [D, C*p*p] treated as a Linear
    bound_pe = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
    assert float(w.abs().max()) <= bound_pe + 1e-7
    assert float(w.std()) == pytest.approx(bound_pe / math.sqrt(3), rel=0.1)
    # cls token N(0, 0.02) (timm's own init is 1e-6): one draw of 192 values.
    assert 0.012 < float(enc.cls_token.detach().std()) < 0.028
