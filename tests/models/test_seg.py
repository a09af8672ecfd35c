"""ViTSegmenter and create_vit_encoder: shapes, encoder files, layer-wise lr decay."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from priormim.errors import UserError
from priormim.models.seg import NormStats, ViTSegmenter, create_vit_encoder, read_encoder_metadata


TINY = dict(patch_size=4, depth=2, embed_dim=32, num_heads=2)


def tiny_vit(img_size: int = 32, **overrides) -> torch.nn.Module:
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, in_chans=1, num_classes=0, img_size=img_size, **{**TINY, **overrides}
    )


def save_encoder(path, model, *, kwargs=None, mean="0.25", std="0.5", method="vasomim"):
    meta = {
        "priormim_model_name": "vit_tiny_patch16_224",
        "priormim_model_kwargs": json.dumps({"img_size": 32, **(kwargs or TINY)}),
        "priormim_norm_mean": mean,
        "priormim_norm_std": std,
        "priormim_method": method,
    }
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    return path


def tiny_segmenter() -> ViTSegmenter:
    encoder, norm = create_vit_encoder(
        "vit_tiny_patch16_224", encoder_path=None, img_size=32, model_kwargs={**TINY, "dynamic_img_size": True}
    )
    assert norm is None
    return ViTSegmenter(encoder, decoder_base=8)


@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (1, 1, 40, 36), (1, 1, 33, 47)])
def test_segmenter_output_matches_input_shape(shape):
    model = tiny_segmenter().eval()
    with torch.no_grad():
        out = model(torch.randn(*shape))
    assert out.shape == shape
    assert torch.isfinite(out).all()


def test_segmenter_patch16_uses_vit_skips_and_stem():
    encoder, _ = create_vit_encoder("vit_tiny_patch16_224", encoder_path=None, img_size=32,
                                    model_kwargs=dict(depth=4, embed_dim=32, num_heads=2))
    model = ViTSegmenter(encoder, decoder_base=4)
    # p = 16: bottleneck (1/16) + ViT skips at 1/8 and 1/4 from shallower blocks; stem at 1/2 and 1.
    assert model.feature_indices == [0, 2, 3]
    assert len(model.vit_skips) == 2 and model.stem_half is not None
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 1, 32, 32)


def test_segmenter_full_resolution_detail_reaches_output():
    """The conv-stem skip makes single-pixel input changes visible at that pixel (not only
    through the 4x4 patch token)."""
    model = tiny_segmenter().eval()
    x = torch.randn(1, 1, 32, 32)
    x2 = x.clone()
    x2[0, 0, 10, 10] += 5.0
    with torch.no_grad():
        diff = (model(x2) - model(x)).abs()[0, 0]
    assert diff[10, 10] > 0
    assert diff[10, 10] >= diff[25:, 25:].max()


def test_load_encoder_with_metadata_resamples_pos_embed(tmp_path):
    torch.manual_seed(0)
    src = tiny_vit(32)
    path = save_encoder(tmp_path / "enc.safetensors", src)
    # The file's name/kwargs override the caller's backbone; img_size stays the caller's.
    model, norm = create_vit_encoder("vit_small_patch16_224", encoder_path=path, img_size=48, drop_path_rate=0.0)
    assert norm == NormStats(mean=0.25, std=0.5)
    assert model.embed_dim == 32 and len(model.blocks) == 2
    assert model.pos_embed.shape == (1, 1 + 12 * 12, 32)
    assert torch.equal(model.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)
    assert torch.allclose(model.pos_embed[:, 0], src.pos_embed[:, 0])  # class token position kept
    assert model(torch.randn(1, 1, 48, 48)).shape == (1, 32)
    meta = read_encoder_metadata(path)
    assert meta.method == "vasomim" and meta.model_kwargs["depth"] == 2


def test_no_encoder_is_random_init_without_norm():
    model, norm = create_vit_encoder("vit_tiny_patch16_224", encoder_path=None, img_size=32, model_kwargs=TINY)
    assert norm is None and model.patch_embed.proj.in_channels == 1


def test_missing_file_is_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist") as err:
        create_vit_encoder("vit_tiny_patch16_224", encoder_path=tmp_path / "nope.safetensors", img_size=32)
    assert "nope.safetensors" in str(err.value)


def test_mismatched_keys_are_user_error(tmp_path):
    # Weights of a 3-block ViT, metadata claiming 2 blocks: unexpected keys.
    path = save_encoder(tmp_path / "bad.safetensors", tiny_vit(32, depth=3))
    with pytest.raises(UserError, match="unexpected: blocks.2") as err:
        create_vit_encoder("vit_tiny_patch16_224", encoder_path=path, img_size=32)
    assert "bad.safetensors" in str(err.value)
    # A wrong width: shapes differ.
    path = save_encoder(tmp_path / "wide.safetensors", tiny_vit(32, embed_dim=48))
    with pytest.raises(UserError, match="bad|match|width"):
        create_vit_encoder("vit_tiny_patch16_224", encoder_path=path, img_size=32)


def test_not_a_safetensors_file_is_user_error(tmp_path):
    path = tmp_path / "enc.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="safetensors"):
        create_vit_encoder("vit_tiny_patch16_224", encoder_path=path, img_size=32)


def test_layer_decay_gives_lower_lr_to_early_blocks():
    from priormim.training.finetune_seg import make_optimizer, make_scheduler

    model = tiny_segmenter()
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    sched = make_scheduler(opt, total_steps=100, warmup_steps=10, min_lr=1e-6)
    sched.step_update(num_updates=10)  # end of warm-up: peak lr times each group's scale
    lr_of = {}
    for group in opt.param_groups:
        for p in group["params"]:
            lr_of[id(p)] = group["lr"]
    named = dict(model.named_parameters())
    stem = lr_of[id(named["encoder.patch_embed.proj.weight"])]
    b0 = lr_of[id(named["encoder.blocks.0.attn.qkv.weight"])]
    b1 = lr_of[id(named["encoder.blocks.1.attn.qkv.weight"])]
    dec = lr_of[id(named["head.weight"])]
    assert stem < b0 < b1 < dec
    assert dec == pytest.approx(1e-3)
    assert b1 == pytest.approx(0.5e-3) and b0 == pytest.approx(0.25e-3)
    # pos_embed gets no weight decay (wrapper forwards the encoder's no_weight_decay list).
    wd = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert wd[id(named["encoder.pos_embed"])] == 0.0 and wd[id(named["head.weight"])] == 0.05
