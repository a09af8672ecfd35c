"""Tests for the synthetic coronary angiogram generator and ``priormim synth xca``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi
from scipy.stats import spearmanr
from skimage.filters import sato
from skimage.graph import MCP_Geometric
from skimage.measure import label
from skimage.morphology import skeletonize

from priormim.cli import main
from priormim.data.synth_xca import (
    SyntheticAngiogram,
    _render_tubes,
    synthesize_angiogram,
    write_synthetic_xca,
)
from priormim.errors import UserError
from priormim.io import read_gray, read_mask

DCA1 = Path("/work/shared/data/xca_dca1")


def _batch(size: int, n: int = 8, seed: int = 0) -> list[SyntheticAngiogram]:
    return [synthesize_angiogram(size=size, seed=np.random.default_rng([seed, i])) for i in range(n)]


@pytest.fixture(scope="module")
def batch256() -> list[SyntheticAngiogram]:
    return _batch(256)


def test_shapes_and_dtypes():
    for size in (32, 64):
        s = synthesize_angiogram(size=size, seed=1)
        assert s.image.shape == s.mask.shape == (size, size)
        assert s.image.dtype == np.uint8 and s.mask.dtype == np.bool_
        assert s.mask.any() and not s.mask.all()
        assert s.image.std() > 5  # not a flat image


def test_deterministic_per_seed_and_generator():
    a, b = synthesize_angiogram(size=64, seed=3), synthesize_angiogram(size=64, seed=3)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    c = synthesize_angiogram(size=64, seed=4)
    assert (a.image != c.image).mean() > 0.5
    assert not np.array_equal(a.mask, c.mask)
    g = synthesize_angiogram(size=64, seed=np.random.default_rng(3))
    np.testing.assert_array_equal(a.image, g.image)


def test_render_tubes_matches_analytic_chord():
    # A straight horizontal tube at a sub-pixel height: thickness is the cylinder chord.
    y0, r = 10.3, 3.0
    x = np.arange(5.0, 25.0, 0.5)
    pts = np.stack([x, np.full_like(x, y0)], axis=1)
    thick = _render_tubes(pts, np.full(len(x), r), 32)
    rows = np.arange(32.0)
    expected = 2 * np.sqrt(np.clip(r**2 - (rows - y0) ** 2, 0, None))
    np.testing.assert_allclose(thick[:, 15], expected, atol=1e-9)
    assert thick[:, :3].max() == 0 and thick[:, 28:].max() == 0


@pytest.mark.parametrize("size", [128, 256])
def test_vessel_fraction_like_dca1(size, batch256):
    batch = batch256 if size == 256 else _batch(size)
    fractions = np.array([s.mask.mean() for s in batch])
    assert ((fractions >= 0.03) & (fractions <= 0.10)).all(), fractions
    assert 0.04 <= fractions.mean() <= 0.07


def test_vessels_darker_than_surrounding_background(batch256):
    for s in batch256:
        img = s.image.astype(float)
        ring = ndi.binary_dilation(s.mask, iterations=3) & ~s.mask
        assert img[s.mask].mean() < img[ring].mean() - 5  # > 5 grey levels darker


def test_mask_is_one_connected_tree(batch256):
    for s in batch256:
        lab = label(s.mask, connectivity=2)
        largest = np.bincount(lab.ravel())[1:].max()
        assert largest / s.mask.sum() > 0.7


def test_width_tapers_away_from_the_root(batch256):
    # Root = thickest skeleton point; radius should fall with geodesic distance along the tree.
    correlations, ratios = [], []
    for s in batch256[:6]:
        dt = ndi.distance_transform_edt(s.mask)
        skel = skeletonize(s.mask)
        root = np.unravel_index(np.argmax(np.where(skel, dt, 0)), dt.shape)
        geo, _ = MCP_Geometric(np.where(skel, 1.0, np.inf)).find_costs([root])
        ok = skel & np.isfinite(geo)
        g, d = geo[ok], dt[ok]
        correlations.append(spearmanr(g, d)[0])
        near, far = np.quantile(g, [1 / 3, 2 / 3])
        ratios.append(d[g <= near].mean() / d[g >= far].mean())
    assert np.median(correlations) < -0.25, correlations
    # Median, not min: vessels crossing in projection can fuse into thick far-away blobs.
    assert np.median(ratios) > 1.3, ratios
    # Widths like DCA1 (2-8 px at 300 px; skeleton-based width 2 * distance to background).
    widths = np.concatenate(
        [2 * ndi.distance_transform_edt(s.mask)[skeletonize(s.mask)] for s in batch256]
    )
    assert 2.0 <= np.median(widths) <= 8.0 and np.percentile(widths, 95) <= 11.0


def test_write_synthetic_xca_prefix_stable_and_atomic(tmp_path):
    short = write_synthetic_xca(tmp_path / "a", n=2, size=48, seed=5)
    long = write_synthetic_xca(tmp_path / "b", n=3, size=48, seed=5)
    assert [p.name for p in short] == ["xca_00000.png", "xca_00001.png"]
    assert len(long) == 3
    for p in short:
        for sub in ("images", "masks"):
            a, b = tmp_path / "a" / sub / p.name, tmp_path / "b" / sub / p.name
            assert a.read_bytes() == b.read_bytes()
    # Image i is synthesize_angiogram with the (seed, i) generator; files are real 8-bit PNGs.
    ref = synthesize_angiogram(size=48, seed=np.random.default_rng([5, 2]))
    with Image.open(long[2]) as im:
        assert im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), ref.image)
    mask = np.asarray(Image.open(tmp_path / "b" / "masks" / "xca_00002.png"))
    assert set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(read_mask(tmp_path / "b" / "masks" / "xca_00002.png"), ref.mask)
    # Overwriting leaves no temporary files behind.
    write_synthetic_xca(tmp_path / "a", n=1, size=48, seed=6)
    assert sorted(p.name for p in (tmp_path / "a" / "images").iterdir()) == ["xca_00000.png", "xca_00001.png"]


def test_api_rejects_bad_arguments(tmp_path):
    with pytest.raises(UserError, match="n must be >= 1"):
        write_synthetic_xca(tmp_path, n=0)
    with pytest.raises(UserError, match="size must be >= 32"):
        write_synthetic_xca(tmp_path, n=1, size=16)
    with pytest.raises(UserError, match="size must be >= 32"):
        synthesize_angiogram(size=31)


def test_cli_writes_files(tmp_path, capsys):
    out = tmp_path / "xca"
    assert main(["synth", "xca", "--out", str(out), "--n", "3", "--size", "40", "--seed", "2"]) == 0
    images = sorted((out / "images").iterdir())
    assert [p.name for p in images] == [f"xca_{i:05d}.png" for i in range(3)]
    assert sorted(p.name for p in (out / "masks").iterdir()) == [p.name for p in images]
    assert read_gray(images[0]).shape == (40, 40)
    line = capsys.readouterr().out.strip()
    assert "3" in line and str(out) in line and "vessel fraction" in line


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    for bad in (["--n", "0"], ["--size", "16"], ["--seed", "-1"], ["--n", "many"]):
        with pytest.raises(SystemExit) as exc:
            main(["synth", "xca", "--out", str(tmp_path / "x"), *bad])
        assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["synth", "xca", "--n", "2"])  # --out missing
    assert exc.value.code == 2
    blocker = tmp_path / "file.png"
    blocker.write_bytes(b"not a folder")
    assert main(["synth", "xca", "--out", str(blocker), "--n", "1", "--size", "32"]) == 2
    assert "not a folder" in capsys.readouterr().err


@pytest.mark.skipif(not (DCA1 / "images").is_dir(), reason="real DCA1 data not available")
def test_statistics_close_to_real_dca1():
    """Synthetic vs real DCA1 (300 px): intensity, vessel fraction, and a Sato-vesselness baseline."""

    def stats(pairs):
        dice = []
        for img, mask in pairs:
            r = sato(img, sigmas=range(1, 5), black_ridges=True)
            pred = r > np.percentile(r, 92)
            dice.append(2 * (pred & mask).sum() / (pred.sum() + mask.sum()))
        imgs = np.stack([p[0] for p in pairs])
        return imgs.mean(), imgs.std(axis=(1, 2)).mean(), np.mean([p[1].mean() for p in pairs]), np.mean(dice)

    real_files = sorted((DCA1 / "images").glob("*.png"))[:6]
    real = [(read_gray(f), read_mask(DCA1 / "masks" / f.name)) for f in real_files]
    syn = [(s.image / 255.0, s.mask) for s in _batch(300, n=6)]
    r_mean, r_std, r_frac, r_dice = stats(real)
    s_mean, s_std, s_frac, s_dice = stats(syn)
    assert abs(s_mean - r_mean) < 0.08
    assert abs(s_std - r_std) < 0.05
    assert abs(s_frac - r_frac) < 0.025
    assert 0.5 <= s_dice <= 0.75 and abs(s_dice - r_dice) < 0.15
