"""DICOM frames as display grey levels, the way a viewer shows them.

The pipeline follows DICOM PS3.3 C.11 and uses pydicom's own functions at each step:

1. decode the stored values (any transfer syntax pydicom has a decoder for; the decoders for
   JPEG Lossless, JPEG baseline/extended, JPEG-LS, JPEG 2000 and RLE are dependencies of
   the project: ``imagecodecs`` for grey JPEG Lossless, the syntax of most XA archives, as a
   pydicom plugin (:mod:`priormim.io_dicom_imagecodecs`, the fastest decoder here, with
   fallback to the others), ``python-gdcm``, ``pylibjpeg`` + ``pylibjpeg-libjpeg`` /
   ``-openjpeg`` / ``-rle``);
2. colour images (RGB, YBR_* which pydicom converts to RGB, PALETTE COLOR through
   :func:`pydicom.pixels.apply_color_lut`) become grey by luma (ITU-R BT.601 weights, i.e.
   the Y of YBR_FULL), scaled by the stored range;
3. grey images go through the Modality LUT (:func:`pydicom.pixels.apply_modality_lut`:
   rescale slope/intercept or the LUT), then the VOI LUT or the first window
   (:func:`pydicom.pixels.apply_voi_lut`), and are scaled to ``[0, 1]`` by the *output range
   of that transform* (the range pydicom's windowing maps to, or the VOI LUT's entries), not by
   the image's own minimum and maximum, so one hot pixel does not change the grey levels of
   the rest. Without a window, 8-bit data is scaled by its stored range (0-255), and wider
   data by its own minimum and maximum over *all* frames of the file (what viewers do; a
   12-bit image in 16 stored bits would otherwise be nearly black);
4. MONOCHROME1 (bright means low signal) is inverted, so vessels look the same for both.

Multi-frame files: :func:`read_dicom_frames` returns every frame (``[T, H, W]``);
:func:`read_dicom_gray` (what :func:`priormim.io.read_gray` calls) refuses a file with more
than one frame with a one-line error pointing to ``priormim ingest``, which picks the frames
around peak opacification: silently taking frame 0 of a cine run gives a frame before the
contrast arrives.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from priormim import io_dicom_imagecodecs as _imagecodecs
from priormim.errors import UserError

__all__ = [
    "DICOM_SUFFIXES",
    "DicomInfo",
    "dicom_info",
    "is_dicom_file",
    "iter_dicom_frames",
    "read_dicom_frames",
    "read_dicom_gray",
    "read_dicom_sequence",
    "to_display_grey",
]

log = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom")
# BT.601 luma: the Y of YBR_FULL, so an RGB image and its YBR encoding give the same grey.
_LUMA = np.array([0.299, 0.587, 0.114])
_DECODER_HINT = (
    "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle "
    "(dependencies of priormim; reinstall it with `pip install priormim`)"
)


@dataclass(frozen=True)
class DicomInfo:
    """Non-identifying acquisition geometry of a DICOM file (the only tags ingest copies)."""

    rows: int
    columns: int
    frames: int
    bits_stored: int
    photometric: str
    transfer_syntax: str
    modality: str
    pixel_spacing_mm: float | None  # (0028,0030) or (0018,1164) Imager Pixel Spacing, row spacing
    frame_time_ms: float | None  # (0018,1063): cine frame interval


def is_dicom_file(path: str | Path) -> bool:
    """True for a ``.dcm``/``.dicom`` file or a file with the ``DICM`` preamble (exports
    often have no suffix: ``IM000001``)."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return path.is_file()
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _dcmread(path: Path, *, pixels: bool):
    import pydicom

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=not pixels)
    except Exception as exc:  # pydicom raises many types for broken files
        raise UserError(f"cannot read DICOM ({type(exc).__name__}: {exc}); the file is corrupt or not DICOM", path) from exc


def _float_or_none(value) -> float | None:
    """First number of a DS/IS value (single or multi-valued); None when absent or malformed."""
    if value is None:
        return None
    items = [value] if isinstance(value, (str, bytes, int, float)) else list(value)
    try:
        return float(items[0])
    except (TypeError, ValueError, IndexError):
        return None


def _info(ds, path: Path, *, check_pixels: bool = True) -> DicomInfo:
    if check_pixels and "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise UserError("DICOM file has no image (no Pixel Data); it is a report, structure set or other non-image object", path)
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    return DicomInfo(
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        frames=int(ds.get("NumberOfFrames") or 1),
        bits_stored=int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip(),
        transfer_syntax=str(ts) if ts is not None else "",
        modality=str(ds.get("Modality", "")),
        pixel_spacing_mm=_float_or_none(spacing),
        frame_time_ms=_float_or_none(ds.get("FrameTime")),
    )


def dicom_info(path: str | Path) -> DicomInfo:
    """Geometry of a DICOM image without decoding its pixels."""
    path = Path(path)
    return _info(_dcmread(path, pixels=False), path, check_pixels=False)


