"""Torch Sato vesselness against scikit-image, and the vessel mask against scipy labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from skimage.filters import sato

from priormim.priors import (
    collimator_mask,
    component_labels,
    effective_border,
    threshold_vesselness,
    vessel_mask,
    vesselness,
)

DCA1 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "xca_dca1"
EIGHT = np.ones((3, 3), dtype=bool)


def tubes(h: int = 80, w: int = 72, seed: int = 0, noise: float = 0.02) -> np.ndarray:
    """Bright background with a few dark curved lines of different widths, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = 0.75 + 0.1 * xx / w  # gentle illumination gradient
    for k, width in enumerate((1.0, 2.0, 3.5)):
        phase = rng.uniform(0, 2 * np.pi)
        centre = h * (0.25 + 0.25 * k) + 6 * np.sin(xx / w * 2 * np.pi + phase)
        img -= 0.35 * np.exp(-0.5 * ((yy - centre) / width) ** 2)
    img += noise * rng.standard_normal((h, w))
    return img.astype(np.float32)


def as_batch(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).unsqueeze(1)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("black_ridges", [True, False])
def test_vesselness_matches_skimage(black_ridges: bool) -> None:
    img = tubes()
    ref = sato(img, sigmas=(1, 2, 3, 4), black_ridges=black_ridges, mode="reflect")
    out = vesselness(as_batch(img), sigmas=(1, 2, 3, 4), black_ridges=black_ridges)[0, 0].numpy()
    assert pearson(out, ref) > 0.9999
    # Same kernels, truncation and borders: equal up to float32 rounding, edges included.
    assert np.abs(out - ref).max() <= 1e-5 * ref.max()


@pytest.mark.parametrize("shape", [(7, 10), (23, 40)])
def test_vesselness_matches_skimage_on_tiny_images(shape: tuple[int, int]) -> None:
    # Kernels longer than the image: the symmetric reflection has to repeat.
    img = np.random.default_rng(1).random(shape).astype(np.float32)
    ref = sato(img, sigmas=(1, 1.5, 3), mode="reflect")
    out = vesselness(as_batch(img), sigmas=(1, 1.5, 3))[0, 0].numpy()
    assert np.abs(out - ref).max() <= 1e-5 * ref.max()


def test_black_ridges_selects_dark_lines() -> None:
    img = tubes(noise=0.0)
    x = as_batch(img)
    dark = vesselness(x, black_ridges=True)
    bright = vesselness(x, black_ridges=False)
    on_line = torch.from_numpy(img < 0.6)[None, None]  # centres of the dark lines
    assert dark[on_line].mean() > 10 * bright[on_line].mean()
    # Bright-ridge filtering of x is dark-ridge filtering of the inverted image.
    torch.testing.assert_close(bright, vesselness(1.0 - x, black_ridges=True), atol=1e-5, rtol=0)


def test_batch_equals_single_images() -> None:
    imgs = [tubes(seed=s) for s in range(3)]
    batched = vesselness(as_batch(*imgs))
    for i, img in enumerate(imgs):
        torch.testing.assert_close(batched[i : i + 1], vesselness(as_batch(img)), atol=1e-6, rtol=0)


