"""Synthetic angiography cine runs with known contrast timing (tests, demo, benchmarks).

A cine run is built from one synthetic angiogram (:func:`priormim.data.synth_xca.synthesize_angiogram`):
its vessels are separated from the background (a grey closing removes the dark tubes), then
every frame is ``background - c(t) * warp_t(vessels) + noise`` where

* ``c(t)`` is a gamma-variate bolus (zero before injection, wash-in to 1 at the peak, slow
  wash-out), the usual indicator-dilution model of contrast passing a vessel;
* ``warp_t`` is cardiac motion: a periodic scale and shift of the vessel layer (the heart
  moves, the spine and the collimator do not);
* the noise is drawn anew for every frame (quantum noise is not frame-to-frame correlated).

The ground truth of frame selection is ``peak = c(t) >= peak_level`` (default 0.5: frames at
least half as opacified as the best frame). Writers produce multi-frame XA DICOM (RLE, JPEG
Lossless SV1 through ``imagecodecs``, or uncompressed) and mp4 / avi videos (PyAV).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from priormim.errors import UserError
from priormim.io import atomic_write_bytes

__all__ = [
    "DICOM_SYNTAXES",
    "SyntheticCine",
    "encode_jpeg_lossless",
    "synthesize_cine",
    "write_cine_dicom",
    "write_cine_video",
    "write_synthetic_cine",
]

DICOM_SYNTAXES = ("rle", "jpeg-lossless", "explicit")


@dataclass
class SyntheticCine:
    """One synthetic cine run.

    Attributes:
        frames: ``uint8 [T, H, W]`` grey frames, dark vessels.
        contrast: ``float [T]`` injected contrast ``c(t)`` in ``[0, 1]`` (1 at the peak frame).
        peak: ``bool [T]`` ground-truth peak frames (``contrast >= peak_level``).
        mask: ``bool [H, W]`` vessel mask of the still (unwarped) tree.
    """

    frames: np.ndarray
    contrast: np.ndarray
    peak: np.ndarray
    mask: np.ndarray


def _bolus(n: int, rng: np.random.Generator) -> np.ndarray:
    """Gamma-variate contrast curve ``[n]``, max 1: ``x^a exp(a (1 - x))``, ``x = (t - t0) / tp``."""
    t0 = rng.uniform(0.12, 0.28) * n
    tp = rng.uniform(0.14, 0.22) * n
    alpha = rng.uniform(2.5, 3.5)
    x = np.clip((np.arange(n) - t0) / tp, 0.0, None)
    c = x**alpha * np.exp(alpha * (1.0 - x))
    return c / c.max()


def _warp(layer: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, H, W]``: ``layer`` under periodic cardiac motion (one batched grid_sample)."""
    period = rng.uniform(10.0, 16.0)  # frames per heartbeat (~1 s at 12.5-15 fps)
    phase = rng.uniform(0.0, 2 * math.pi)
    t = torch.arange(n, dtype=torch.float32)
    beat = torch.sin(2 * math.pi * t / period + phase)
    scale = 1.0 + 0.04 * beat  # contraction
    shift_x = 0.025 * torch.cos(2 * math.pi * t / period + phase)
    shift_y = 0.02 * beat
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, 0, 2] = shift_x
    theta[:, 1, 2] = shift_y
    src = torch.from_numpy(layer.astype(np.float32))[None, None].expand(n, 1, *layer.shape)
    grid = F.affine_grid(theta, list(src.shape), align_corners=False)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0].numpy()


def synthesize_cine(
    *, size: int = 256, frames: int = 40, seed: int | np.random.Generator = 0, peak_level: float = 0.5
) -> SyntheticCine:
    """Synthesize one cine run of ``frames`` frames of ``size x size`` pixels.

    Args:
        size: side length (>= 32).
        frames: number of frames (>= 8).
        seed: integer seed or generator.
        peak_level: ground-truth peak frames have ``c(t) >= peak_level``.
    """
    from priormim.data.synth_xca import synthesize_angiogram

    if int(frames) < 8:
        raise UserError(f"a cine run needs >= 8 frames, got {frames}; pass --frames 8 or more")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    still = synthesize_angiogram(size=size, seed=rng)
    img = still.image.astype(np.float32) / 255.0
    # A grey closing wider than the widest vessel fills the dark tubes: that is the background.
    width = max(5, int(round(size / 300 * 15)) | 1)
    background = ndi.gaussian_filter(ndi.grey_closing(img, size=(width, width)), sigma=1.0)
    vessels = np.clip(background - img, 0.0, None)
    contrast = _bolus(int(frames), rng)
    moving = _warp(vessels, int(frames), rng)
    noise = rng.normal(size=(int(frames), size, size)).astype(np.float32)
    noise = ndi.gaussian_filter(noise, sigma=(0, 0.6, 0.6))
    noise /= max(float(noise.std()), 1e-6)
    level = rng.uniform(0.006, 0.012)
    stack = background[None] - contrast[:, None, None].astype(np.float32) * moving
    stack += level * np.sqrt(np.clip(stack, 0.0, None) / 0.5) * noise
    out = np.clip(np.round(stack * 255.0), 0, 255).astype(np.uint8)
    return SyntheticCine(frames=out, contrast=contrast, peak=contrast >= peak_level, mask=still.mask)


