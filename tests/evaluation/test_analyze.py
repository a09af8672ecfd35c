"""`priormim analyze`: mechanism metrics under fixed masks shared by every run."""

import json
import math

import numpy as np
import pytest
import torch

from priormim.errors import UserError
from priormim.evaluation import mechanism as M


def test_fixed_masks_are_seeded_saved_and_shared(tmp_path):
    names = [f"im{i}.png" for i in range(5)]
    path = tmp_path / "fm.npz"
    a = M.fixed_masks(path, names, grid=(4, 4), seed=3)
    assert a.shape == (5, 16) and (a.sum(1) == 12).all()  # exactly 75 % hidden per image
    assert path.is_file()
    # a second run asking for a subset, in another order, gets the same rows
    b = M.fixed_masks(path, names[::-1][:3], grid=(4, 4), seed=99)
    assert torch.equal(b, a[[4, 3, 2]])
    assert not torch.equal(a[0], a[1])
    with pytest.raises(UserError, match="patch grid"):
        M.fixed_masks(path, names, grid=(8, 8))
    with pytest.raises(UserError, match="no fixed mask for other.png"):
        M.fixed_masks(path, ["other.png"], grid=(4, 4))
    assert torch.equal(M.draw_fixed_masks(names, grid=(4, 4), seed=3).masks, a)


def test_region_dice_and_psnr_only_count_the_region():
    a = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    b = a.clone()
    region = torch.zeros_like(a)
    region[:, :, :2] = True
    a[0, 0, 0, :2] = True
    b[0, 0, 0, :1] = True
    b[0, 0, 3, :] = True  # outside the region: ignored
    d = M.region_dice(a, b, region)
    assert d[0] == pytest.approx(2 * 1 / 3) and math.isnan(d[1])
    x = torch.zeros(1, 1, 4, 4)
    y = x.clone()
    y[0, 0, 0, 0] = 0.1  # error 0.1 on one of 8 region pixels
    p = M.region_psnr(y, x, region[:1])
    assert p[0] == pytest.approx(10 * math.log10(1 / (0.01 / 8)))
    assert math.isnan(M.region_psnr(y, x, torch.zeros_like(region[:1]))[0])
    p_map = torch.full((1, 1, 4, 4), 0.3)  # never above 0.5: binary Dice is empty, soft Dice is not
    assert math.isnan(M.region_dice(p_map > 0.5, p_map > 0.5, region[:1])[0])
    assert M.region_soft_dice(p_map, p_map, region[:1])[0] == pytest.approx(0.3)


def test_sato_maps_cut_the_reconstruction_at_the_originals_level():
    img = torch.ones(1, 1, 32, 32)
    img[..., 14:17, :] = 0.2  # a dark horizontal vessel
    blurred = torch.full_like(img, float(img.mean()))  # the vessel washed out
    orig, rec = M.sato_maps(img, blurred)
    assert orig[..., 15, 5:27].all() and not rec.any()
    orig2, rec2 = M.sato_maps(img, img.clone())
    assert torch.equal(orig2, rec2)


def test_paired_ci_is_students_t():
    ci = M.paired_ci([0.1, 0.2, 0.3])
    assert ci.mean == pytest.approx(0.2) and ci.n == 3
    assert ci.high - ci.mean == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert not ci.excludes_zero  # n = 3: t = 4.30, the interval is wide
    assert M.paired_ci([0.20, 0.21, 0.22]).excludes_zero
    assert not M.paired_ci([-0.1, 0.2, 0.05]).excludes_zero
    assert M.paired_ci([1.0, float("nan")]).n == 1


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from priormim.config import load_config
    from priormim.data.synth_xca import write_synthetic_xca
    from priormim.training.pretrain import pretrain

    root = tmp_path_factory.mktemp("analyze")
    write_synthetic_xca(root / "pool", n=8, size=48, seed=0)
    write_synthetic_xca(root / "heldout", n=3, size=48, seed=1)
    common = [
        "model.img_size=32", "model.encoder_kwargs={patch_size: 4, depth: 1, embed_dim: 32, num_heads: 2}",
        "model.decoder_embed_dim=16", "model.decoder_depth=1", "model.decoder_num_heads=2",
        "optim.batch_size=4", "optim.warmup_epochs=0", "optim.epochs=1", "data.num_workers=0",
        "train.progress=false", f"data.images={root / 'pool' / 'images'}",
    ]
    pretrain(load_config("vasomim", common + ["consistency.segmentor_epochs=1"]), root / "vasomim")
    pretrain(load_config("mae", common), root / "mae")
    return root


