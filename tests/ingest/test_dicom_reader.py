"""The DICOM reader gives the grey levels pydicom's own LUT functions give, for every
compressed transfer syntax, colour model, bit depth and photometric interpretation."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, SecondaryCaptureImageStorage, generate_uid

from priormim.errors import UserError
from priormim.io import read_gray
from priormim.io_dicom import read_dicom_frames


def _ds(arr: np.ndarray, *, bits: int, photometric: str = "MONOCHROME2", **tags) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "XA"
    ds.Rows, ds.Columns = arr.shape[-2:] if arr.ndim in (2, 3) and photometric.startswith("MONO") else arr.shape[-3:-1]
    if arr.ndim == 3 and photometric.startswith("MONO"):
        ds.NumberOfFrames = arr.shape[0]
    ds.SamplesPerPixel = 1 if photometric.startswith("MONO") else 3
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _expected(path: Path) -> np.ndarray:
    """Grey levels by pydicom's functions alone: modality LUT, then VOI LUT / window."""
    ds = pydicom.dcmread(path)
    values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    bits = int(ds.BitsStored)
    lo, hi = 0.0, float(2**bits - 1)
    if "RescaleSlope" in ds:
        lo, hi = lo * float(ds.RescaleSlope) + float(ds.RescaleIntercept), hi * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    out = (values - lo) / (hi - lo)
    return 1 - out if ds.PhotometricInterpretation == "MONOCHROME1" else out


def _ramp12(h: int = 48, w: int = 40) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (np.linspace(0, 4095, h * w).reshape(h, w) + rng.normal(0, 20, (h, w))).clip(0, 4095).astype(np.uint16)


def test_window_and_rescale_match_pydicom_and_ignore_a_hot_pixel(tmp_path: Path):
    arr = _ramp12()
    tags = dict(WindowCenter="1800", WindowWidth="2400", RescaleSlope="1", RescaleIntercept="-100")
    path = _save(_ds(arr, bits=12, **tags), tmp_path / "w.dcm")
    got = read_gray(path)
    assert got.shape == arr.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, _expected(path), atol=1e-6)
    hot = arr.copy()
    hot[0, 0] = 4095  # one hot pixel: the other grey levels must not move (min-max scaling moved them)
    got_hot = read_gray(_save(_ds(hot, bits=12, **tags), tmp_path / "hot.dcm"))
    np.testing.assert_array_equal(got_hot.ravel()[1:], got.ravel()[1:])


def test_voi_lut_sequence_is_applied(tmp_path: Path):
    arr = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 60)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", (np.sqrt(np.arange(4096) / 4095) * 1000).astype(np.uint16).tolist())  # LUT Data
    ds = _ds(arr, bits=12)
    ds.VOILUTSequence = [item]
    got = read_gray(_save(ds, tmp_path / "lut.dcm"))
    lut = np.asarray(item.LUTData, dtype=np.float64)
    np.testing.assert_allclose(got, (lut[arr] - lut.min()) / (lut.max() - lut.min()), atol=1e-6)


def test_monochrome1_is_inverted(tmp_path: Path):
    arr = _ramp12()
    m2 = read_gray(_save(_ds(arr, bits=12, WindowCenter="2048", WindowWidth="4096"), tmp_path / "m2.dcm"))
    path = _save(_ds(arr, bits=12, photometric="MONOCHROME1", WindowCenter="2048", WindowWidth="4096"), tmp_path / "m1.dcm")
    m1 = read_gray(path)
    np.testing.assert_allclose(m1, 1 - m2, atol=1e-6)
    np.testing.assert_allclose(m1, _expected(path), atol=1e-6)


def test_rgb_and_ybr_become_grey(tmp_path: Path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    got = read_gray(_save(_ds(rgb, bits=8, photometric="RGB"), tmp_path / "rgb.dcm"))
    assert got.shape == (20, 24)  # was [H, W, 3]: crashed `prior vessel`
    np.testing.assert_allclose(got, (rgb @ np.array([0.299, 0.587, 0.114])) / 255, atol=1e-6)
    ybr_path = get_testdata_file("SC_ybr_full_422_uncompressed.dcm")
    ds = pydicom.dcmread(ybr_path)
    raw = ds.pixel_array_options(as_rgb=False) or ds.pixel_array  # stored YBR samples
    expected = (convert_color_space(raw, "YBR_FULL", "RGB").astype(np.float64) @ np.array([0.299, 0.587, 0.114])) / 255
    np.testing.assert_allclose(read_gray(ybr_path), expected, atol=1 / 255)


@pytest.mark.parametrize(
    "name, reference",
    [
        ("MR_small_RLE.dcm", "MR_small.dcm"),
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
        ("SC_rgb_jpeg_gdcm.dcm", None),  # JPEG baseline, YBR
        ("JPGExtended.dcm", None),  # JPEG extended, 12-bit
        ("JPEG2000.dcm", None),
    ],
)
def test_shipped_compressed_files_decode(name: str, reference: str | None):
    got = read_gray(get_testdata_file(name))
    assert got.ndim == 2 and np.isfinite(got).all() and 0 <= got.min() <= got.max() <= 1
    if reference is not None:
        np.testing.assert_array_equal(got, read_gray(get_testdata_file(reference)))


@pytest.mark.parametrize("syntax", ["rle", "j2k", "jpeg-lossless"])
def test_project_made_compressed_files_are_lossless(tmp_path: Path, syntax: str):
    arr = _ramp12()
    ds = _ds(arr, bits=12, WindowCenter="2048", WindowWidth="4096")
    ref = read_gray(_save(ds, tmp_path / "raw.dcm"))
    if syntax == "rle":
        ds.compress(RLELossless, encoding_plugin="pydicom")
    elif syntax == "j2k":
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    else:
        pytest.importorskip("imagecodecs")
        from pydicom.encaps import encapsulate
        from pydicom.uid import JPEGLosslessSV1

        from priormim.data.synth_cine import encode_jpeg_lossless

        ds.PixelData = encapsulate([encode_jpeg_lossless(arr)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    np.testing.assert_array_equal(read_gray(_save(ds, tmp_path / f"{syntax}.dcm")), ref)


def test_multi_frame_is_refused_by_read_gray_and_read_by_frames(tmp_path: Path):
    frames = np.stack([np.full((16, 16), v, np.uint8) for v in (10, 120, 240)])
    path = _save(_ds(frames, bits=8), tmp_path / "cine.dcm")
    with pytest.raises(UserError, match="multi-frame.*priormim ingest"):
        read_gray(path)
    got = read_dicom_frames(path)
    assert got.shape == (3, 16, 16)
    np.testing.assert_allclose(got[:, 0, 0], np.array([10, 120, 240]) / 255, atol=1e-6)


def test_broken_files_give_one_line_errors(tmp_path: Path):
    arr = _ramp12()
    buf = io.BytesIO()
    _ds(arr, bits=12).save_as(buf, enforce_file_format=True)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(UserError) as err:
        read_gray(cut)
    assert "\n" not in str(err.value) and "cut.dcm" in str(err.value)
    with pytest.raises(UserError, match="no image"):
        read_gray(get_testdata_file("rtplan.dcm"))