def encode_jpeg_lossless(frame: np.ndarray) -> bytes:
    """One ``uint8``/``uint16 [H, W]`` frame as JPEG Lossless, Process 14, Selection Value 1
    (the transfer syntax of most XA archives), through ``imagecodecs`` (libjpeg-turbo 3)."""
    try:
        import imagecodecs
    except ImportError as exc:
        raise UserError("writing JPEG Lossless needs imagecodecs (a dependency of priormim: pip install imagecodecs); "
                        "or use --syntax rle") from exc
    bits = 8 if frame.dtype == np.uint8 else 16
    return bytes(imagecodecs.jpeg8_encode(np.ascontiguousarray(frame), lossless=True, predictor=1, bitspersample=bits))


def write_cine_dicom(
    path: str | Path, frames: np.ndarray, *, syntax: str = "rle", frame_time_ms: float = 66.7, seed: int = 0
) -> Path:
    """Write ``uint8 [T, H, W]`` frames as one multi-frame XA DICOM file (atomically).

    ``syntax``: ``rle`` (pydicom's own encoder), ``jpeg-lossless`` (Process 14 SV1, needs
    ``imagecodecs``) or ``explicit`` (uncompressed). The patient module holds obviously
    synthetic values, so de-identification can be tested against them.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        JPEGLosslessSV1,
        RLELossless,
        XRayAngiographicImageStorage,
        generate_uid,
    )

    if syntax not in DICOM_SYNTAXES:
        raise UserError(f"unknown DICOM syntax {syntax!r}; choose one of {', '.join(DICOM_SYNTAXES)}")
    frames = np.ascontiguousarray(frames)
    if frames.ndim != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W], got {frames.dtype} {frames.shape}")
    entropy = [str(seed), str(Path(path).name)]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = XRayAngiographicImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=entropy)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=entropy + ["study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=entropy + ["series"])
    ds.PatientName = "SYNTHETIC^PATIENT"
    ds.PatientID = f"SYN{seed:06d}"
    ds.PatientBirthDate = "19000101"
    ds.InstitutionName = "priormim synthetic"
    ds.Modality = "XA"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(frames.shape[1]), int(frames.shape[2])
    ds.NumberOfFrames = int(frames.shape[0])
    ds.FrameIncrementPointer = 0x00181063
    ds.FrameTime = f"{frame_time_ms:.1f}"
    ds.ImagerPixelSpacing = ["0.2", "0.2"]
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = frames.tobytes()
    if syntax == "rle":
        ds.compress(RLELossless, encoding_plugin="pydicom")
    elif syntax == "jpeg-lossless":
        ds.PixelData = encapsulate([encode_jpeg_lossless(f) for f in frames])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def write_cine_video(path: str | Path, frames: np.ndarray, *, fps: float = 15.0) -> Path:
    """Write ``uint8 [T, H, W]`` frames as a video (``.mp4``/``.mov``: H.264 near-lossless,
    ``.avi``: MPEG-4 part 2) through PyAV, atomically."""
    import av

    path = Path(path)
    codec = "mpeg4" if path.suffix.lower() == ".avi" else "libx264"
    fmt = {".mp4": "mp4", ".mov": "mov", ".avi": "avi", ".mkv": "matroska"}.get(path.suffix.lower(), "mp4")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=int(round(fps)))
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "8"} if codec == "libx264" else {"qscale": "2"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="gray")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_synthetic_cine(
    out: str | Path,
    *,
    n: int,
    size: int = 256,
    frames: int = 40,
    seed: int = 0,
    formats: tuple[str, ...] = ("dcm",),
    syntax: str = "rle",
    peak_level: float = 0.5,
) -> list[Path]:
    """Write ``n`` cine runs to ``out`` (``cine_{i:04d}.dcm`` / ``.mp4`` / ``.avi``) and the
    ground truth ``out/truth.csv`` (columns ``name, frame, contrast, peak``).

    Run ``i`` depends only on ``(seed, i, size, frames)``. Returns the written files.
    """
    out = Path(out)
    if int(n) < 1:
        raise UserError(f"n must be >= 1, got {n}; pass --n 1 or more", out)
    bad = [f for f in formats if f not in ("dcm", "mp4", "avi", "mov")]
    if bad:
        raise UserError(f"unknown cine format(s) {', '.join(bad)}; choose from dcm, mp4, avi, mov")
    paths: list[Path] = []
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["name", "frame", "contrast", "peak"])
    for i in range(int(n)):
        cine = synthesize_cine(size=size, frames=frames, seed=np.random.default_rng([int(seed), i]), peak_level=peak_level)
        for fmt in formats:
            name = f"cine_{i:04d}.{fmt}"
            if fmt == "dcm":
                paths.append(write_cine_dicom(out / name, cine.frames, syntax=syntax, seed=seed * 100003 + i))
            else:
                paths.append(write_cine_video(out / name, cine.frames))
            for t, (c, p) in enumerate(zip(cine.contrast, cine.peak)):
                writer.writerow([name, t, f"{c:.4f}", int(p)])
    atomic_write_bytes(out / "truth.csv", text.getvalue().encode("utf-8"))
    return paths
