"""Segmentation fine-tuning harness on tiny synthetic data (dark lines on noise)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from priormim.errors import UserError
from priormim.io import write_png
from priormim.losses.segmentation import bce_dice_loss, soft_dice_loss
from priormim.models.seg import NormStats, ViTSegmenter, create_vit_encoder
from priormim.models.unet import UNet
from priormim.training.finetune_seg import (
    AugmentConfig,
    SegFinetuneConfig,
    SegSample,
    carve_validation,
    evaluate_samples,
    finetune_segmentation,
    fixed_split,
    load_segmenter,
    paired_augment,
    PostProcess,
    pick_threshold,
    predict_logits,
    predict_masks,
    read_label_mask,
    run_vesselness_baseline,
    sliding_window_logits,
)


TINY_VIT = dict(patch_size=4, depth=2, embed_dim=32, num_heads=2)


def line_image(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Dark 2-px lines on a noisy bright background, and their mask."""
    mask = np.zeros((h, w), bool)
    for _ in range(2):
        if rng.random() < 0.5:
            r = int(rng.integers(3, h - 4))
            mask[r : r + 2, :] = True
        else:
            c = int(rng.integers(3, w - 4))
            mask[:, c : c + 2] = True
    image = 0.7 + 0.05 * rng.standard_normal((h, w))
    image[mask] -= 0.35
    return np.clip(image, 0, 1).astype(np.float32), mask


def make_folder(root: Path, n: int, *, h: int = 40, w: int = 36, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        image, mask = line_image(rng, h, w)
        write_png(root / "images" / f"im{i}.png", image)
        write_png(root / "masks" / f"im{i}.png", mask)
    return root


def samples(n: int, h: int = 40, w: int = 36, seed: int = 0) -> list[SegSample]:
    rng = np.random.default_rng(seed)
    return [SegSample(f"s{i}", *line_image(rng, h, w)) for i in range(n)]


# -- splits ------------------------------------------------------------------------------------


def test_fixed_split_is_reproducible_disjoint_and_sized():
    names = [f"train_{i}" for i in range(1, 41)]
    a, b = fixed_split(names, seed=0), fixed_split(list(reversed(names)), seed=0)
    assert a == b
    assert [len(a[k]) for k in ("train", "val", "test")] == [24, 6, 10]
    assert set(a["train"]) | set(a["val"]) | set(a["test"]) == set(names)
    assert not set(a["train"]) & set(a["test"]) and not set(a["val"]) & set(a["test"])
    assert fixed_split(names, seed=1)["test"] != a["test"]
    small = fixed_split(["a", "b", "c"])
    assert all(len(v) == 1 for v in small.values())
    with pytest.raises(UserError):
        fixed_split(["a", "b"])


def test_carve_validation_keeps_at_least_one_each():
    train, val = carve_validation(["a", "b"], fraction=0.2)
    assert len(train) == 1 and len(val) == 1
    train, val = carve_validation([str(i) for i in range(10)], fraction=0.2, seed=3)
    assert len(val) == 2 and not set(train) & set(val)
    with pytest.raises(UserError):
        carve_validation(["only"])


# -- losses and augmentation ---------------------------------------------------------------------


def test_losses_prefer_correct_logits():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:4] = 1
    good = (target * 2 - 1) * 10
    assert soft_dice_loss(good, target) < 0.01
    assert bce_dice_loss(good, target) < bce_dice_loss(-good, target)
    assert bce_dice_loss(good, target.bool()) < 0.05


def test_paired_augment_applies_one_geometry_to_image_and_mask():
    rng = np.random.default_rng(0)
    image, mask = line_image(rng, 32, 32)
    x = torch.from_numpy((~mask).astype(np.float32))[None, None].repeat(6, 1, 1, 1)  # image == not mask
    y = torch.from_numpy(mask)[None, None].repeat(6, 1, 1, 1)
    no_intensity = AugmentConfig(gamma=(1, 1), contrast=(1, 1), brightness=0.0, noise_std=0.0)
    xa, ya = paired_augment(x, y, generator=torch.Generator().manual_seed(0), cfg=no_intensity)
    assert xa.shape == x.shape and ya.dtype == torch.bool
    assert not torch.equal(ya, y)  # something moved
    agree = ((xa < 0.5) == ya).float().mean()
    assert agree > 0.97  # only interpolation edges differ
    xc, yc = paired_augment(x, y, generator=torch.Generator().manual_seed(1), out_size=16)
    assert xc.shape == (6, 1, 16, 16) and yc.shape == (6, 1, 16, 16)
    assert 0 <= float(xc.min()) and float(xc.max()) <= 1


