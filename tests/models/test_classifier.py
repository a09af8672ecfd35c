import pytest
import timm
import torch
from torch import nn

from priormim.errors import UserError
from priormim.models.classifier import (
    ClassifierInfo,
    attach_head,
    extract_features,
    load_classifier,
    pooled_features,
    save_classifier,
)
from priormim.models.seg import NormStats

TINY = dict(patch_size=4, depth=2, embed_dim=32, num_heads=2)


def tiny_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, in_chans=1, num_classes=0, img_size=32, **TINY)


def test_linear_head_freezes_encoder_and_matches_forward():
    model = attach_head(tiny_vit(), num_outputs=3, mode="linear", global_pool="token")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.1.weight", "head.1.bias"}
    bn = model.head[0]
    assert isinstance(bn, nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    model.eval()
    x = torch.randn(4, 1, 32, 32)
    logits = model(x)
    assert logits.shape == (4, 3)
    torch.testing.assert_close(model.head(pooled_features(model, x)), logits)


def test_full_head_trains_everything_with_tiny_init():
    model = attach_head(tiny_vit(), num_outputs=2, mode="full", global_pool="avg")
    assert all(p.requires_grad for p in model.parameters())
    assert isinstance(model.head, nn.Linear) and model.head.weight.std() < 1e-3
    assert model.global_pool == "avg"
    # layer-wise lr decay relies on timm's group_matcher still seeing a VisionTransformer
    from timm.optim import create_optimizer_v2

    opt = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    scales = sorted({g["lr_scale"] for g in opt.param_groups})
    assert len(scales) == TINY["depth"] + 2 and scales[-1] == 1.0


def test_extract_features_accepts_uint8_and_is_deterministic():
    model = attach_head(tiny_vit(), num_outputs=2, mode="linear")
    images = torch.randint(0, 256, (5, 1, 32, 32), dtype=torch.uint8)
    norm = NormStats(mean=0.5, std=0.25)
    f1 = extract_features(model, images, norm=norm, batch_size=2)
    f2 = extract_features(model, images.float() / 255.0, norm=norm, batch_size=5)
    assert f1.shape == (5, 32) and f1.dtype == torch.float32
    torch.testing.assert_close(f1, f2)


def test_save_and_load_roundtrip(tmp_path):
    model = attach_head(tiny_vit(), num_outputs=2, mode="full", global_pool="avg").eval()
    info = ClassifierInfo(
        model_name="vit_tiny_patch16_224", model_kwargs=TINY, img_size=32, mode="full", global_pool="avg",
        task="binary", class_names=["NORMAL", "PNEUMONIA"], norm=NormStats(0.4, 0.2),
    )
    path = save_classifier(model, tmp_path / "m.safetensors", info=info)
    loaded, info2 = load_classifier(path)
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))
    assert info2.class_names == ["NORMAL", "PNEUMONIA"] and info2.norm == NormStats(0.4, 0.2)
    with pytest.raises(UserError, match="does not exist"):
        load_classifier(tmp_path / "missing.safetensors")
