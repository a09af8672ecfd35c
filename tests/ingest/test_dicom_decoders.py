"""The imagecodecs JPEG Lossless plugin decodes the same stored values as gdcm and
pylibjpeg (8/12/16-bit, signed, predictors 1-7, single and multi-frame), the reader uses it,
and falls back to the other plugins when it fails; the lookup-table grey path gives the
per-pixel path's values bit for bit."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import iter_pixels
from pydicom.uid import ExplicitVRLittleEndian, JPEGLossless, JPEGLosslessSV1, SecondaryCaptureImageStorage, generate_uid

import priormim.io_dicom as io_dicom
from priormim.io_dicom import read_dicom_frames, to_display_grey
from priormim.io_dicom_imagecodecs import PLUGIN, register

imagecodecs = pytest.importorskip("imagecodecs")


def _dataset(arr: np.ndarray, *, bits: int, signed: bool = False, predictor: int | None = 1, **tags) -> Dataset:
    """``[T, H, W]`` stored values as a DICOM dataset: JPEG Lossless (``predictor`` 1: SV1,
    2-7: Process 14) or uncompressed (``predictor`` None)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if predictor is None else JPEGLosslessSV1 if predictor == 1 else JPEGLossless
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "XA"
    ds.Rows, ds.Columns = arr.shape[1:]
    if arr.shape[0] > 1:
        ds.NumberOfFrames = arr.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, int(signed)
    for k, v in tags.items():
        setattr(ds, k, v)
    if predictor is None:
        ds.PixelData = np.ascontiguousarray(arr).tobytes()
    else:
        # JPEG codes the two's complement bit pattern of signed samples as unsigned precision-bit values.
        u = arr.view(np.uint8 if bits <= 8 else np.uint16) & ((1 << bits) - 1)
        ds.PixelData = encapsulate([
            bytes(imagecodecs.jpeg8_encode(np.ascontiguousarray(f), lossless=True, predictor=predictor, bitspersample=bits))
            for f in u
        ])
        ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def _random(shape: tuple[int, ...], *, bits: int, signed: bool, seed: int = 0) -> np.ndarray:
    lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
    dtype = (np.int8 if bits <= 8 else np.int16) if signed else (np.uint8 if bits <= 8 else np.uint16)
    return np.random.default_rng(seed).integers(lo, hi, size=shape).astype(dtype)


