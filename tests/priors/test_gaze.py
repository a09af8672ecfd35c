"""Gaze readers (REFLACX / EGD-CXR file formats), heatmaps and the gaze prior cache.

Fixture files are written in the datasets' real layouts and column names (with extra
columns the readers must ignore); expected numbers are worked out in the comments.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from priormim.errors import UserError
from priormim.priors.gaze import (
    Fixations,
    gaze_heatmap,
    gaze_heatmap_stats,
    read_egd,
    read_reflacx,
)
from priormim.priors.gaze_cache import compute_gaze_priors, load_gaze_prior

FIX_HEADER = [
    "timestamp_start_fixation", "timestamp_end_fixation", "x_position", "y_position",
    "pupil_area_normalized", "window_width", "window_level",
    "angular_resolution_x_pixels_per_degree", "angular_resolution_y_pixels_per_degree",
    "xmin_shown_from_image", "ymin_shown_from_image", "xmax_shown_from_image", "ymax_shown_from_image",
    "xmin_in_screen_coordinates", "ymin_in_screen_coordinates", "xmax_in_screen_coordinates",
    "ymax_in_screen_coordinates",
]  # fmt: skip


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def fix_row(t0, t1, x, y, ppd, box) -> list:
    """One REFLACX fixations.csv row (extra columns filled with plausible values)."""
    return [t0, t1, x, y, 1.02, 1.0, 0.5, ppd, ppd, *box, 400, 0, 1500, 1080]


def write_reflacx(root: Path, readings: list[tuple[str, str, tuple[int, int], list[list]]], **kw) -> Path:
    """REFLACX layout: main_data/metadata_phase_3.csv + main_data/<id>/fixations.csv.

    readings: (reading id, dicom_id, (W, H), fixation rows).
    """
    main = root / "main_data"
    header = ["id", "split", "eye_tracking_data_discarded", "image", "dicom_id", "subject_id",
              "image_size_x", "image_size_y", "Atelectasis", "Other"]  # fmt: skip
    meta = [[rid, "train", "False", f"files/{did}.dcm", did, "1", w, h, 0, ""] for rid, did, (w, h), _ in readings]
    _write_csv(main / "metadata_phase_3.csv", header, meta)
    for rid, _, _, rows in readings:
        _write_csv(main / rid / "fixations.csv", kw.get("header", FIX_HEADER), rows)
    return root


# --------------------------------------------------------------------------------------
# REFLACX reader + heatmap
# --------------------------------------------------------------------------------------


def test_single_fixation_peaks_sums_to_one_and_is_zero_outside_shown_box(tmp_path):
    # Original 100 x 80 (W x H); fixation at pixel (30, 20), 1 degree = 3 px, box x 10..60, y 5..50.
    root = write_reflacx(tmp_path, [("P1", "img", (100, 80), [fix_row(1.0, 1.5, 30, 20, 3, (10, 5, 60, 50))])])
    rec = read_reflacx(root)
    assert list(rec.readings) == ["img"] and len(rec.readings["img"][0]) == 1
    heat = gaze_heatmap(rec.readings["img"], out_size=(80, 100))
    assert heat.dtype == np.float32 and heat.shape == (80, 100)
    assert np.unravel_index(heat.argmax(), heat.shape) == (20, 30)
    assert heat.sum() == pytest.approx(1.0, abs=1e-5)
    # Zero outside the shown region [10, 60) x [5, 50).
    assert heat[:, :10].max() == 0 and heat[:, 60:].max() == 0
    assert heat[:5].max() == 0 and heat[50:].max() == 0
    # By hand: the box is >= 5 sigma away, so the peak pixel holds
    # (Phi(0.5/3) - Phi(-0.5/3))^2 = (2 * 0.566198 - 1)^2 = 0.132396^2 = 0.017529.
    assert heat[20, 30] == pytest.approx(0.017529, abs=2e-5)


def test_shown_box_cuts_the_gaussian_then_renormalises():
    # Fixation 1 px left of the box edge's inside: half of it is cut, the rest still sums to 1.
    fix = Fixations(x=[50], y=[50], duration=[1.0], sigma_x=[4], sigma_y=[4],
                    shown_box=[[50, 0, 100, 100]], image_size=(100, 100))  # fmt: skip
    heat = gaze_heatmap([fix], out_size=(100, 100))
    assert heat[:, :50].max() == 0
    assert heat.sum() == pytest.approx(1.0, abs=1e-5)
    # Pixel 50 is the first inside; without the box its mass would be below the peak share.
    assert heat[50].argmax() == 50


def test_duration_weighting_gives_mass_ratio_three(tmp_path):
    rows = [fix_row(0.0, 1.0, 20, 20, 2, (0, 0, 100, 100)), fix_row(2.0, 5.0, 80, 80, 2, (0, 0, 100, 100))]
    rec = read_reflacx(write_reflacx(tmp_path, [("P1", "img", (100, 100), rows)]))
    heat = gaze_heatmap(rec.readings["img"], out_size=(100, 100))
    # Durations 1 s and 3 s, Gaussians 15 sigma apart: masses 1/4 and 3/4.
    near_a, near_b = heat[:50, :50].sum(), heat[50:, 50:].sum()
    assert near_a == pytest.approx(0.25, abs=1e-4)
    assert near_b == pytest.approx(0.75, abs=1e-4)
    assert near_b / near_a == pytest.approx(3.0, rel=1e-3)


def test_readers_are_averaged_with_equal_weight(tmp_path):
    # Two readers of one image, one fixation each; durations differ (1 s, 5 s) but each
    # reading is normalised first, so each gets half the mass.
    box = (0, 0, 100, 100)
    root = write_reflacx(
        tmp_path,
        [("P1", "img", (100, 100), [fix_row(0, 1, 20, 20, 2, box)]),
         ("P2", "img", (100, 100), [fix_row(0, 5, 80, 80, 2, box)])],
    )  # fmt: skip
    rec = read_reflacx(root)
    assert len(rec.readings["img"]) == 2 and rec.n_readings == 2
    res = gaze_heatmap_stats(rec.readings["img"], out_size=(100, 100))
    assert res.n_readings_used == 2 and res.n_fixations == 2
    assert res.heatmap[:50, :50].sum() == pytest.approx(0.5, abs=1e-4)
    assert res.heatmap[50:, 50:].sum() == pytest.approx(0.5, abs=1e-4)
    assert res.heatmap.sum() == pytest.approx(1.0, abs=1e-5)


def test_coordinates_rescale_from_original_size(tmp_path):
    # Original 1000 x 800 -> heatmap 100 x 80: pixel (700, 200) -> centre (70.05, 20.05),
    # so the peak is at row 20, column 70 (a transposed map would put it elsewhere).
    root = write_reflacx(tmp_path, [("P1", "img", (1000, 800), [fix_row(0, 1, 700, 200, 30, (0, 0, 1000, 800))])])
    fixes = read_reflacx(root).readings["img"]
    heat = gaze_heatmap(fixes, out_size=(80, 100))
    assert heat.shape == (80, 100)
    assert np.unravel_index(heat.argmax(), heat.shape) == (20, 70)
    # sigma 30 px original -> 3 px: the row profile's variance is about 3^2 + 1/12.
    col = heat.sum(axis=0)
    mean = (col * (np.arange(100) + 0.5)).sum()
    assert mean == pytest.approx(70.05, abs=0.01)
    assert ((col * (np.arange(100) + 0.5 - mean) ** 2).sum()) == pytest.approx(9 + 1 / 12, rel=0.02)
    # Anisotropic resize to 100 x 40: y scales by 1/20 -> 200.5 / 20 = 10.025, row 10.
    heat = gaze_heatmap(fixes, out_size=(40, 100))
    assert np.unravel_index(heat.argmax(), heat.shape) == (10, 70)


def test_zero_and_negative_duration_and_outside_are_dropped_and_counted(tmp_path):
    box = (0, 0, 100, 100)
    rows = [
        fix_row(1.0, 1.0, 20, 20, 2, box),  # zero duration
        fix_row(2.0, 1.5, 30, 30, 2, box),  # negative duration
        fix_row(3.0, 3.5, 150, 30, 2, box),  # outside the 100 px image
        fix_row(4.0, 4.5, 60, 60, 2, box),  # valid
    ]
    rec = read_reflacx(write_reflacx(tmp_path, [("P1", "img", (100, 100), rows)]))
    assert rec.dropped_nonpositive_duration == 2 and rec.dropped_outside == 1
    assert rec.n_fixations == 1
    res = gaze_heatmap_stats(rec.readings["img"], out_size=(100, 100))
    assert res.dropped_nonpositive_duration == 2 and res.dropped_outside == 1
    assert np.unravel_index(res.heatmap.argmax(), (100, 100)) == (60, 60)


def test_missing_column_raises_user_error_naming_file_and_column(tmp_path):
    header = [c for c in FIX_HEADER if c != "y_position"]
    rows = [[v for c, v in zip(FIX_HEADER, fix_row(0, 1, 5, 5, 2, (0, 0, 10, 10))) if c != "y_position"]]
    write_reflacx(tmp_path, [("P1", "img", (10, 10), rows)], header=header)
    with pytest.raises(UserError) as exc:
        read_reflacx(tmp_path)
    msg = str(exc.value)
    assert "y_position" in msg and str(tmp_path / "main_data" / "P1" / "fixations.csv") in msg


def test_missing_metadata_column_and_missing_metadata(tmp_path):
    _write_csv(tmp_path / "a" / "metadata_phase_1.csv", ["id", "dicom_id", "image_size_x"], [["P1", "x", 10]])
    with pytest.raises(UserError, match="image_size_y"):
        read_reflacx(tmp_path / "a")
    (tmp_path / "b").mkdir()
    with pytest.raises(UserError, match="metadata_phase"):
        read_reflacx(tmp_path / "b")


def test_image_without_valid_fixations_gives_zeros_and_is_counted(tmp_path):
    root = write_reflacx(
        tmp_path,
        [("P1", "empty", (100, 100), []),  # header only
         ("P2", "bad", (100, 100), [fix_row(1, 1, 5, 5, 2, (0, 0, 100, 100))]),  # all dropped
         ("P3", "good", (100, 100), [fix_row(0, 1, 5, 5, 2, (0, 0, 100, 100))])],
    )  # fmt: skip
    rec = read_reflacx(root)
    assert rec.images_without_fixations == 2
    for did in ("empty", "bad"):
        res = gaze_heatmap_stats(rec.readings[did], out_size=(32, 32))
        assert res.empty and res.heatmap.shape == (32, 32) and not res.heatmap.any()
    assert gaze_heatmap([], out_size=(4, 4)).sum() == 0


def test_discarded_readings_and_missing_files_are_counted(tmp_path):
    root = write_reflacx(tmp_path, [("P1", "img", (10, 10), [fix_row(0, 1, 5, 5, 2, (0, 0, 10, 10))])])
    meta = root / "main_data" / "metadata_phase_3.csv"
    with meta.open("a", newline="") as f:
        csv.writer(f).writerows([["P9", "train", "True", "x", "img", "1", 10, 10, 0, ""],
                                 ["P8", "train", "False", "x", "img", "1", 10, 10, 0, ""]])  # fmt: skip
    rec = read_reflacx(root)
    assert rec.readings_discarded == 1 and rec.readings_missing_file == 1 and rec.n_readings == 1


# --------------------------------------------------------------------------------------
# EGD-CXR reader
# --------------------------------------------------------------------------------------


def write_egd(root: Path) -> Path:
    _write_csv(root / "master_sheet.csv", ["dicom_id", "path", "study_id", "Normal"],
               [["a", "p/a.dcm", 1, 0], ["b", "p/b.dcm", 2, 1], ["c", "p/c.dcm", 3, 1]])  # fmt: skip
    header = ["DICOM_ID", "CXR-JPG", "Time (in secs)", "FPOGX", "FPOGY", "FPOGS", "FPOGD", "FPOGID",
              "FPOGV", "X_ORIGINAL", "Y_ORIGINAL"]  # fmt: skip
    rows = [
        ["a", "a.jpg", 0.1, 0.5, 0.5, 0.0, 0.10, 1, 1, 700, 200],  # fixation 1 accumulating ...
        ["a", "a.jpg", 0.4, 0.5, 0.5, 0.0, 0.40, 1, 1, 700, 200],  # ... its final duration 0.4 s
        ["a", "a.jpg", 0.9, 0.9, 0.9, 0.5, 0.30, 2, 1, -1, -1],  # off the image
        ["a", "a.jpg", 1.2, 0.9, 0.9, 0.8, 0.00, 3, 1, 100, 100],  # zero duration
        ["b", "b.jpg", 0.1, 0.0, 0.0, 0.0, 0.50, 1, 1, -1, -1],  # only off-image fixations
    ]
    _write_csv(root / "fixations.csv", header, rows)
    return root


def test_egd_reader_drops_off_image_and_counts(tmp_path):
    rec = read_egd(write_egd(tmp_path), sigma_px=30.0, image_sizes={"a": (1000, 800)})
    assert rec.format == "egd" and set(rec.readings) == {"a", "b", "c"}
    assert rec.dropped_outside == 2 and rec.dropped_nonpositive_duration == 1
    (fa,) = rec.readings["a"]
    assert len(fa) == 1 and fa.duration[0] == pytest.approx(0.4) and fa.sigma_x[0] == 30.0
    assert rec.images_without_fixations == 2  # b (all off the image) and c (no rows)
    heat = gaze_heatmap(rec.readings["a"], out_size=(80, 100))
    assert np.unravel_index(heat.argmax(), heat.shape) == (20, 70)
    assert heat.sum() == pytest.approx(1.0, abs=1e-5)


def test_egd_without_image_size_needs_one(tmp_path):
    rec = read_egd(write_egd(tmp_path))
    assert rec.readings["a"][0].image_size is None
    with pytest.raises(ValueError, match="image_size"):
        gaze_heatmap(rec.readings["a"], out_size=(8, 8))


def test_egd_missing_column_names_file(tmp_path):
    write_egd(tmp_path)
    _write_csv(tmp_path / "fixations.csv", ["DICOM_ID", "FPOGD", "X_ORIGINAL"], [["a", 0.2, 5]])
    with pytest.raises(UserError) as exc:
        read_egd(tmp_path)
    assert "Y_ORIGINAL" in str(exc.value) and "fixations.csv" in str(exc.value)


# --------------------------------------------------------------------------------------
# Cache + CLI
# --------------------------------------------------------------------------------------


def _cache_fixture(tmp_path: Path) -> tuple[Path, Path]:
    box = (0, 0, 1000, 800)
    root = write_reflacx(
        tmp_path / "gaze",
        [("P1", "img1", (1000, 800), [fix_row(0, 1, 700, 200, 30, box)]),
         ("P2", "img1", (1000, 800), [fix_row(0, 1, 300, 600, 30, box), fix_row(1, 1, 5, 5, 30, box)]),
         ("P3", "nofix", (1000, 800), [])],
    )  # fmt: skip
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((40, 50), 128, np.uint8)).save(images / "img1.jpg")  # any size/extension
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(images / "nofix.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(images / "nogaze.png")
    (images / "broken.png").write_bytes(b"not a png")
    return root, images


def test_compute_gaze_priors_caches_resumes_and_counts(tmp_path):
    root, images = _cache_fixture(tmp_path)
    out = tmp_path / "priors"
    s = compute_gaze_priors(format="reflacx", root=root, images=images, out=out, progress=False)
    assert (s.n_images, s.written, s.empty, s.missing_gaze, s.unreadable) == (4, 2, 1, 2, 0)
    # broken.png has no gaze either: it is skipped before being read.
    heat = load_gaze_prior(out, images / "img1.jpg")
    assert heat.shape == (40, 50) and heat.dtype == np.float32
    assert heat.sum() == pytest.approx(1.0, abs=1e-5)
    # Two readers: (700, 200) -> (35.35, 10.05) and (300, 600) -> (15.15, 30.15), half each.
    assert heat[:20, 25:].sum() == pytest.approx(0.5, abs=0.01)
    assert heat[20:, :25].sum() == pytest.approx(0.5, abs=0.01)
    assert not load_gaze_prior(out, images / "nofix.png").any()
    assert load_gaze_prior(out, images / "nogaze.png", missing="none") is None
    with pytest.raises(UserError, match="no gaze prior"):
        load_gaze_prior(out, images / "nogaze.png")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["format"] == "reflacx"
    assert manifest["files"]["img1"]["n_readings"] == 2 and manifest["files"]["img1"]["shape"] == [40, 50]
    assert manifest["files"]["img1"]["dropped_nonpositive_duration"] == 1
    assert manifest["files"]["nogaze"]["status"] == "missing_gaze"
    assert manifest["totals"]["empty"] == 1 and manifest["totals"]["dropped_nonpositive_duration"] == 1

    mtime = (out / "img1.npy").stat().st_mtime_ns
    again = compute_gaze_priors(format="reflacx", root=root, images=images, out=out, progress=False)
    assert (again.written, again.skipped_existing) == (0, 2)
    assert (out / "img1.npy").stat().st_mtime_ns == mtime

    (out / "img1.npy").unlink()  # a lost file is recomputed
    assert compute_gaze_priors(format="reflacx", root=root, images=images, out=out, progress=False).written == 1


def test_unreadable_image_with_gaze_is_counted(tmp_path):
    root, images = _cache_fixture(tmp_path)
    (images / "img1.jpg").write_bytes(b"\xff\xd8 truncated")
    s = compute_gaze_priors(format="reflacx", root=root, images=images, out=tmp_path / "o", progress=False)
    assert s.unreadable == 1 and not (tmp_path / "o" / "img1.npy").exists()


def test_cache_made_with_other_parameters_is_refused(tmp_path):
    root, images = _cache_fixture(tmp_path)
    out = tmp_path / "priors"
    compute_gaze_priors(format="reflacx", root=root, images=images, out=out, progress=False)
    m = json.loads((out / "manifest.json").read_text())
    m["params"]["heatmap_version"] = 0
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="other parameters"):
        compute_gaze_priors(format="reflacx", root=root, images=images, out=out, progress=False)
    assert compute_gaze_priors(format="reflacx", root=root, images=images, out=out, overwrite=True,
                               progress=False).written == 2  # fmt: skip


def test_egd_cache_uses_each_image_size_and_records_sigma(tmp_path):
    root = write_egd(tmp_path / "egd")
    images = tmp_path / "images"
    images.mkdir()
    # EGD-CXR lists no image sizes: coordinates refer to the image as given (1000 x 800).
    Image.fromarray(np.zeros((800, 1000), np.uint8)).save(images / "a.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(images / "b.png")
    out = tmp_path / "o"
    s = compute_gaze_priors(format="egd", root=root, images=images, out=out, sigma_px=40.0, progress=False)
    assert (s.written, s.empty, s.dropped_outside, s.dropped_nonpositive_duration) == (2, 1, 2, 1)
    heat = load_gaze_prior(out, images / "a.png")
    assert np.unravel_index(heat.argmax(), heat.shape) == (200, 700)
    assert json.loads((out / "manifest.json").read_text())["params"]["sigma_px"] == 40.0
    with pytest.raises(UserError, match="other parameters"):
        compute_gaze_priors(format="egd", root=root, images=images, out=out, sigma_px=150.0, progress=False)


def test_register_prior_with_own_parser(tmp_path, capsys):
    from priormim.cli.prior_gaze import register_prior

    root, images = _cache_fixture(tmp_path)
    parser = argparse.ArgumentParser()
    register_prior(parser.add_subparsers(dest="kind"))
    args = parser.parse_args(["gaze", "--format", "reflacx", "--root", str(root), "--images", str(images),
                              "--out", str(tmp_path / "o"), "--quiet"])  # fmt: skip
    assert args.func(args) == 0
    assert "2 without gaze data" in capsys.readouterr().out
    assert (tmp_path / "o" / "img1.npy").exists()
    with pytest.raises(SystemExit):
        parser.parse_args(["gaze", "--format", "dicom", "--root", "r", "--images", "i", "--out", "o"])


@pytest.mark.skipif(
    importlib.util.find_spec("priormim.cli.prior") is None, reason="cli/prior.py (owned by another engineer) not built yet"
)
def test_cli_prior_gaze_end_to_end(tmp_path, capsys):
    from priormim.cli import main

    root, images = _cache_fixture(tmp_path)
    out = tmp_path / "o"
    argv = ["prior", "gaze", "--format", "reflacx", "--root", str(root), "--images", str(images), "--out", str(out)]
    assert main(argv + ["--quiet"]) == 0
    assert load_gaze_prior(out, images / "img1.jpg").sum() == pytest.approx(1.0, abs=1e-5)
    assert main(["prior", "gaze", "--format", "egd", "--root", str(root), "--images", str(images),
                 "--out", str(tmp_path / "e")]) == 2  # fmt: skip
    assert "master_sheet.csv" in capsys.readouterr().err