def _stored_range(ds) -> tuple[float, float]:
    """Range of the stored values through the Modality LUT (the same rule as pydicom's
    :func:`~pydicom.pixels.apply_windowing` uses for its output range)."""
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = sorted((lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)))
    return lo, hi


def _has_voi(ds) -> bool:
    return bool(ds.get("VOILUTSequence")) or (ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None)


def _has_full_range(ds) -> bool:
    """8-bit stored values are display values already; wider ones without a window often use
    only part of their range (12 of 16 bits), which only the data tells."""
    return int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8) <= 8


def to_display_grey(arr: np.ndarray, ds) -> np.ndarray:
    """Stored pixel values -> display grey levels ``float32 [..., H, W]`` in ``[0, 1]``.

    Args:
        arr: decoded pixels as pydicom returns them: ``[H, W]``, ``[T, H, W]`` (grey or palette),
            ``[H, W, 3]`` or ``[T, H, W, 3]`` (colour, already RGB).
        ds: the file's dataset (pixel module, Modality LUT and VOI LUT modules are read).

    Grey 8/16-bit integer data larger than its value range goes through a lookup table: the
    transform below applied to every value the stored type can hold, then one gather. Every
    step is a function of the stored value alone (the data range of the no-window case is
    taken over the values present), so the result is the same, bit for bit, as applying it
    per pixel, and it costs one table look-up per pixel instead of several float64 passes.
    """
    from pydicom.pixels import apply_color_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        top = 255.0 if rgb.dtype == np.uint8 else float(max(int(rgb.max()), 1) if rgb.max() > 255 else 255)
        return np.clip((rgb.astype(np.float64) @ _LUMA) / top, 0.0, 1.0).astype(np.float32)
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        bits = int(ds.get("BitsStored") or 8)
        grey = arr[..., :3].astype(np.float64) @ _LUMA
        return np.clip(grey / float(2**bits - 1), 0.0, 1.0).astype(np.float32)
    if arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2 and arr.dtype.isnative and arr.size > (1 << (8 * arr.dtype.itemsize)):
        return _grey_by_lut(arr, ds, photometric)
    return _grey_values(arr, ds, photometric)


def _grey_by_lut(arr: np.ndarray, ds, photometric: str) -> np.ndarray:
    """:func:`_grey_values` as a table over the stored type, indexed by the pixels' bit patterns."""
    from pydicom.pixels import apply_modality_lut

    size = 1 << (8 * arr.dtype.itemsize)
    unsigned = np.dtype(f"u{arr.dtype.itemsize}")
    # Table entry k is the value whose bit pattern is k (0..127, -128..-1 for int8), so
    # ``table[arr.view(unsigned)]`` looks every pixel up, signed or not.
    domain = np.arange(size, dtype=unsigned).view(arr.dtype)
    data_range = None
    if not _has_voi(ds) and not _has_full_range(ds):
        present = np.bincount(arr.view(unsigned).ravel(), minlength=size) > 0
        values = apply_modality_lut(domain[present], ds).astype(np.float64)
        data_range = (float(values.min()), float(values.max()))
    table = _grey_values(domain, ds, photometric, data_range=data_range)
    return np.take(table, arr.view(unsigned))


def _grey_values(arr: np.ndarray, ds, photometric: str, *, data_range: tuple[float, float] | None = None) -> np.ndarray:
    """Grey stored values ``[...]`` -> display grey ``float32 [...]``, per value: Modality LUT,
    VOI LUT or window, scaling by the output range, MONOCHROME1 inversion. ``data_range``:
    the range (after the Modality LUT) of the no-window case; by default ``arr``'s own."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(arr, ds)
    voi_seq = ds.get("VOILUTSequence")
    if voi_seq:
        lut = np.asarray(voi_seq[0].LUTData, dtype=np.float64).ravel()
        lo, hi = float(lut.min()), float(lut.max())
        # pydicom's VOI LUT indexes by the integer value: round a rescaled float first.
        src = values if np.issubdtype(values.dtype, np.integer) else np.rint(values).astype(np.int64)
        out = apply_voi_lut(src, ds, index=0, prefer_lut=True).astype(np.float64)
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        lo, hi = _stored_range(ds)
        out = apply_voi_lut(values, ds, index=0, prefer_lut=False).astype(np.float64)
    else:
        out = values.astype(np.float64)
        if _has_full_range(ds):
            lo, hi = _stored_range(ds)
        elif data_range is not None:
            lo, hi = data_range
        else:  # as viewers do without a window: the data's own range (over all frames given)
            lo, hi = float(out.min()), float(out.max())
    grey = np.clip((out - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros(out.shape)
    if photometric == "MONOCHROME1":
        grey = 1.0 - grey
    return grey.astype(np.float32)


def _decode_error(exc: Exception, ds, path: Path) -> UserError:
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    name = getattr(ts, "name", str(ts))
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    if "missing dependencies" in text or "No pixel data decoders" in text:
        return UserError(f"no decoder installed for transfer syntax {name}; {_DECODER_HINT}", path)
    return UserError(f"cannot decode DICOM pixels of {name} ({type(exc).__name__}: {text}); the file is corrupt, "
                     "truncated or uses a variant no installed decoder supports", path)


def iter_dicom_frames(
    path: str | Path, *, indices: Sequence[int] | None = None, chunk: int = 16
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(frame index, float32 [H, W] in [0, 1])`` for the frames of a DICOM file.

    Decodes ``chunk`` frames at a time (memory stays bounded for long cine runs) and converts
    them in one vectorised :func:`to_display_grey` call. ``indices`` limits the frames
    (sorted, 0-based). Raises UserError for unreadable files.
    """
    path = Path(path)
    ds = _dcmread(path, pixels=True)
    yield from _frames_of(ds, path, indices=indices, chunk=chunk)