@pytest.mark.parametrize(
    "bits, signed, predictor, frames",
    [(8, False, 1, 3), (8, False, 5, 1), (12, False, 1, 1), (12, True, 7, 3), (16, False, 2, 3), (16, True, 1, 1)],
)
def test_plugin_decodes_what_gdcm_and_pylibjpeg_decode(bits: int, signed: bool, predictor: int, frames: int):
    assert register()
    arr = _random((frames, 24, 40), bits=bits, signed=signed)
    ds = _dataset(arr, bits=bits, signed=signed, predictor=predictor)
    got = {}
    for plugin in (PLUGIN, "gdcm", "pylibjpeg"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom notes a change of plugin between calls
            got[plugin] = np.stack(list(iter_pixels(ds, decoding_plugin=plugin)))
    for plugin, values in got.items():
        assert values.dtype == arr.dtype, plugin
        np.testing.assert_array_equal(values, arr, err_msg=plugin)


def _spy(monkeypatch: pytest.MonkeyPatch, *, fail_from: int | None = None) -> list[int]:
    """Count imagecodecs' JPEG decodes; from call ``fail_from`` on, raise like a refused stream."""
    calls: list[int] = []
    real = imagecodecs.jpeg8_decode

    def decode(*args, **kwargs):
        calls.append(1)
        if fail_from is not None and len(calls) > fail_from:
            raise imagecodecs.Jpeg8Error("simulated: a stream libjpeg-turbo refuses")
        return real(*args, **kwargs)

    monkeypatch.setattr(imagecodecs, "jpeg8_decode", decode)
    return calls


def test_reader_uses_the_plugin_and_matches_the_uncompressed_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    arr = _random((5, 32, 48), bits=8, signed=False)
    jpeg = tmp_path / "jpeg.dcm"
    _dataset(arr, bits=8).save_as(jpeg)
    raw = tmp_path / "raw.dcm"
    _dataset(arr, bits=8, predictor=None).save_as(raw)
    calls = _spy(monkeypatch)
    np.testing.assert_array_equal(read_dicom_frames(jpeg), read_dicom_frames(raw))
    assert len(calls) == 5
    np.testing.assert_array_equal(read_dicom_frames(jpeg, indices=[1, 3]), read_dicom_frames(raw)[[1, 3]])


def test_reader_falls_back_to_the_other_decoders_when_imagecodecs_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    arr = _random((4, 32, 48), bits=12, signed=False, seed=1)
    tags = dict(WindowCenter="2048", WindowWidth="4096")
    jpeg, raw = tmp_path / "jpeg.dcm", tmp_path / "raw.dcm"
    _dataset(arr, bits=12, **tags).save_as(jpeg)
    _dataset(arr, bits=12, predictor=None, **tags).save_as(raw)
    expected = read_dicom_frames(raw)
    calls = _spy(monkeypatch, fail_from=2)  # frames 0, 1 by imagecodecs, then it "fails"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = read_dicom_frames(jpeg)
    np.testing.assert_array_equal(got, expected)
    assert len(calls) >= 3
    calls = _spy(monkeypatch, fail_from=0)  # refuses the first frame already
    np.testing.assert_array_equal(read_dicom_frames(jpeg), expected)
    assert calls


def test_jpeg_extended_12_bit_is_left_to_the_other_decoders(monkeypatch: pytest.MonkeyPatch):
    from pydicom.data import get_testdata_file

    calls = _spy(monkeypatch)
    got = io_dicom.read_dicom_gray(get_testdata_file("JPGExtended.dcm"))
    assert got.ndim == 2 and 0 <= got.min() < got.max() <= 1
    assert not calls  # imagecodecs is registered for JPEG Lossless only


@pytest.mark.parametrize(
    "bits, signed, photometric, tags",
    [
        (8, False, "MONOCHROME2", {}),
        (8, False, "MONOCHROME1", {}),
        (12, False, "MONOCHROME2", {}),  # no window, wide data: the data's own range
        (12, False, "MONOCHROME2", dict(WindowCenter="1800", WindowWidth="2400", RescaleSlope="1", RescaleIntercept="-100")),
        (16, True, "MONOCHROME1", dict(RescaleSlope="0.5", RescaleIntercept="10")),
        (8, True, "MONOCHROME2", dict(WindowCenter="0", WindowWidth="100")),
    ],
)
def test_lookup_table_grey_equals_the_per_pixel_transform(bits: int, signed: bool, photometric: str, tags: dict):
    # 40 x 48 x 40 samples: more than a 16-bit table, so the table path is taken.
    arr = _random((40, 48, 40), bits=bits, signed=signed, seed=bits)
    if bits == 12:
        arr = (arr // 4 + 700).astype(arr.dtype)  # uses part of the range only
    ds = _dataset(arr[:1], bits=bits, signed=signed, predictor=None, PhotometricInterpretation=photometric, **tags)
    fast = to_display_grey(arr, ds)
    slow = io_dicom._grey_values(arr, ds, photometric)
    assert fast.dtype == slow.dtype == np.float32
    np.testing.assert_array_equal(fast, slow)


def test_lookup_table_grey_with_a_voi_lut_sequence():
    from pydicom.sequence import Sequence

    arr = _random((40, 48, 40), bits=12, signed=False, seed=3)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.LUTData = [int(v) for v in (np.sqrt(np.arange(4096) / 4095) * 4095).astype(np.uint16)]
    ds = _dataset(arr[:1], bits=12, predictor=None)
    ds.VOILUTSequence = Sequence([item])
    np.testing.assert_array_equal(to_display_grey(arr, ds), io_dicom._grey_values(arr, ds, "MONOCHROME2"))


def test_plugin_is_registered_for_jpeg_lossless_only():
    from pydicom.pixels.decoders import JPEGExtended12BitDecoder, JPEGLosslessDecoder, JPEGLosslessSV1Decoder

    from priormim.io_dicom_imagecodecs import SYNTAXES

    assert SYNTAXES == (JPEGLossless, JPEGLosslessSV1)
    assert register() and register()  # idempotent
    assert PLUGIN in JPEGLosslessDecoder.available_plugins and PLUGIN in JPEGLosslessSV1Decoder.available_plugins
    assert PLUGIN not in JPEGExtended12BitDecoder.available_plugins