def test_read_label_mask_tolerates_stray_values_but_not_grey_images(tmp_path):
    mask = np.zeros((20, 20), np.uint8)
    mask[5:8] = 255
    mask[0, 0], mask[0, 1] = 3, 230  # JPEG-like strays, as in DCA1's train_29.png
    write_png(tmp_path / "m.png", mask)
    out = read_label_mask(tmp_path / "m.png")
    assert out.dtype == bool and out.sum() == 3 * 20 + 1
    write_png(tmp_path / "g.png", np.linspace(0, 1, 400).reshape(20, 20))
    with pytest.raises(UserError, match="not binary"):
        read_label_mask(tmp_path / "g.png")


# -- training ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["vit", "unet"])
def test_a_few_steps_lower_the_loss(arch):
    from priormim.training.finetune_seg import make_optimizer, stack_resized

    torch.manual_seed(0)
    if arch == "vit":
        enc, _ = create_vit_encoder("vit_tiny_patch16_224", encoder_path=None, img_size=32, model_kwargs=TINY_VIT)
        model, lr = ViTSegmenter(enc, decoder_base=8), 3e-3
    else:
        model, lr = UNet(base_channels=8), 1e-2
    x, y = stack_resized(samples(4, 32, 32), 32)
    x = (x - 0.6) / 0.15
    opt = make_optimizer(model, lr=lr, weight_decay=0.0, layer_decay=None)
    losses = []
    for _ in range(25):
        loss = bce_dice_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.75 * losses[0], losses


def test_predictions_are_mapped_back_to_original_size():
    enc, _ = create_vit_encoder("vit_tiny_patch16_224", encoder_path=None, img_size=32, model_kwargs=TINY_VIT)
    model = ViTSegmenter(enc, decoder_base=8)
    data = samples(3, 40, 36) + samples(1, 25, 50, seed=1)
    out = predict_logits(model, [s.image for s in data], img_size=32, norm=NormStats(0.6, 0.15), batch_size=2)
    assert [o.shape for o in out] == [(40, 36)] * 3 + [(25, 50)]
    summary, per_image = evaluate_samples(model, data, img_size=32, norm=NormStats(0.6, 0.15))
    assert summary["dice"]["n"] == 4 and [r["name"] for r in per_image] == ["s0", "s1", "s2", "s0"]


def tiny_cfg(tmp_path: Path, **kw) -> SegFinetuneConfig:
    base = dict(out=tmp_path / "run", data=make_folder(tmp_path / "data", 8), model="unet", unet_base_channels=4,
                img_size=32, epochs=1, batch_size=2, seeds=(0,), device="cpu")
    return SegFinetuneConfig(**{**base, **kw})


def test_finetune_writes_runs_and_resume_skips_finished_seeds(tmp_path):
    cfg = tiny_cfg(tmp_path)
    first = finetune_segmentation(cfg)
    seed0 = tmp_path / "run" / "seed0"
    for name in ("metrics.json", "model.safetensors", "config.json"):
        assert (seed0 / name).is_file()
    metrics = json.loads((seed0 / "metrics.json").read_text())
    assert metrics["seed"] == 0 and metrics["best_epoch"] == 1 and len(metrics["val_curve"]) == 1
    assert metrics["test"]["summary"]["dice"]["n"] == 2 and len(metrics["test"]["per_image"]) == 2
    assert metrics["config"]["lr"] == 1e-3 and metrics["config"]["img_size"] == 32
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert sorted(r["name"] for r in metrics["test"]["per_image"]) == split["test"]
    assert first.skipped_seeds == [] and first.results_md.is_file()

    before = (seed0 / "metrics.json").read_bytes()
    second = finetune_segmentation(tiny_cfg(tmp_path, seeds=(0, 1)))
    assert second.skipped_seeds == [0]
    assert (seed0 / "metrics.json").read_bytes() == before
    assert (tmp_path / "run" / "seed1" / "metrics.json").is_file()
    assert second.rows[0].n_runs == 2 and second.rows[0].std_over == "seeds"
    assert "± " in second.results_md.read_text()

    # A different split in the same folder is refused rather than mixed.
    with pytest.raises(UserError, match="different train/val/test split"):
        finetune_segmentation(tiny_cfg(tmp_path, split_seed=5))