def test_dtype_shape_and_errors() -> None:
    x = as_batch(tubes()).double()
    out = vesselness(x, sigmas=(2,))
    assert out.dtype == torch.float64 and out.shape == x.shape
    assert (out >= 0).all()
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        vesselness(x[0])
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        vesselness(x.expand(1, 2, -1, -1))
    with pytest.raises(ValueError, match="floating"):
        vesselness((x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="positive"):
        vesselness(x, sigmas=(0,))
    with pytest.raises(ValueError, match="keep"):
        threshold_vesselness(x, keep="biggest")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    x = as_batch(tubes(), tubes(seed=3))
    torch.testing.assert_close(vesselness(x.cuda()).cpu(), vesselness(x), atol=1e-5, rtol=0)
    for keep in ("strongest", "seeded", "largest"):
        kw = dict(border=4, keep=keep, preset="priormim")
        assert torch.equal(vessel_mask(x.cuda(), **kw).cpu(), vessel_mask(x, **kw)), keep
        # official: float64 on CUDA, float32 on CPU; a level can flip where a response sits
        # within rounding error of a whole grey level, so allow a handful of pixels.
        kw["preset"] = "official"
        assert (vessel_mask(x.cuda(), **kw).cpu() != vessel_mask(x, **kw)).sum() <= 5, keep


def _reference_keep(resp: np.ndarray, mask: np.ndarray, keep: str) -> np.ndarray:
    """Independent per-image reference with scipy.ndimage."""
    lab, n = ndi.label(mask, structure=EIGHT)
    if n == 0:
        return np.zeros_like(mask)
    if keep == "seeded":
        chosen = lab.flat[np.argmax(np.where(mask, resp, -np.inf))]
    elif keep == "largest":
        chosen = 1 + int(np.argmax(ndi.sum_labels(np.ones_like(resp), lab, np.arange(1, n + 1))))
    else:
        chosen = 1 + int(np.argmax(ndi.sum_labels(resp, lab, np.arange(1, n + 1))))
    return lab == chosen


def test_keep_modes_on_hand_made_response() -> None:
    resp = np.zeros((48, 48), dtype=np.float32)
    resp[5:15, 5:15] = 1.0  # A: largest (100 px + tail), sum 100 + tail
    for i in range(6):  # A's tail touches it only diagonally (8-connectivity)
        resp[15 + i, 15 + i] = 1.0
    resp[30:33, 5:8] = 5.0  # B: holds the strongest pixel (9 px, sum 45)
    resp[40, 4:44] = 3.0  # C: strongest total (40 px, sum 120)
    x = as_batch(resp)
    kw = dict(percentile=50, border=0)  # > 90% zeros: the threshold is 0, all blobs kept
    a = np.zeros_like(resp, dtype=bool)
    a[5:15, 5:15] = True
    a[np.arange(15, 21), np.arange(15, 21)] = True
    expect = {"largest": a, "seeded": resp == 5.0, "strongest": resp == 3.0, "all": resp > 0}
    for keep, want in expect.items():
        for method in ("torch", "scipy"):
            got = threshold_vesselness(x, keep=keep, method=method, **kw)[0, 0].numpy()
            assert np.array_equal(got, want), (keep, method)


@pytest.mark.parametrize("keep", ["seeded", "largest", "strongest"])
def test_keep_modes_match_scipy_reference(keep: str) -> None:
    rng = np.random.default_rng(7)
    resp = ndi.gaussian_filter(rng.random((4, 40, 52)), sigma=(0, 1.5, 1.5)).astype(np.float32)
    x = torch.from_numpy(resp).unsqueeze(1)
    thr = np.percentile(resp.reshape(4, -1), 70, axis=1)
    for method in ("torch", "scipy"):
        got = threshold_vesselness(x, percentile=70, border=0, keep=keep, method=method)[:, 0].numpy()
        for i in range(4):
            want = _reference_keep(resp[i], resp[i] > thr[i], keep)
            assert np.array_equal(got[i], want), (keep, method, i)


def test_component_labels_torch_equals_scipy_partition() -> None:
    rng = np.random.default_rng(3)
    mask = torch.from_numpy(rng.random((3, 1, 37, 41)) > 0.55)
    a = component_labels(mask, method="torch")
    b = component_labels(mask, method="scipy")
    assert torch.equal(a, b)
    for i in range(3):
        lab, n = ndi.label(mask[i, 0].numpy(), structure=EIGHT)
        got = a[i, 0].numpy()
        assert len(np.unique(got[got > 0])) == n
        assert len(set(zip(lab[lab > 0].tolist(), got[lab > 0].tolist()))) == n  # same partition


def test_percentile_threshold_fraction_and_border() -> None:
    resp = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    mask = threshold_vesselness(resp, percentile=92, border=0, keep="all")
    thr = np.percentile(resp.numpy().reshape(2, -1), 92, axis=1)
    assert np.array_equal(mask.numpy(), resp.numpy() > thr[:, None, None, None])
    frac = mask.float().mean(dim=(1, 2, 3))
    assert torch.allclose(frac, torch.full((2,), 0.08), atol=0.002)
    framed = threshold_vesselness(resp, percentile=92, border=5, keep="all")
    assert not framed[..., :5, :].any() and not framed[..., -5:, :].any()
    assert not framed[..., :5].any() and not framed[..., -5:].any()
    assert torch.equal(framed[..., 5:-5, 5:-5], mask[..., 5:-5, 5:-5])
    # A 20-px border on a 32-px image is clamped below a quarter of the side.
    assert effective_border(20, 32, 40) == 7 and effective_border(20, 300, 300) == 20
    small = threshold_vesselness(resp[..., :32, :32], border=20, keep="all")
    assert small[..., 7:-7, 7:-7].any() and not small[..., :7, :].any()


def test_collimator_mask_finds_flat_frame_regions() -> None:
    img = tubes(96, 96, noise=0.02)
    yy, xx = np.mgrid[0:96, 0:96]
    outside = (yy - 48) ** 2 + (xx - 48) ** 2 > 52**2  # round field of view
    img[outside] = 0.05
    img[40:46, 40:46] = 0.5  # flat patch inside the field: not touching the frame
    coll = collimator_mask(as_batch(img), margin=3)[0, 0].numpy()
    # Slivers thinner than the 5-px flatness window are only covered near thicker parts.
    assert coll[(yy - 48) ** 2 + (xx - 48) ** 2 > 56**2].all()
    assert not coll[48, 48] and not coll[42, 42]
    assert coll[83, 83] and coll[13, 13]  # grown into the field (radius 49.5, edge at 52)
    # Mid-grey flat content is not a collimator, even when it touches the frame.
    mid = tubes(96, 96, noise=0.02)
    mid[:, :20] = 0.6
    assert not collimator_mask(as_batch(mid), margin=3).any()
    # A noise-free image that is flat almost everywhere is not a collimator either.
    plain = np.full((64, 64), 0.8, dtype=np.float32)
    plain[30:33, :] = 0.3
    assert not collimator_mask(as_batch(plain), margin=3).any()


def test_vessel_mask_ignores_collimator_edge() -> None:
    img = tubes(96, 96, noise=0.01)
    img[:, 80:] = 0.02  # dark collimator blade on the right: a strong step edge
    x = as_batch(img)
    with_c = vessel_mask(x, border=2, preset="priormim")[0, 0].numpy()  # collimator on by default
    without = vessel_mask(x, border=2, preset="priormim", collimator=False)[0, 0].numpy()
    assert without[:, 78:].any()  # Sato responds to the step edge
    # Flat from column 80; window centres from 82, grown by 2 + margin 8 -> cleared from 72.
    assert not with_c[:, 72:].any()
    assert (with_c & (img < 0.6)).sum() > 0.5 * with_c.sum()  # what remains is on the lines


@pytest.mark.skipif(not (DCA1 / "images").is_dir(), reason="DCA1 images not available")
def test_real_angiograms_match_skimage() -> None:
    from priormim.io import read_gray

    files = sorted((DCA1 / "images").glob("*.png"))[:3]
    imgs = [read_gray(p) for p in files]
    out = vesselness(as_batch(*imgs)).numpy()
    for img, got in zip(imgs, out):
        ref = sato(img, sigmas=(1, 2, 3, 4), black_ridges=True, mode="reflect")
        assert pearson(got[0], ref) >= 0.999
        assert np.abs(got[0] - ref).max() <= 1e-5 * ref.max()


@pytest.mark.parametrize("size", [1, 3, 5, 21])
def test_separable_max_filter_equals_max_pool(size: int) -> None:
    from priormim.priors.vessel import _max_filter

    x = torch.randn(2, 1, 30, 41, generator=torch.Generator().manual_seed(size))
    ref = torch.nn.functional.max_pool2d(x, size, stride=1, padding=size // 2)
    assert torch.equal(_max_filter(x, size), ref)
