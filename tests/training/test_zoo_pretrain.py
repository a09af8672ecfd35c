"""Every zoo recipe through the engine: 1 epoch of pretraining, a timm-loadable encoder, and
1 epoch of segmentation fine-tuning on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from priormim.config import load_config
from priormim.errors import UserError
from priormim.io import write_png
from priormim.models.zoo import ZOO_MODELS
from priormim.training.finetune_seg import SegFinetuneConfig, finetune_segmentation
from priormim.training.pretrain import build_model, pretrain

# Tiny heads for the joint-embedding methods; the others run their recipe as it is.
SMALL = {
    "mocov3": ["model.method_kwargs={hidden_dim: 64, out_dim: 32}"],
    "dino": ["model.method_kwargs={out_dim: 64, hidden_dim: 64, bottleneck_dim: 32}"],
    "amt": ["model.method_kwargs={warmup_share: 0.0, throw_ratio: 0.25}"],
}


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory):
    """Six 32-px images with a dark line each, and their masks."""
    root = tmp_path_factory.mktemp("seg")
    rng = np.random.default_rng(0)
    for i in range(6):
        mask = np.zeros((32, 32), bool)
        c = int(rng.integers(4, 26))
        mask[:, c : c + 2] = True
        image = np.clip(0.7 + 0.05 * rng.standard_normal((32, 32)) - 0.35 * mask, 0, 1).astype(np.float32)
        write_png(root / "images" / f"im{i}.png", image)
        write_png(root / "masks" / f"im{i}.png", mask)
    return root


def test_every_zoo_method_has_a_packaged_recipe():
    for name in ZOO_MODELS:
        cfg = load_config(name)
        assert cfg.method == name and cfg.model.encoder == "vit_tiny_patch16_224"
        assert cfg.model.img_size == 224 and cfg.model.in_chans == 1
        assert type(build_model(load_config(name, ["model.encoder_kwargs={depth: 1}"]))) is ZOO_MODELS[name]


@pytest.mark.parametrize("name", sorted(ZOO_MODELS))
def test_pretrain_exports_a_timm_encoder_that_finetunes(name, tiny_overrides, tiny_xca, seg_data, tmp_path):
    prior = "vessel" if name == "amt" else "none"  # one run with priors: masked vessel share is logged
    cfg = load_config(name, [*tiny_overrides, f"data.images={tiny_xca / 'images'}", "optim.epochs=1",
                             f"data.prior={prior}", *SMALL.get(name, [])])
    res = pretrain(cfg, tmp_path / "run")
    h = res.history[-1]
    assert np.isfinite(h["loss"]) and "masked_vessel_share" in h
    if name == "amt":  # attention scores reached the model: patches were thrown
        assert h["thrown_share"] > 0 and h["hard_share"] == 0.5
    rec = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert rec and "loss" in rec[0]

    # Only the encoder is exported, with timm's names: strict load into a fresh timm ViT.
    with safe_open(str(res.encoder_path), "pt") as f:
        meta = f.metadata()
    assert meta["priormim_method"] == name
    state = load_file(str(res.encoder_path))
    enc = timm.create_model(meta["priormim_model_name"], pretrained=False, in_chans=1, num_classes=0,
                            **json.loads(meta["priormim_model_kwargs"]))
    enc.load_state_dict(state, strict=True)
    model = build_model(cfg)
    model.load_state_dict(torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["model"])
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(state[k], v), k
    assert not any(k.startswith(("teacher", "head", "predictor", "loss_head", "mae.")) for k in state)

    seg = finetune_segmentation(SegFinetuneConfig(
        out=tmp_path / "seg", data=seg_data, model="vit", encoder=res.encoder_path, decoder_base=8,
        img_size=32, epochs=1, batch_size=2, seeds=(0,), device="cpu", warmup_epochs=0,
    ))
    metrics = json.loads((seg.run_dirs[0] / "metrics.json").read_text())
    assert np.isfinite(metrics["test"]["summary"]["dice"]["mean"])


def test_zoo_options_are_checked(tiny_overrides):
    with pytest.raises(UserError, match="unknown model.method_kwargs 'blur'.*blur_sigma"):
        build_model(load_config("deblurmim", [*tiny_overrides, "model.method_kwargs={blur: 2}"]))
    with pytest.raises(UserError, match="own loss"):
        build_model(load_config("simmim", [*tiny_overrides, "consistency.enabled=true"]))
    with pytest.raises(UserError, match="method_kwargs is for the zoo"):
        build_model(load_config("mae", [*tiny_overrides, "model.method_kwargs={blur_sigma: 2}"]))
    with pytest.raises(UserError, match="blur_sigma"):
        build_model(load_config("deblurmim", [*tiny_overrides, "model.method_kwargs={blur_sigma: -1}"]))


def test_resume_restores_the_ema_teacher_and_dino_centre(tiny_overrides, tiny_xca, tmp_path):
    import shutil

    ov = [*tiny_overrides, f"data.images={tiny_xca / 'images'}", "optim.epochs=3", "data.prior=none",
          "train.deterministic=true", *SMALL["dino"]]
    full = pretrain(load_config("dino", ov), tmp_path / "full")
    (tmp_path / "part").mkdir()
    shutil.copy(tmp_path / "full" / "checkpoint-0002.ckpt", tmp_path / "part" / "last.ckpt")
    resumed = pretrain(load_config("dino", ov), tmp_path / "part", resume=True)
    assert resumed.history[-1]["loss"] == pytest.approx(full.history[-1]["loss"], rel=1e-5)
    state = torch.load(tmp_path / "part" / "last.ckpt", weights_only=True)["model"]
    assert "center" in state and any(k.startswith("teacher.") for k in state)