def test_analyze_scores_every_run_on_the_same_masks(two_runs, tmp_path):
    from priormim.cli import main
    from priormim.evaluation.analyze import read_analysis

    images, masks = two_runs / "heldout" / "images", two_runs / "heldout" / "masks"
    seg = two_runs / "vasomim" / "segmentor.safetensors"
    fm = tmp_path / "shared.npz"
    for name in ("vasomim", "mae"):
        assert main(["analyze", str(two_runs / name), "--images", str(images), "--masks", str(masks),
                     "--segmentor", str(seg), "--fixed-masks", str(fm), "--out", str(tmp_path / name),
                     "--draws", "8"]) == 0
    (sv, rv), (sm, rm) = read_analysis(tmp_path / "vasomim"), read_analysis(tmp_path / "mae")
    assert [r["image"] for r in rv] == [r["image"] for r in rm] and len(rv) == 3
    assert sv["fixed_masks"] == sm["fixed_masks"] == str(fm)
    for s in (sv, sm):
        assert set(s["fidelity"]) == {"dice_segmentor", "softdice_segmentor", "dice_sato", "psnr_vessel", "psnr_background", "psnr_hidden"}
        assert 0 <= s["fidelity"]["dice_sato"] <= 1 and s["vessel_source"].startswith("ground truth")
        assert 0 < s["masking"]["vessel_patch_share"] < 1
        assert s["tokens"]["n_patches"] == 3 * 64 and "silhouette" in s["tokens"]
    # MAE's masking is uniform: its hidden-vessel share is the vessel-patch share up to sampling noise;
    # VasoMIM's end-of-training masking is guided toward vessel
    assert sm["masking"]["masking_enrichment_end"] == pytest.approx(1.0, abs=0.2)
    assert sv["masking"]["masked_vessel_share_end"] > sm["masking"]["masked_vessel_share_end"]
    png = tmp_path / "mae" / "reconstructions.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "mae" / "analysis.json").read_text())["protocol"]["fixed_masks"]


def test_analyze_without_masks_or_segmentor_uses_sato(two_runs, tmp_path):
    from priormim.evaluation.analyze import analyze_run

    res = analyze_run(two_runs / "mae", two_runs / "heldout" / "images", tmp_path / "o", n=2, draws=4)
    assert res.summary["vessel_source"] == "Sato on the original"
    assert set(res.summary["fidelity"]) == {"dice_sato", "psnr_vessel", "psnr_background", "psnr_hidden"}
    assert np.isfinite(res.summary["fidelity"]["psnr_hidden"])


def test_analyze_refuses_masks_that_do_not_match(two_runs, tmp_path):
    from priormim.cli import main
    from priormim.io import write_png

    (tmp_path / "m").mkdir()
    write_png(tmp_path / "m" / "unrelated.png", np.zeros((8, 8), np.uint8))
    assert main(["analyze", str(two_runs / "mae"), "--images", str(two_runs / "heldout" / "images"),
                 "--masks", str(tmp_path / "m"), "--out", str(tmp_path / "o")]) == 2


def test_linear_probe_learns_a_token_linear_rule():
    from priormim.evaluation.probe_seg import linear_probe_segmentation

    # tokens whose first channel says "vessel patch": a linear head must recover the masks
    g = torch.Generator().manual_seed(0)
    lab = torch.rand(12, 4, 4, generator=g) > 0.7
    tokens = torch.randn(12, 4, 4, 8, generator=g)
    tokens[..., 0] = lab.float() * 3
    masks = lab.float()[:, None].repeat_interleave(2, 2).repeat_interleave(2, 3)  # patch 2 -> 8 x 8
    full = [m[0].numpy() > 0.5 for m in masks]
    res = linear_probe_segmentation(tokens[:8], masks[:8], tokens[8:10], full[8:10], tokens[10:], full[10:],
                                    patch=2, steps=200)
    assert res.test_dice > 0.95 and res.threshold in (0.3, 0.4, 0.5, 0.6, 0.7)
    noise = linear_probe_segmentation(torch.randn(8, 4, 4, 8, generator=g), masks[:8], tokens[8:10], full[8:10],
                                      torch.randn(2, 4, 4, 8, generator=g), full[10:], patch=2, steps=200)
    assert noise.test_dice < res.test_dice - 0.3
