"""VP-MIM trains, logs its terms and exports through the same engine as MAE and VasoMIM."""

import pytest
import timm
import torch

from priormim.config import load_config
from priormim.data.synth_cxr import write_synthetic_cxr
from priormim.models.vpmim import VPMIMAutoencoder
from priormim.training.pretrain import build_model, pretrain


@pytest.fixture(scope="module")
def cxr(tmp_path_factory):
    root = tmp_path_factory.mktemp("cxr")
    write_synthetic_cxr(root, n=6, size=64, seed=0, lesion_rate=0.5)
    return root


def _cfg(tiny_overrides, images, *extra):
    return load_config("vpmim", [*tiny_overrides, f"data.images={images}", "model.pyramid_scales=[1, 2]",
                                 "model.pyramid_weights=[1.0, 0.5]", "model.decoder_depth=2", *extra])


def test_vpmim_recipe_builds_pyramid_model(tiny_overrides):
    cfg = load_config("vpmim", tiny_overrides + ["model.pyramid_scales=[1, 2]", "model.pyramid_weights=[1.0, 0.5]"])
    assert isinstance(build_model(cfg), VPMIMAutoencoder)
    assert cfg.masking.name == "gaze" and cfg.gaze_weighting.enabled


def test_vpmim_pretrains_with_gaze_and_exports(cxr, tmp_path, tiny_overrides):
    res = pretrain(_cfg(tiny_overrides, cxr / "images", "optim.epochs=2"), tmp_path / "run")
    h = res.history[-1]
    assert {"loss", "loss_rec", "loss_s2"} <= set(h), h
    assert torch.isfinite(torch.tensor(h["loss"]))
    assert (cxr / "priors" / "gaze").is_dir()  # gaze heatmaps cached from the REFLACX-format files
    enc = timm.create_model("vit_tiny_patch16_224", pretrained=True, in_chans=1, num_classes=0, img_size=32,
                            patch_size=4, depth=2, embed_dim=32, num_heads=2,
                            pretrained_cfg_overlay=dict(file=str(res.encoder_path)))
    assert enc(torch.zeros(1, 1, 32, 32)).shape == (1, 32)


def test_vpmim_without_gaze_falls_back(cxr, tmp_path, tiny_overrides):
    cfg = _cfg(tiny_overrides, cxr / "images", "optim.epochs=1", "data.prior=none", "masking.name=random",
               "masking.kwargs={}", "gaze_weighting.enabled=false")
    assert len(pretrain(cfg, tmp_path / "nogaze").history) == 1
