"""The few-label segmentation recipe: hysteresis, flip TTA, seed ensembles, augmentation,
schedules, soft clDice, native resolution and the ``--recipe strong`` preset."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from priormim.errors import UserError
from priormim.losses.segmentation import soft_cldice_loss
from priormim.models.seg import NormStats
from priormim.training.finetune_seg import (
    STRONG_AUGMENT,
    PostProcess,
    SegSample,
    elastic_grid_offsets,
    ensemble_probabilities,
    dihedral_tta,
    flip_tta,
    gaussian_blur_batch,
    hysteresis_mask,
    make_optimizer,
    make_scheduler,
    paired_augment,
    pick_postprocess,
    predict_logits,
    recipe_config,
    stack_native,
)


def smooth_field(seed: int, h: int = 48, w: int = 40) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(np.random.default_rng(seed).random((h, w)), 2.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hysteresis_matches_skimage_with_4_connectivity(seed):
    from skimage.filters import apply_hysteresis_threshold

    p = smooth_field(seed)
    low, high = np.quantile(p, 0.6), np.quantile(p, 0.9)
    got = hysteresis_mask(p, low=low, high=high, connectivity=1)
    assert got.any() and not got.all()
    np.testing.assert_array_equal(got, apply_hysteresis_threshold(p, low, high))
    assert (hysteresis_mask(p, low=high, high=high) == (p > high)).all()  # one threshold: a plain cut


def test_hysteresis_follows_a_diagonal_branch_and_drops_unseeded_blobs():
    p = np.zeros((12, 12))
    p[0, 0] = 0.9  # strong seed
    for i in range(1, 8):
        p[i, i] = 0.4  # weak one-pixel diagonal branch from the seed
    p[10, 2:5] = 0.4  # weak blob with no strong pixel
    m8 = hysteresis_mask(p, low=0.3, high=0.5)
    assert m8[:8, :8].trace() == 8 and not m8[10].any()
    assert hysteresis_mask(p, low=0.3, high=0.5, connectivity=1).sum() == 1  # 4-connectivity breaks the diagonal
    with pytest.raises(ValueError):
        hysteresis_mask(p, low=0.6, high=0.5)


def test_flip_tta_averages_the_four_flips():
    x = torch.randn(2, 1, 8, 6)
    ramp = torch.arange(6.0).view(1, 1, 1, 6)

    def model(t):  # not flip-equivariant: adds a fixed ramp
        return t + ramp

    got = flip_tta(model, x)
    want = (model(x) + model(x.flip(-1)).flip(-1) + model(x.flip(-2)).flip(-2) + model(x.flip(-1, -2)).flip(-1, -2)) / 4
    assert torch.allclose(got, want)
    assert torch.allclose(got, x + ramp.mean())  # the ramp averages out over the flips
    conv = nn.Conv2d(1, 1, 1)  # a 1x1 conv is flip-equivariant: TTA changes nothing
    assert torch.allclose(flip_tta(conv, x), conv(x), atol=1e-6)


def test_dihedral_tta_averages_the_eight_views():
    x = torch.randn(2, 1, 8, 6)  # not square: the transposed views are 6 x 8

    def model(t):  # neither flip- nor transpose-equivariant: adds a ramp along the last axis
        return t + torch.arange(float(t.shape[-1])).view(1, 1, 1, -1)

    views = []
    for tr in (False, True):
        v = x.transpose(-1, -2) if tr else x
        for dims in ((), (-1,), (-2,), (-1, -2)):
            y = model(v.flip(dims) if dims else v)
            y = y.flip(dims) if dims else y
            views.append(y.transpose(-1, -2) if tr else y)
    got = dihedral_tta(model, x)
    assert torch.allclose(got, torch.stack(views).mean(0))
    # By hand: a ramp j and its flip W-1-j average to (W-1)/2; the transposed views put the
    # ramp along H, giving (H-1)/2: in all x + ((6-1)/2 + (8-1)/2)/2 = x + 3.
    assert torch.allclose(got, x + 3.0)
    conv = nn.Conv2d(1, 1, 1)  # equivariant under the whole dihedral group: TTA changes nothing
    assert torch.allclose(dihedral_tta(conv, x), conv(x), atol=1e-6)


def test_ensemble_probabilities_is_the_mean_sigmoid():
    a, b = np.full((3, 4), 2.0), np.full((3, 4), -1.0)
    got = ensemble_probabilities([a, b])
    assert got.dtype == np.float32 and got.shape == (3, 4)
    assert np.allclose(got, (1 / (1 + math.exp(-2)) + 1 / (1 + math.exp(1))) / 2)
    with pytest.raises(ValueError):
        ensemble_probabilities([])


def test_elastic_offsets_and_per_sample_blur():
    g = torch.Generator().manual_seed(0)
    d = elastic_grid_offsets(3, 32, 24, alpha=4.0, sigma=6.0, generator=g)
    assert d.shape == (3, 32, 24, 2)
    peak_px = (d[..., 0].abs().amax() * 24 / 2).item()
    assert 3.9 < peak_px <= 4.0 + 1e-4
    px = d * torch.tensor([24 / 2, 32 / 2])  # back to pixels
    assert (px[:, 1:] - px[:, :-1]).abs().max() < 1.2  # smooth: neighbours move alike (raw noise: up to 8 px apart)
    x = torch.rand(3, 1, 20, 20)
    y = gaussian_blur_batch(x, torch.tensor([0.0, 1.0, 2.0]))
    assert torch.allclose(y[0], x[0], atol=1e-5)  # sigma 0: unchanged
    assert y[2].std() < y[1].std() < x[1].std()  # more blur, less variance
    assert torch.allclose(y.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.02)


def test_strong_augment_moves_image_and_mask_together():
    m = torch.zeros(6, 1, 64, 64, dtype=torch.bool)
    m[:, :, 20:24, :] = True
    m[:, :, :, 40:43] = True
    x = 0.8 - 0.6 * m.float()
    cfg = replace(STRONG_AUGMENT, gamma=(1, 1), contrast=(1, 1), brightness=0.0, noise_std=0.0, blur_p=0.0, elastic_p=1.0)
    xa, ma = paired_augment(x, m, generator=torch.Generator().manual_seed(0), cfg=cfg, out_size=32)
    assert xa.shape == (6, 1, 32, 32) and ma.dtype == torch.bool
    assert ((xa < 0.5) == ma).float().mean() > 0.97  # geometry shared (bilinear vs nearest differ at edges)
    # Different samples got different geometry (90-degree turns, elastic warps).
    assert len({tuple(ma[i].flatten().tolist()) for i in range(6)}) > 1


def test_soft_cldice_loss_rewards_the_skeleton():
    t = torch.zeros(1, 1, 24, 24)
    t[..., 10:13, 2:22] = 1
    perfect = soft_cldice_loss((t * 2 - 1) * 20, t)
    missed = soft_cldice_loss(torch.full_like(t, -20.0), t)
    assert perfect < 0.05 and missed > 0.8  # (smoothing keeps it just under 1)
    logits = torch.zeros_like(t, requires_grad=True)
    soft_cldice_loss(logits, t).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_poly_schedule_warms_up_then_decays_to_min():
    model = nn.Linear(2, 2)
    opt = make_optimizer(model, lr=1e-2, weight_decay=0.0, layer_decay=None)
    sched = make_scheduler(opt, total_steps=100, warmup_steps=10, min_lr=1e-5, kind="poly")
    lrs = []
    for step in range(1, 111):
        sched.step_update(num_updates=step)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] < lrs[8] < lrs[10] == pytest.approx(1e-2, rel=0.05)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(1e-5, rel=0.05)


class Scale(nn.Module):
    """Logits ``20 * (x - 0.5)`` of the (unnormalised) image: a model with known output."""

    def forward(self, x):
        return 20 * (x - 0.5)


def test_pick_postprocess_chooses_hysteresis_when_it_helps_on_val():
    # A strong trunk (p ~ 1), a connected weak branch (p ~ 0.27) that is vessel, and an
    # isolated weak blob (p ~ 0.27) that is not: only hysteresis gets both right.
    samples = []
    for i in range(2):
        img = np.zeros((24, 24), np.float32)
        mask = np.zeros((24, 24), bool)
        img[4:6, 2:22] = 1.0
        img[6:20, 10 + i : 12 + i] = 0.45
        img[18:21, 2:5] = 0.45
        mask[4:6, 2:22] = True
        mask[6:20, 10 + i : 12 + i] = True
        samples.append(SegSample(name=f"s{i}", image=img, mask=mask))
    kw = dict(img_size=None, norm=NormStats(0.0, 1.0), window=None, tta=True)
    post, scores = pick_postprocess(Scale(), samples, post=PostProcess(fov="none"), hysteresis=True, **kw)
    assert post.low is not None and post.low < 0.27 < post.threshold
    assert max(v for k, v in scores.items() if "/" in k) > max(v for k, v in scores.items() if "/" not in k)
    single, _ = pick_postprocess(Scale(), samples, post=PostProcess(fov="none"), hysteresis=False, **kw)
    assert single.low is None
    assert PostProcess.from_config({"postprocess": post.to_dict()}) == post
    assert PostProcess.from_config({"postprocess": {"threshold": 0.4}}).low is None  # configs before hysteresis


def test_native_prediction_keeps_sizes_and_stacks_pad():
    images = [np.random.default_rng(i).random(s).astype(np.float32) for i, s in enumerate([(20, 18), (20, 18), (16, 22)])]
    out = predict_logits(Scale(), images, img_size=None, norm=NormStats(0.0, 1.0), batch_size=8)
    assert [o.shape for o in out] == [im.shape for im in images]
    assert all(np.allclose(o, 20 * (im - 0.5), atol=1e-5) for o, im in zip(out, images))  # no resampling
    x, m = stack_native([SegSample("a", images[0], images[0] > 0.5), SegSample("b", images[2], images[2] > 0.5)])
    assert x.shape == (2, 1, 20, 22) and m.shape == (2, 1, 20, 22)
    assert not m[1, 0, 16:].any() and torch.equal(x[0, 0, :20, :18], torch.from_numpy(images[0]))


def test_recipe_config_presets_and_overrides(tmp_path):
    strong = recipe_config("strong", model="unet", out=tmp_path, data=tmp_path).resolved()
    assert (strong.native, strong.img_size, strong.train_crop, strong.schedule, strong.tta, strong.hysteresis) == (
        True, None, 128, "poly", True, True)
    assert recipe_config("strong", model="unet", out=tmp_path, data=tmp_path, epochs=3, tta=None).epochs == 3
    default = recipe_config("default", model="unet", out=tmp_path, data=tmp_path)
    assert (default.native, default.schedule, default.augment_level, default.tta) == (False, "cosine", "basic", False)
    with pytest.raises(UserError):
        recipe_config("huge", model="unet", out=tmp_path, data=tmp_path)
    with pytest.raises(UserError, match="train-crop"):
        recipe_config("default", model="vit", native=True, out=tmp_path, data=tmp_path).resolved()


def test_cli_strong_recipe_trains_predicts_at_native_size(tmp_path):
    from priormim.cli import main
    from priormim.io import write_png
    from priormim.training.finetune_seg import load_segmenter, predict_masks

    rng = np.random.default_rng(0)
    for i in range(6):
        mask = np.zeros((30, 26), bool)
        mask[:, 8 + i : 11 + i] = True
        img = np.clip(0.7 - 0.35 * mask + 0.05 * rng.standard_normal(mask.shape), 0, 1).astype(np.float32)
        write_png(tmp_path / "d" / "images" / f"c{i}.png", img)
        write_png(tmp_path / "d" / "masks" / f"c{i}.png", mask)
    out = tmp_path / "run"
    assert main(["finetune", "seg", "--data", str(tmp_path / "d"), "--model", "unet", "--recipe", "strong", "--unet-base", "4",
                 "--train-crop", "16", "--epochs", "2", "--batch-size", "2", "--val-every", "1", "--device", "cpu", "--seeds", "0", "1",
                 "--out", str(out)]) == 0
    cfg = json.loads((out / "seed0" / "config.json").read_text())
    assert cfg["img_size"] is None and cfg["tta"] is True and "threshold" in cfg["postprocess"]
    metrics = json.loads((out / "seed0" / "metrics.json").read_text())
    assert metrics["config"]["recipe"] == "strong" and metrics["config"]["schedule"] == "poly"
    model, mc = load_segmenter(out)
    img = rng.random((30, 26)).astype(np.float32)
    assert predict_masks(model, [img], mc)[0].shape == (30, 26)

    # Seed ensemble: post-processing re-picked on val for the averaged probabilities.
    from priormim.data.readers import read_segmentation_folder
    from priormim.training.finetune_seg import evaluate_seed_ensemble, load_samples

    samples = load_samples(read_segmentation_folder(tmp_path / "d", check_binary=False))
    ens = evaluate_seed_ensemble([out / "seed0", out / "seed1"], samples[:3], samples[3:], device="cpu")
    assert ens["test"]["summary"]["dice"]["n"] == 3 and len(ens["models"]) == 2
    assert 0.3 <= ens["postprocess"]["threshold"] <= 0.7
    with pytest.raises(UserError):
        evaluate_seed_ensemble([], samples[:3], samples[3:])

    # --ensemble on the finished run: seeds are reused (no option conflict), the ensemble is scored
    # on the run's own val / test split and reported beside the per-seed table.
    args = ["finetune", "seg", "--data", str(tmp_path / "d"), "--model", "unet", "--recipe", "strong", "--unet-base", "4",
            "--train-crop", "16", "--epochs", "2", "--batch-size", "2", "--val-every", "1", "--device", "cpu", "--seeds", "0", "1",
            "--out", str(out)]
    assert main([*args, "--ensemble"]) == 0
    split = json.loads((out / "split.json").read_text())
    by_name = {s.name: s for s in samples}
    direct = evaluate_seed_ensemble([out / "seed0", out / "seed1"], [by_name[n] for n in split["val"]],
                                    [by_name[n] for n in split["test"]], device="cpu")
    saved = json.loads((out / "ensemble" / "metrics.json").read_text())
    assert saved["test"]["summary"]["dice"]["n"] == len(split["test"])
    assert saved["test"]["summary"]["dice"]["mean"] == pytest.approx(direct["test"]["summary"]["dice"]["mean"])
    assert "Seed ensemble (mean probability of 2 seeds" in (out / "results.md").read_text()
    assert main(args) == 0  # and without it again: the finished seeds are still reused