def _decoded(ds, wanted: list[int]) -> Iterator[np.ndarray]:
    """Stored values of the ``wanted`` frames, one ``[H, W(, 3)]`` array each.

    JPEG Lossless goes through the imagecodecs plugin (libjpeg-turbo 3, the fastest decoder
    here) when it is installed; if it fails on a frame, that frame and the rest go through
    pydicom's other plugins (gdcm, then pylibjpeg), so a stream libjpeg-turbo refuses still
    reads."""
    from pydicom.pixels import iter_pixels

    done = 0
    if _fast_plugin(ds):
        try:
            for frame in iter_pixels(ds, indices=wanted, decoding_plugin=_imagecodecs.PLUGIN):
                yield frame
                done += 1
            return
        except Exception as exc:  # any failure: the other plugins decide
            log.debug("imagecodecs could not decode frame %d (%s); using pydicom's other decoders", done, exc)
    if done < len(wanted):
        yield from iter_pixels(ds, indices=wanted[done:])


def _fast_plugin(ds) -> bool:
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return ts in _imagecodecs.SYNTAXES and int(ds.get("SamplesPerPixel", 1)) == 1 and _imagecodecs.register()


def _frames_of(ds, path: Path, *, indices: Sequence[int] | None, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    info = _info(ds, path)
    wanted = list(range(info.frames)) if indices is None else sorted(int(i) for i in indices)
    if not _has_voi(ds) and not _has_full_range(ds):
        chunk = max(len(wanted), 1)  # one data range for the whole sequence: no frame-to-frame flicker
    if wanted and not 0 <= wanted[0] <= wanted[-1] < info.frames:
        raise UserError(f"frame index out of range (file has {info.frames} frames)", path)
    buf: list[np.ndarray] = []
    idx: list[int] = []

    def flush() -> Iterator[tuple[int, np.ndarray]]:
        grey = to_display_grey(np.stack(buf), ds)
        yield from zip(list(idx), grey)
        buf.clear()
        idx.clear()

    try:
        for i, frame in zip(wanted, _decoded(ds, wanted)):
            buf.append(frame)
            idx.append(i)
            if len(buf) >= chunk:
                yield from flush()
    except UserError:
        raise
    except Exception as exc:  # decoder plugins raise their own types
        raise _decode_error(exc, ds, path) from exc
    if buf:
        yield from flush()


def read_dicom_frames(path: str | Path, *, indices: Sequence[int] | None = None) -> np.ndarray:
    """All (or the ``indices``) frames of a DICOM file as ``float32 [T, H, W]`` in ``[0, 1]``."""
    frames = [f for _, f in iter_dicom_frames(path, indices=indices)]
    if not frames:
        raise UserError("DICOM file has no frames", path)
    return np.stack(frames)


def read_dicom_sequence(path: str | Path) -> tuple[np.ndarray, DicomInfo]:
    """Every frame (``float32 [T, H, W]`` in ``[0, 1]``) and the geometry, from one read."""
    path = Path(path)
    ds = _dcmread(path, pixels=True)
    info = _info(ds, path)
    frames = [f for _, f in _frames_of(ds, path, indices=None, chunk=16)]
    if not frames:
        raise UserError("DICOM file has no frames", path)
    return np.stack(frames), info


def read_dicom_gray(path: str | Path) -> np.ndarray:
    """A single-frame DICOM image as ``float32 [H, W]`` in ``[0, 1]``.

    Raises UserError for a multi-frame file (a cine run): pick its frames with ``priormim
    ingest`` (peak opacification) instead of silently using frame 0.
    """
    path = Path(path)
    ds = _dcmread(path, pixels=True)
    info = _info(ds, path)
    if info.frames > 1:
        raise UserError(
            f"multi-frame DICOM ({info.frames} frames, a cine run); turn it into frames with "
            "`priormim ingest` (it keeps the frames around peak contrast)",
            path,
        )
    return next(_frames_of(ds, path, indices=None, chunk=1))[1]