def test_saved_model_reloads_with_identical_predictions(tmp_path):
    make_folder(tmp_path / "tr", 4)
    make_folder(tmp_path / "te", 2, seed=1)
    cfg = tiny_cfg(tmp_path, data=None, train=tmp_path / "tr", test=tmp_path / "te", model="vit",
                   model_kwargs=TINY_VIT, decoder_base=8)
    result = finetune_segmentation(cfg)
    model, mc = load_segmenter(result.out_dir)  # picks the seed folder
    assert mc["arch"] == "vit" and mc["vit"]["kwargs"]["depth"] == 2 and set(mc["norm"]) == {"mean", "std"}
    metrics = json.loads((result.run_dirs[0] / "metrics.json").read_text())
    assert metrics["data"]["n_val"] == 1 and metrics["data"]["n_train"] == 3  # carved from --train
    assert "carved" in metrics["data"]["source"]["val"]
    from priormim.training.finetune_seg import prepare_data

    test = prepare_data(cfg.resolved()).test
    summary, _ = evaluate_samples(model, test, img_size=32, norm=NormStats(**mc["norm"]), post=PostProcess.from_config(mc))
    assert summary["dice"]["mean"] == pytest.approx(metrics["test"]["summary"]["dice"]["mean"])
    assert mc["postprocess"] == metrics["postprocess"] and metrics["postprocess"]["fov"] == "collimator"
    assert metrics["postprocess"]["threshold"] in [float(t) for t in metrics["val_dice_by_threshold"]]


