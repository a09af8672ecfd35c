"""Synthetic chest X-rays with simulated gaze (VP-MIM's built-in data)."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import time

import numpy as np
import pytest
from PIL import Image

from priormim.data.synth_cxr import LESION_TYPES, ORIGINAL_SIZE, synthesize_cxr, write_synthetic_cxr
from priormim.errors import UserError
from priormim.priors.gaze import gaze_heatmap, read_reflacx


def test_deterministic_per_seed_and_lesion():
    a = synthesize_cxr(size=64, seed=(3, 1), lesion="nodule")
    b = synthesize_cxr(size=64, seed=(3, 1), lesion="nodule")
    c = synthesize_cxr(size=64, seed=(3, 2), lesion="nodule")
    assert np.array_equal(a.image, b.image) and np.array_equal(a.lesion_mask, b.lesion_mask)
    assert len(a.fixations) == len(b.fixations)
    for fa, fb in zip(a.fixations, b.fixations, strict=True):
        assert np.array_equal(fa.x, fb.x) and np.array_equal(fa.duration, fb.duration)
    assert not np.array_equal(a.image, c.image)


def test_anatomy_lesion_and_gaze_do_not_depend_on_size():
    a = synthesize_cxr(size=48, seed=(2, 3), lesion="nodule")
    b = synthesize_cxr(size=96, seed=(2, 3), lesion="nodule")
    ya, xa = np.argwhere(a.lesion_mask).mean(0) / 48
    yb, xb = np.argwhere(b.lesion_mask).mean(0) / 96
    assert abs(ya - yb) < 0.03 and abs(xa - xb) < 0.03
    assert [len(f) for f in a.fixations] == [len(f) for f in b.fixations]
    assert np.abs(a.fixations[0].x - b.fixations[0].x).max() <= 0.02 * ORIGINAL_SIZE


@pytest.mark.parametrize("lesion", [None, *LESION_TYPES])
def test_image_labels_mask_and_scan_path(lesion):
    s = synthesize_cxr(size=96, seed=5, lesion=lesion)
    assert s.image.dtype == np.uint8 and s.image.shape == (96, 96)
    assert s.label == int(lesion is not None) and s.lesion_type == (lesion or "none")
    assert s.lesion_mask.dtype == bool and s.lesion_mask.shape == (96, 96)
    assert s.lesion_mask.any() == (lesion is not None)
    assert 1 <= len(s.fixations) <= 2
    for f in s.fixations:
        assert f.image_size == (ORIGINAL_SIZE, ORIGINAL_SIZE)
        assert (f.duration > 0).all() and len(f) >= 15
        # ~15-20 degrees span the image: sigma (1 degree) ORIGINAL_SIZE / 20 .. / 15 unzoomed.
        assert ORIGINAL_SIZE / 21 <= f.sigma_x.max() <= ORIGINAL_SIZE / 14
        long = f.duration >= 0.58  # 0.6-1.5 s lesion dwells (timestamps are rounded to ms)
        assert long.any() == (lesion is not None)  # long dwell only on lesions
        assert 0.18 <= np.median(f.duration[~long]) <= 0.32  # sweep fixations ~200-300 ms


def test_chest_like_intensity_layout():
    # Averaged over images: lungs (upper lateral) darker than mediastinum and abdomen, air
    # above the shoulders darkest.
    imgs = np.stack([synthesize_cxr(size=64, seed=i).image.astype(float) for i in range(6)]).mean(0)
    lungs = np.r_[imgs[16:32, 12:20].ravel(), imgs[16:32, 44:52].ravel()].mean()
    mediastinum = imgs[16:28, 30:34].mean()
    abdomen = imgs[58:62, 20:44].mean()
    corner = imgs[0:2, 0:4].mean()
    assert corner < lungs < mediastinum and lungs < abdomen
    assert mediastinum - lungs > 40 and abdomen - lungs > 40


def test_gaze_heatmap_favours_lesions():
    for i, lesion in enumerate(LESION_TYPES * 2):
        s = synthesize_cxr(size=64, seed=(11, i), lesion=lesion)
        heat = gaze_heatmap(s.fixations, out_size=s.image.shape)
        assert heat.sum() == pytest.approx(1.0, abs=1e-5)
        per_px_lesion = heat[s.lesion_mask].mean()
        per_px_else = heat[~s.lesion_mask].mean()
        assert per_px_lesion > 2 * per_px_else, lesion


def test_long_fixations_land_on_the_lesion_in_image_coordinates():
    # The scan path is planned on the anatomy and mapped through the image pose: the mean
    # of each reader's long (>= 0.6 s) fixations sits near the lesion's centroid.
    size = 128
    for i in range(9):
        s = synthesize_cxr(size=size, seed=(11, i), lesion=LESION_TYPES[i % 3])
        cy, cx = np.argwhere(s.lesion_mask).mean(0) + 0.5
        radius = np.sqrt(s.lesion_mask.sum() / np.pi)
        for f in s.fixations:
            long = f.duration >= 0.58
            x = ((f.x[long] + 0.5) * size / f.image_size[0]).mean()
            y = ((f.y[long] + 0.5) * size / f.image_size[1]).mean()
            assert np.hypot(x - cx, y - cy) < 0.4 * radius + 1.5, (i, s.lesion_type)


def test_write_synthetic_cxr_files(tmp_path):
    paths = write_synthetic_cxr(tmp_path / "a", n=6, size=64, seed=2, lesion_rate=0.5)
    assert [p.name for p in paths] == [f"cxr_{i:05d}.png" for i in range(6)]
    im = Image.open(paths[0])
    assert im.mode == "L" and im.size == (64, 64)
    with (tmp_path / "a" / "labels.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "label", "lesion_type"]
    assert [r[0] for r in rows[1:]] == [p.name for p in paths]
    for _, label, kind in rows[1:]:
        assert kind in ("none", *LESION_TYPES) and label == str(int(kind != "none"))

    # Gaze files are real REFLACX layout and read back with the REFLACX reader.
    gaze = tmp_path / "a" / "gaze"
    assert (gaze / "main_data" / "metadata_phase_3.csv").is_file()
    rec = read_reflacx(gaze)
    assert sorted(rec.readings) == [p.stem for p in paths]
    assert all(1 <= len(v) <= 2 for v in rec.readings.values())
    assert rec.images_without_fixations == 0
    first = next(iter(rec.readings.values()))[0]
    assert first.image_size == (ORIGINAL_SIZE, ORIGINAL_SIZE)
    rid = first.reading_id
    with (gaze / "main_data" / rid / "fixations.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    start = np.array([float(r["timestamp_start_fixation"]) for r in table])
    end = np.array([float(r["timestamp_end_fixation"]) for r in table])
    assert (np.diff(start) > 0).all() and (end > start).all() and (start[1:] >= end[:-1]).all()
    assert {"pupil_area_normalized", "xmax_in_screen_coordinates"} <= set(table[0])

    # Same seed -> same bytes; the in-memory image matches the file.
    write_synthetic_cxr(tmp_path / "b", n=6, size=64, seed=2, lesion_rate=0.5)
    for p in paths:
        assert p.read_bytes() == (tmp_path / "b" / "images" / p.name).read_bytes()
    assert (tmp_path / "a" / "labels.csv").read_bytes() == (tmp_path / "b" / "labels.csv").read_bytes()


def test_lesion_rate_extremes_and_bad_arguments(tmp_path):
    write_synthetic_cxr(tmp_path / "n", n=4, size=48, lesion_rate=0.0)
    write_synthetic_cxr(tmp_path / "y", n=4, size=48, lesion_rate=1.0)
    for name, want in (("n", {"0"}), ("y", {"1"})):
        with (tmp_path / name / "labels.csv").open(newline="") as f:
            assert {r["label"] for r in csv.DictReader(f)} == want
    with pytest.raises(UserError, match="lesion-rate"):
        write_synthetic_cxr(tmp_path / "x", n=1, lesion_rate=1.5)
    with pytest.raises(UserError, match="lesion type"):
        synthesize_cxr(lesion="tumour")


def test_fast_enough():
    synthesize_cxr(size=128, seed=0, lesion="opacity")  # warm-up
    t = time.perf_counter()
    for i in range(10):
        synthesize_cxr(size=128, seed=(9, i), lesion=LESION_TYPES[i % 3] if i % 2 else None)
    # Target < 0.1 s per image; a loose bound so a busy shared CPU does not fail the test.
    assert (time.perf_counter() - t) / 10 < 0.3


def test_register_synth_with_own_parser(tmp_path, capsys):
    from priormim.cli.synth_cxr import register_synth

    parser = argparse.ArgumentParser()
    register_synth(parser.add_subparsers(dest="kind"))
    args = parser.parse_args(["cxr", "--out", str(tmp_path), "--n", "2", "--size", "48", "--seed", "1"])
    assert args.func(args) == 0 and args.lesion_rate == 0.5
    assert (tmp_path / "images" / "cxr_00001.png").is_file()
    assert "prior gaze --format reflacx" in capsys.readouterr().out


@pytest.mark.skipif(
    importlib.util.find_spec("priormim.cli.synth") is None, reason="cli/synth.py (owned by another engineer) not built yet"
)
def test_cli_synth_cxr_then_prior_gaze_end_to_end(tmp_path):
    from priormim.cli import main
    from priormim.cli.prior_gaze import register_prior
    from priormim.priors.gaze_cache import load_gaze_prior

    d = tmp_path / "cxr"
    assert main(["synth", "cxr", "--out", str(d), "--n", "3", "--seed", "4", "--size", "64"]) == 0
    out = tmp_path / "priors"
    argv = ["gaze", "--format", "reflacx", "--root", str(d / "gaze"), "--images", str(d / "images"),
            "--out", str(out), "--quiet"]  # fmt: skip
    if importlib.util.find_spec("priormim.cli.prior") is not None:
        assert main(["prior", *argv]) == 0
    else:  # cli/prior.py not built yet: the same sub-command through its own parser
        parser = argparse.ArgumentParser()
        register_prior(parser.add_subparsers(dest="kind"))
        args = parser.parse_args(argv)
        assert args.func(args) == 0
    for p in sorted((d / "images").iterdir()):
        heat = load_gaze_prior(out, p)
        assert heat.shape == (64, 64) and heat.sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("lesion", LESION_TYPES)
def test_lesion_match_keeps_draws_and_normal_images(lesion):
    base = synthesize_cxr(size=64, seed=(8, 2), lesion=lesion, lesion_gain=3.0)
    for match in ("histogram", "local"):
        m = synthesize_cxr(size=64, seed=(8, 2), lesion=lesion, lesion_gain=3.0, lesion_match=match)
        assert np.array_equal(m.lesion_mask, base.lesion_mask) and m.label == 1
        for fa, fb in zip(m.fixations, base.fixations, strict=True):
            assert np.array_equal(fa.x, fb.x) and np.array_equal(fa.duration, fb.duration)
        assert not np.array_equal(m.image, base.image)
        normal = synthesize_cxr(size=64, seed=(8, 2), lesion=None, lesion_match=match)
        assert np.array_equal(normal.image, synthesize_cxr(size=64, seed=(8, 2), lesion=None).image)
    with pytest.raises(UserError, match="lesion_match"):
        synthesize_cxr(size=64, seed=0, lesion=lesion, lesion_match="global")


@pytest.mark.parametrize("lesion", LESION_TYPES)
def test_histogram_match_keeps_the_lesion_free_histogram(lesion):
    # lesion_gain=0 renders the same anatomy and imaging chain with a zero-contrast lesion: the
    # lesion-free reference, reached through another code path.
    free = synthesize_cxr(size=64, seed=(8, 3), lesion=lesion, lesion_gain=0.0).image
    plain = synthesize_cxr(size=64, seed=(8, 3), lesion=lesion, lesion_gain=3.0).image
    matched = synthesize_cxr(size=64, seed=(8, 3), lesion=lesion, lesion_gain=3.0, lesion_match="histogram").image
    assert np.array_equal(np.sort(matched.ravel()), np.sort(free.ravel()))
    assert plain.astype(float).sum() > free.astype(float).sum()  # the plain lesion brightens the image


@pytest.mark.parametrize("lesion", LESION_TYPES)
def test_local_match_keeps_the_regional_mean_but_not_the_lesion_texture(lesion):
    from scipy.ndimage import binary_dilation

    from priormim.data.synth_cxr_anatomy import LOCAL_MATCH_SCALE

    size, seed = 96, (8, 4)
    free = synthesize_cxr(size=size, seed=seed, lesion=lesion, lesion_gain=0.0).image.astype(float)
    plain = synthesize_cxr(size=size, seed=seed, lesion=lesion, lesion_gain=3.0)
    local = synthesize_cxr(size=size, seed=seed, lesion=lesion, lesion_gain=3.0, lesion_match="local").image
    d_plain, d_local = plain.image - free, local - free
    # The lesion's region, widened by twice the kept scale: the plain lesion brightens it, the
    # matched one nearly not (what is left: clipping, uint8 rounding, the blur's tails).
    region = binary_dilation(plain.lesion_mask, iterations=round(2 * LOCAL_MATCH_SCALE * size))
    assert d_plain[region].mean() > 4
    assert abs(d_local[region].mean()) < 0.2 * d_plain[region].mean()
    assert abs(d_local.mean()) < 0.01  # the whole image's mean does not move (grey levels)
    assert np.abs(d_local)[plain.lesion_mask].mean() > 2  # but the lesion's edges / texture are there
