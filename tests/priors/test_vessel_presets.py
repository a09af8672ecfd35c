"""The ``official`` vessel-prior preset against an independent scikit-image/numpy rendering of
the official VasoMIM recipe (XA-SSL ``frangi_filter.py``, ``__main__`` settings: border 20,
percentile 92), and the preset through the prior cache and the CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage as ndi
from skimage.filters import sato

from priormim.cli import main
from priormim.data.synth_xca import synthesize_angiogram
from priormim.io import read_gray, to_uint8
from priormim.priors import (
    component_labels,
    compute_vessel_priors,
    ensure_vessel_priors,
    official_threshold,
    read_manifest,
    vessel_mask,
)

DCA1_IMAGES = Path("/work/shared/data/xca_dca1/images")
CROSS = ndi.generate_binary_structure(2, 1)  # 4-connectivity


def official_levels(img_u8: np.ndarray) -> np.ndarray:
    """Sato response of an 8-bit image, truncated to uint8 as the official code does."""
    return sato(img_u8, sigmas=[1, 2, 3, 4], black_ridges=True, mode="reflect").astype(np.uint8)


def official_from_levels(levels: np.ndarray, *, border: int = 20, percentile: float = 92.0) -> np.ndarray:
    """Border frame zeroed, ``>=`` the percentile kept, then the 4-connected component of the
    non-zero kept pixels that holds the first arg-max pixel."""
    r = levels.copy()
    r[:border, :] = 0
    r[r.shape[0] - border :, :] = 0
    r[:, :border] = 0
    r[:, r.shape[1] - border :] = 0
    kept = np.where(r >= np.percentile(r, percentile), r, 0)
    if not kept.any():
        return np.zeros(kept.shape, dtype=bool)
    lab, _ = ndi.label(kept > 0, structure=CROSS)
    return lab == lab.flat[np.argmax(kept)]


def official_reference(img_u8: np.ndarray) -> np.ndarray:
    return official_from_levels(official_levels(img_u8))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total


def batch(images_u8: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images_u8).astype(np.float32) / 255.0).unsqueeze(1)


def test_official_preset_matches_reference_on_synthetic_angiograms() -> None:
    images = [synthesize_angiogram(size=160, seed=s).image for s in range(4)]
    got = vessel_mask(batch(images))[:, 0].numpy()  # preset="official" is the default
    for i, img in enumerate(images):
        want = official_reference(img)
        assert want.sum() > 50  # the reference finds a tree, so the comparison means something
        assert dice(got[i], want) >= 0.99, i


@pytest.mark.skipif(not DCA1_IMAGES.is_dir(), reason="DCA1 images not available")
def test_official_preset_matches_reference_on_dca1() -> None:
    files = sorted(DCA1_IMAGES.glob("*.png"))[::2]  # 20 of 40, to keep the suite fast
    assert files
    x = torch.from_numpy(np.stack([read_gray(f) for f in files])).unsqueeze(1)
    got = vessel_mask(x, preset="official")[:, 0].numpy()
    scores = {f.name: dice(g, official_reference(np.asarray(Image.open(f).convert("L")))) for f, g in zip(files, got)}
    assert min(scores.values()) >= 0.99, scores


@pytest.mark.parametrize("method", ["torch", "scipy"])
def test_official_threshold_matches_reference_on_grey_level_responses(method: str) -> None:
    # Smooth random responses in grey levels with ties and many zeros: the threshold (>=,
    # after the border), the zeros, the 4-connectivity and the first arg-max all matter.
    rng = np.random.default_rng(5)
    raw = ndi.gaussian_filter(rng.random((5, 90, 84)), sigma=(0, 2, 2))
    raw = np.clip((raw - raw.mean()) * 900 + 6, 0, 60)
    raw[1, 40:44, 40:44] = raw[1].max()  # several pixels share the maximum
    raw[2] = np.floor(raw[2]) + 0.999  # truncation, not rounding
    raw[3, :] = 0.0  # an empty response gives an empty mask
    raw[4, 30, 30:60] = 80.0  # a diagonal-only neighbour must not join the seeded component
    raw[4, 31, 60] = 80.0
    got = official_threshold(torch.from_numpy(raw).unsqueeze(1), method=method)[:, 0].numpy()
    for i in range(len(raw)):
        want = official_from_levels(raw[i].astype(np.uint8))
        assert np.array_equal(got[i], want), i
    assert not got[3].any() and not got[4][31, 60] and got[4][30, 45]
    # The priormim rule keeps the diagonal neighbour (8-connectivity) and uses a strict ">".
    assert np.array_equal(
        component_labels(torch.from_numpy(raw[4:5] > 0).unsqueeze(1), connectivity=8, method=method)[0, 0, 31, 60],
        component_labels(torch.from_numpy(raw[4:5] > 0).unsqueeze(1), connectivity=8, method=method)[0, 0, 30, 59],
    )


def test_component_labels_4_connectivity_torch_equals_scipy() -> None:
    rng = np.random.default_rng(11)
    mask = torch.from_numpy(rng.random((3, 1, 33, 47)) > 0.5)
    a = component_labels(mask, method="torch", connectivity=4)
    b = component_labels(mask, method="scipy", connectivity=4)
    assert torch.equal(a, b)
    for i in range(3):
        lab, n = ndi.label(mask[i, 0].numpy(), structure=CROSS)
        got = a[i, 0].numpy()
        assert len(set(zip(lab[lab > 0].tolist(), got[lab > 0].tolist()))) == n == len(np.unique(got[got > 0]))
    with pytest.raises(ValueError, match="connectivity"):
        component_labels(mask, connectivity=6)


def test_official_preset_quantises_16_bit_input_like_to_uint8(tmp_path: Path) -> None:
    img = synthesize_angiogram(size=128, seed=7).image.astype(np.float64)
    # A 12-bit-in-16 export with a little extra detail between the 8-bit levels.
    wide = np.clip(img * 16 + np.random.default_rng(0).integers(0, 16, img.shape), 0, 4095).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "a.png")
    x = read_gray(tmp_path / "a.png")
    got = vessel_mask(torch.from_numpy(x)[None, None])[0, 0].numpy()
    assert np.array_equal(got, official_reference(to_uint8(x)))


def test_preset_validation_and_priormim_defaults() -> None:
    x = batch([synthesize_angiogram(size=96, seed=1).image])
    with pytest.raises(ValueError, match="preset"):
        vessel_mask(x, preset="vasomim")
    # priormim = its own explicit settings; official + explicit settings follows them too.
    assert torch.equal(
        vessel_mask(x, preset="priormim"), vessel_mask(x, preset="priormim", keep="strongest", collimator=True)
    )
    assert torch.equal(vessel_mask(x), vessel_mask(x, keep="seeded", collimator=False))


# --------------------------------------------------------------------------- cache and CLI

FAST = dict(sigmas=(1, 2), border=2, progress=False)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    for i in range(3):
        Image.fromarray(synthesize_angiogram(size=64, seed=i).image).save(d / f"a{i}.png")
    return d


def test_cache_recomputes_when_the_preset_changes(folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "priors"
    s = compute_vessel_priors(folder, out, **FAST)
    assert s.n_done == 3
    params = read_manifest(out)["params"]
    assert (params["preset"], params["keep"], params["collimator"]) == ("official", "seeded", False)
    with caplog.at_level(logging.WARNING, logger="priormim.priors.cache"):
        s = compute_vessel_priors(folder, out, preset="priormim", **FAST)
    assert (s.n_done, s.n_skipped_existing) == (3, 0)
    assert "preset official; recomputing all with preset priormim" in caplog.text
    params = read_manifest(out)["params"]
    assert (params["preset"], params["keep"], params["collimator"]) == ("priormim", "strongest", True)
    x = torch.from_numpy(read_gray(folder / "a0.png"))[None, None]
    want = vessel_mask(x, sigmas=(1, 2), border=2, preset="priormim")[0, 0].numpy()
    assert np.array_equal(np.asarray(Image.open(out / "a0.png")) > 0, want)
    # ensure_vessel_priors: the same preset completes the cache (keeping its border and
    # sigmas), another preset recomputes it.
    (out / "a1.png").unlink()
    s = ensure_vessel_priors(folder, out, preset="priormim")
    assert (s.n_done, s.n_skipped_existing) == (1, 2)
    assert read_manifest(out)["params"]["sigmas"] == [1.0, 2.0]
    s = ensure_vessel_priors(folder, out)  # default: official
    assert (s.n_done, s.n_skipped_existing) == (3, 0)
    assert read_manifest(out)["params"]["preset"] == "official"


def test_cache_made_before_presets_counts_as_priormim(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "priors"
    compute_vessel_priors(folder, out, preset="priormim", **FAST)
    path = out / "manifest.json"
    data = json.loads(path.read_text())
    del data["params"]["preset"]  # the layout written before presets existed
    path.write_text(json.dumps(data))
    s = compute_vessel_priors(folder, out, preset="priormim", **FAST)
    assert (s.n_done, s.n_skipped_existing) == (0, 3)
    s = compute_vessel_priors(folder, out, **FAST)
    assert (s.n_done, s.n_skipped_existing) == (3, 0)


def test_cli_prior_vessel_preset(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = ["prior", "vessel", "--images", str(folder), "--out", str(out), "--sigmas", "1", "2", "--border", "2",
            "--no-progress"]
    assert main(argv + ["--preset", "priormim", "--no-collimator"]) == 0
    assert "3 done, 0 skipped" in capsys.readouterr().out
    params = read_manifest(out)["params"]
    assert (params["preset"], params["keep"], params["collimator"]) == ("priormim", "strongest", False)
    assert main(argv) == 0  # default preset: official, so everything is recomputed
    assert "3 done, 0 skipped" in capsys.readouterr().out
    assert read_manifest(out)["params"]["preset"] == "official"
    x = torch.from_numpy(read_gray(folder / "a2.png"))[None, None]
    want = vessel_mask(x, sigmas=(1, 2), border=2)[0, 0].numpy()
    assert np.array_equal(np.asarray(Image.open(out / "a2.png")) > 0, want)
    assert main(argv + ["--preset", "official"]) == 0
    assert "0 done, 3 skipped" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(argv + ["--preset", "vasomim"])
    assert "invalid choice" in capsys.readouterr().err
