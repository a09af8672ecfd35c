"""Folder cache of vessel priors and the ``priormim prior vessel`` command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from priormim.cli import main
from priormim.errors import UserError
from priormim.priors import (
    compute_vessel_priors,
    ensure_vessel_priors,
    load_prior,
    prior_path,
    read_manifest,
    vessel_mask,
)

FAST = dict(sigmas=(1, 2), border=2, progress=False)  # keep the tests quick


def angiogram(h: int, w: int, seed: int) -> np.ndarray:
    """uint8 image: bright noisy background with two dark curved lines."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = 0.8 + 0.03 * rng.standard_normal((h, w))
    for k in (1, 2):
        centre = h * k / 3 + 4 * np.sin(xx / w * 6 + seed)
        img -= 0.4 * np.exp(-0.5 * ((yy - centre) / (0.8 * k)) ** 2)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    for i in range(3):
        Image.fromarray(angiogram(40, 40, i)).save(d / f"a{i}.png")
    Image.fromarray(angiogram(48, 56, 9)).save(d / "big.png")
    (d / "x.png").write_bytes(b"\x00garbage, not a png" * 10)
    return d


def test_compute_writes_masks_and_manifest(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "priors"
    s = compute_vessel_priors(folder, out, batch_size=2, **FAST)
    assert (s.n_total, s.n_done, s.n_skipped_existing, s.n_failed) == (5, 4, 0, 1)
    assert [p.name for p, _ in s.failed] == ["x.png"] and "x.png" in s.line()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["sigmas"] == [1.0, 2.0] and manifest["params"]["border"] == 2
    assert sorted(manifest["files"]) == ["a0.png", "a1.png", "a2.png", "big.png"]
    for name in ("a0.png", "big.png"):
        src = folder / name
        raw = np.asarray(Image.open(out / name))
        assert raw.dtype == np.uint8 and set(np.unique(raw)) <= {0, 255}
        prior = load_prior(out, src)
        assert prior.shape == np.asarray(Image.open(src)).shape and prior.any()
        entry = manifest["files"][name]
        assert entry["source"] == str(src.resolve()) and entry["source_size"] == src.stat().st_size
        assert entry["vessel_fraction"] == pytest.approx(prior.mean(), abs=1e-6)
        # Same result as calling the library function on the image directly.
        x = torch.from_numpy(np.asarray(Image.open(src), dtype=np.float32) / 255)[None, None]
        direct = vessel_mask(x, sigmas=(1, 2), border=2)[0, 0].numpy()
        assert np.array_equal(prior, direct)
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_rerun_skips_and_recomputes_what_changed(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "priors"
    compute_vessel_priors(folder, out, **FAST)
    s = compute_vessel_priors(folder, out, **FAST)
    assert (s.n_done, s.n_skipped_existing, s.n_failed) == (0, 4, 1)
    # A changed source and a deleted output are redone, nothing else.
    Image.fromarray(angiogram(40, 40, 5)).save(folder / "a1.png")
    os.utime(folder / "a1.png", ns=(1, 1))
    (out / "a2.png").unlink()
    s = compute_vessel_priors(folder, out, **FAST)
    assert (s.n_done, s.n_skipped_existing) == (2, 2)
    # Other parameters: everything is recomputed.
    s = compute_vessel_priors(folder, out, percentile=90, **FAST)
    assert (s.n_done, s.n_skipped_existing) == (4, 0)


def test_ensure_completes_with_the_manifest_parameters(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "priors"
    compute_vessel_priors(folder, out, percentile=90, keep="largest", **FAST)
    (out / "a0.png").unlink()
    s = ensure_vessel_priors(folder, out)
    assert (s.n_done, s.n_skipped_existing) == (1, 3)
    assert read_manifest(out)["params"]["percentile"] == 90.0
    with pytest.raises(TypeError, match="unknown"):
        ensure_vessel_priors(folder, out, threshold=3)


def test_user_errors(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        compute_vessel_priors(tmp_path / "missing", tmp_path / "o", **FAST)
    with pytest.raises(UserError, match="overwrite"):
        compute_vessel_priors(folder, folder, **FAST)
    with pytest.raises(UserError, match="percentile"):
        compute_vessel_priors(folder, tmp_path / "o", percentile=100, **FAST)
    with pytest.raises(UserError, match="device"):
        compute_vessel_priors(folder, tmp_path / "o", device="tpu", **FAST)
    with pytest.raises(UserError, match="no vessel prior"):
        load_prior(tmp_path / "o", folder / "a0.png")
    assert prior_path(tmp_path, "/data/x/case.dcm") == tmp_path / "case.png"


def test_name_clash_is_a_counted_failure(tmp_path: Path) -> None:
    d = tmp_path / "images"
    d.mkdir()
    Image.fromarray(angiogram(32, 32, 0)).save(d / "a.png")
    Image.fromarray(angiogram(32, 32, 1)).save(d / "a.tif")
    s = compute_vessel_priors(d, tmp_path / "out", **FAST)
    assert (s.n_done, s.n_failed) == (1, 1) and "a.png" in s.failed[0][1]


def test_cli_prior_vessel(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = ["prior", "vessel", "--images", str(folder), "--out", str(out), "--sigmas", "1", "2", "--border", "2", "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "4 done, 0 skipped (already up to date), 1 failed (x.png)" in captured.out
    assert "x.png" in captured.err
    assert main(argv) == 0
    assert "0 done, 4 skipped" in capsys.readouterr().out
    assert main(["prior", "vessel", "--images", str(tmp_path / "nope"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("priormim: error:") and "nope" in err and len(err.splitlines()) == 1
