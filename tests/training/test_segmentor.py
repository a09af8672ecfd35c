"""Segmentor training: the two recipes, the poly schedule, a tiny run that learns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from priormim.data.synth_xca import write_synthetic_xca
from priormim.io import read_gray
from priormim.models.segmentor import load_segmentor
from priormim.training.segmentor import SegmentorTrainConfig, build_scheduler, train_segmentor


def test_official_recipe_is_the_default():
    cfg = SegmentorTrainConfig()
    assert (cfg.recipe, cfg.arch, cfg.epochs, cfg.optimizer, cfg.lr, cfg.schedule) == (
        "official", "unext_s", 200, "adam", 1e-3, "poly")
    assert cfg.crop_scale == (0.2, 1.0) and cfg.hflip and not cfg.vflip
    assert (cfg.bce_weight, cfg.dice_weight) == (0.5, 0.5)


def test_priormim_recipe_is_one_option_away_and_explicit_fields_win():
    old = SegmentorTrainConfig(recipe="priormim")
    assert (old.arch, old.epochs, old.optimizer, old.schedule, old.crop_scale) == ("unet", 30, "adamw", "cosine", (0.3, 1.0))
    assert (old.bce_weight, old.dice_weight, old.base_channels, old.levels) == (1.0, 1.0, 8, 3)
    mixed = SegmentorTrainConfig(epochs=3, arch="unet", vflip=True)
    assert (mixed.epochs, mixed.arch, mixed.vflip, mixed.schedule) == (3, "unet", True, "poly")
    for bad in ({"recipe": "paper"}, {"arch": "vit"}, {"optimizer": "sgd"}, {"schedule": "step"}):
        with pytest.raises(ValueError):
            SegmentorTrainConfig(**bad)


def test_poly_schedule_matches_the_formula():
    lr, total = 1e-3, 37
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = build_scheduler(opt, schedule="poly", total_steps=total)
    seen = {}
    for step in range(total + 1):
        seen[step] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    for step in (0, 1, 10, 18, 36, 37):
        assert seen[step] == pytest.approx(lr * (1 - step / total) ** 0.9, rel=1e-12, abs=1e-15), step
    assert seen[36] > 0 and seen[37] == 0.0


def test_cosine_schedule_for_the_old_recipe():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = build_scheduler(opt, schedule="cosine", total_steps=10)
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5e-3)


@pytest.fixture(scope="module")
def xca64(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seg64")
    write_synthetic_xca(root, n=8, size=64, seed=3)
    return root


def _mask_loader(root: Path):
    return lambda p: (read_gray(root / "masks" / Path(p).name) > 0.5).astype(np.float32)


@pytest.mark.parametrize("recipe", ["official", "priormim"])
def test_tiny_run_lowers_the_loss_and_saves_the_arch(recipe, xca64, tmp_path):
    paths = sorted((xca64 / "images").glob("*.png"))
    cfg = SegmentorTrainConfig(recipe=recipe, epochs=2, batch_size=2, img_size=64, base_channels=4,
                               lr=3e-3, progress=False)
    history: list[float] = []
    out = train_segmentor(cfg, paths=paths, prior_loader=_mask_loader(xca64), out=tmp_path / "s.safetensors",
                          history=history)
    assert len(history) == 2 and all(np.isfinite(history))
    assert history[1] < history[0], history
    seg = load_segmentor(out).eval()
    assert seg.arch == cfg.arch
    with torch.no_grad():
        logits = seg(torch.rand(2, 1, 64, 64))
    assert logits.shape == (2, 1, 64, 64) and torch.isfinite(logits).all()


def test_vertical_flip_option_moves_image_and_prior_together():
    from torchvision import tv_tensors

    from priormim.data.pretrain import paired_train_transform

    img = torch.arange(64.0).reshape(1, 8, 8) / 64
    prior = (img > 0.5).float()
    t = paired_train_transform(8, crop_scale=(1.0, 1.0), hflip=False, vflip=True)
    seen = set()
    torch.manual_seed(0)
    for _ in range(20):
        a, b = t(tv_tensors.Image(img), tv_tensors.Mask(prior))
        flipped = bool(torch.equal(a.as_subclass(torch.Tensor), img.flip(-2)))
        assert flipped or torch.allclose(a.as_subclass(torch.Tensor), img)
        assert torch.equal(b.as_subclass(torch.Tensor), prior.flip(-2) if flipped else prior)
        seen.add(flipped)
    assert seen == {True, False}