class _PointwiseRecorder(torch.nn.Module):
    """A per-pixel model (so tiling must not change its output) that records input sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[-2:]))
        return 3.0 * x - 1.0


@pytest.mark.parametrize("h,w,window", [(32, 32, 16), (50, 37, 16), (20, 70, 12), (16, 16, 16)])
def test_sliding_window_matches_a_pointwise_model_on_any_size(h, w, window):
    x = torch.rand(2, 1, h, w, generator=torch.Generator().manual_seed(h * w))
    model = _PointwiseRecorder()
    out = sliding_window_logits(model, x, window=window, batch_size=5)
    assert out.shape == (2, 1, h, w)
    torch.testing.assert_close(out, 3.0 * x - 1.0)
    assert set(model.sizes) == {(window, window)}  # the model only ever sees whole windows


def test_sliding_window_averages_overlapping_tiles():
    class TileMean(torch.nn.Module):  # every pixel of a tile gets the tile's mean
        def forward(self, x):
            return x.mean(dim=(-2, -1), keepdim=True).expand_as(x)

    x = torch.zeros(1, 1, 8, 8)
    x[..., :, 4:] = 1.0  # right half bright
    out = sliding_window_logits(TileMean(), x, window=4, batch_size=3)
    # Tiles start at 0, 2, 4 along each axis; a column is covered by one or two of them.
    # Column 0: tile 0 only (mean 0); column 2: tiles 0 (0) and 2 (0.5); column 5: tiles 2 (0.5) and 4 (1).
    assert out[0, 0, 0, 0] == 0.0
    assert out[0, 0, 0, 2] == pytest.approx(0.25)
    assert out[0, 0, 0, 5] == pytest.approx(0.75)
    assert out[0, 0, 0, 7] == pytest.approx(1.0)


def test_vit_trained_on_windows_predicts_by_windows_after_reload(tmp_path):
    cfg = tiny_cfg(tmp_path, model="vit", model_kwargs=TINY_VIT, decoder_base=8, img_size=32, train_crop=16,
                   epochs=3, val_every=2)
    result = finetune_segmentation(cfg)
    curve = json.loads((result.run_dirs[0] / "metrics.json").read_text())["val_curve"]
    assert [c["val_dice"] is not None for c in curve] == [False, True, True]  # epoch 2, and the last
    model, mc = load_segmenter(result.out_dir)
    assert mc["window"] == 16 and mc["img_size"] == 32
    assert tuple(model.encoder.patch_embed.grid_size) == (4, 4)  # built for the window, not the image
    metrics = json.loads((result.run_dirs[0] / "metrics.json").read_text())
    from priormim.training.finetune_seg import prepare_data

    test = prepare_data(cfg.resolved()).test
    summary, _ = evaluate_samples(model, test, img_size=32, norm=NormStats(**mc["norm"]), window=16, post=PostProcess.from_config(mc))
    assert summary["dice"]["mean"] == pytest.approx(metrics["test"]["summary"]["dice"]["mean"])
    masks = predict_masks(model, [s.image for s in test], mc)  # the path predict / evaluate take
    from priormim.evaluation.metrics import dice_score

    assert np.mean([dice_score(m, s.mask)[0] for m, s in zip(masks, test)]) == pytest.approx(summary["dice"]["mean"])


# -- post-processing ---------------------------------------------------------------------------


def collimated_image(h: int = 40, w: int = 40, r: float = 16.0) -> np.ndarray:
    """Noisy grey disc (the X-ray field) inside flat black corners (the collimator)."""
    yy, xx = np.mgrid[:h, :w]
    inside = (yy - h / 2 + 0.5) ** 2 + (xx - w / 2 + 0.5) ** 2 <= r * r
    noise = np.random.default_rng(0).uniform(0.3, 0.9, (h, w))
    return np.where(inside, noise, 0.0).astype(np.float32)


def test_postprocess_threshold_is_a_probability_cut():
    logits = np.array([[-1.0, 0.1, 0.5, 2.0]], np.float32)
    image = np.random.default_rng(0).uniform(0.2, 0.8, logits.shape).astype(np.float32)
    assert PostProcess(threshold=0.5).apply(logits, image).tolist() == [[False, True, True, True]]
    # logit(0.6) = 0.405, logit(0.7) = 0.847
    assert PostProcess(threshold=0.6).apply(logits, image).tolist() == [[False, False, True, True]]
    assert PostProcess(threshold=0.7).apply(logits, image).tolist() == [[False, False, False, True]]


def test_postprocess_drops_predictions_outside_the_field_of_view():
    image = collimated_image()
    everywhere = np.ones(image.shape, np.float32)
    kept = PostProcess(fov="collimator", fov_margin=0).apply(everywhere, image)
    assert not kept[0, 0] and not kept[-1, -1] and not kept[0, -1]  # flat black corners
    assert kept[20, 20] and kept[20, 6]  # the field, up to near its edge
    assert np.array_equal(kept, image > 0)  # margin 0: exactly the field
    wider = PostProcess(fov="collimator", fov_margin=4).apply(everywhere, image)
    assert wider.sum() < kept.sum() and not (wider & ~kept).any()
    assert PostProcess(fov="none").apply(everywhere, image).all()
    # A precomputed field-of-view mask is used as given (validation computes it once per run).
    post = PostProcess(fov="collimator", fov_margin=0)
    assert np.array_equal(post.apply(everywhere, image, outside=post.outside_fov(image)), kept)
    assert post.apply(everywhere, image, outside=np.zeros(image.shape, bool)).all()
    # An image without a collimator loses nothing.
    plain = np.random.default_rng(1).uniform(0.2, 0.8, image.shape).astype(np.float32)
    assert PostProcess(fov="collimator").apply(everywhere, plain).all()
    # Old configs (no "postprocess" key) keep the old behaviour.
    assert PostProcess.from_config({}) == PostProcess(threshold=0.5, fov="none")


class _ScaledInput(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10.0 * (x - 0.5)


def test_pick_threshold_finds_the_cut_the_labels_were_made_with():
    # logit = 10 (x - 0.5): sigmoid > t  <=>  x > 0.5 + logit(t) / 10; t = 0.65 cuts at 0.5619.
    rng = np.random.default_rng(0)
    val = []
    for i in range(3):
        image = rng.uniform(0, 1, (24, 24)).astype(np.float32)
        val.append(SegSample(f"v{i}", image, image > 0.5619))
    best, scores = pick_threshold(_ScaledInput(), val, post=PostProcess(), img_size=24, norm=NormStats(mean=0.0, std=1.0))
    assert best == 0.65 and scores[0.65] > 0.99 and scores[0.5] < scores[0.6] < scores[0.65] > scores[0.7]
    assert sorted(scores) == [round(0.3 + 0.05 * i, 2) for i in range(14)]  # 0.30 ... 0.95


def test_rescore_repicks_postprocessing_without_retraining(tmp_path):
    first = finetune_segmentation(tiny_cfg(tmp_path, fov="none", threshold=0.5))
    seed0 = first.run_dirs[0]
    weights = (seed0 / "model.safetensors").read_bytes()
    old = json.loads((seed0 / "metrics.json").read_text())
    assert old["postprocess"] == {"threshold": 0.5, "fov": "none", "fov_margin": 8} and old["val_dice_by_threshold"] is None

    finetune_segmentation(tiny_cfg(tmp_path, fov="collimator", threshold=0.7), rescore=True)
    new = json.loads((seed0 / "metrics.json").read_text())
    assert new["postprocess"]["threshold"] == 0.7 and new["postprocess"]["fov"] == "collimator"
    assert json.loads((seed0 / "config.json").read_text())["postprocess"] == new["postprocess"]
    assert new["best_epoch"] == old["best_epoch"] and new["val_curve"] == old["val_curve"]
    model, mc = load_segmenter(seed0)
    from safetensors.torch import load as load_st

    reloaded = load_st(weights)
    assert all(torch.equal(reloaded[k], v) for k, v in model.state_dict().items())  # same weights, not retrained
    # Test-time averaging is inference only: --rescore may switch it on and records it.
    finetune_segmentation(tiny_cfg(tmp_path, fov="collimator", threshold=0.7, tta=True, tta_dihedral=True), rescore=True)
    assert json.loads((seed0 / "config.json").read_text())["tta_dihedral"] is True
    assert json.loads((seed0 / "metrics.json").read_text())["config"]["tta_dihedral"] is True
    # Training settings cannot change under --rescore.
    with pytest.raises(UserError, match="trained with other settings \\(epochs\\)"):
        finetune_segmentation(tiny_cfg(tmp_path, epochs=2), rescore=True)


def test_config_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="--train"):
        SegFinetuneConfig(out=tmp_path).resolved()
    with pytest.raises(UserError, match="unet"):
        SegFinetuneConfig(out=tmp_path, data=tmp_path, model="unet", encoder=tmp_path / "e.safetensors").resolved()
    with pytest.raises(UserError, match="missing: folder not found"):
        finetune_segmentation(SegFinetuneConfig(out=tmp_path / "o", train=tmp_path / "missing", test=tmp_path / "missing_test"))
    with pytest.raises(UserError, match="--train-crop must be between"):
        SegFinetuneConfig(out=tmp_path, data=tmp_path, model="vit", img_size=64, train_crop=96).resolved()
    with pytest.raises(UserError, match="--fov"):
        SegFinetuneConfig(out=tmp_path, data=tmp_path, fov="disc").resolved()
    with pytest.raises(UserError, match="--threshold"):
        SegFinetuneConfig(out=tmp_path, data=tmp_path, threshold=1.0).resolved()


def test_vesselness_baseline_writes_metrics(tmp_path):
    folder = make_folder(tmp_path / "d", 3, h=48, w=48)
    for method in ("sato", "frangi"):
        m = run_vesselness_baseline(folder, tmp_path / method, method, percentile=90, border=2)
        assert m["test"]["summary"]["dice"]["n"] == 3
        assert m["test"]["summary"]["dice"]["mean"] > 0.3  # dark lines on flat noise are easy
        assert (tmp_path / method / "metrics.json").is_file() and (tmp_path / method / "results.md").is_file()
    only = run_vesselness_baseline(folder, tmp_path / "one", names=["im1"])
    assert [r["name"] for r in only["test"]["per_image"]] == ["im1"]
