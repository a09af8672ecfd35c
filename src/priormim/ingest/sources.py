"""Input discovery and frame reading: DICOM (single or multi-frame), videos, image files.

Every source becomes ``float32 [T, H, W]`` frames in ``[0, 1]`` plus non-identifying
geometry. DICOM goes through :mod:`priormim.io_dicom` (the same grey levels as
:func:`priormim.io.read_gray`), videos through PyAV (decoded to 8-bit grey), images through
:func:`priormim.io.read_gray` (one frame).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from priormim.errors import UserError
from priormim.io import IMAGE_SUFFIXES, read_gray
from priormim.io_dicom import DICOM_SUFFIXES, is_dicom_file

__all__ = ["VIDEO_SUFFIXES", "SourceFrames", "discover_sources", "read_source", "source_kind"]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv")


@dataclass
class SourceFrames:
    """The frames of one source and the geometry ingest may copy (nothing identifying)."""

    frames: np.ndarray  # float32 [T, H, W] in [0, 1]
    kind: str  # dicom / video / image
    geometry: dict[str, str] = field(default_factory=dict)


def source_kind(path: Path) -> str | None:
    """``dicom``, ``video``, ``image`` or None (not an input) for a file."""
    suffix = path.suffix.lower()
    if path.name.startswith("."):
        return None
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in DICOM_SUFFIXES or (suffix == "" and is_dicom_file(path)):
        return "dicom"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    return None


def discover_sources(inputs: Sequence[str | Path]) -> list[Path]:
    """Every input file under ``inputs`` (files or folders, searched recursively), sorted.

    Files without a suffix count when they carry the DICOM preamble (``IM000001``).
    Raises UserError for a missing input or when nothing is found.
    """
    found: set[Path] = set()
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise UserError("input does not exist; check the path", p)
        if p.is_file():
            if source_kind(p) is None:
                raise UserError("is not a DICOM file, video or image; pass a folder or supported files", p)
            found.add(p.resolve())
            continue
        for f in p.rglob("*"):
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts) and source_kind(f):
                found.add(f.resolve())
    if not found:
        raise UserError(
            "no DICOM files, videos or images found in the inputs; point to the archive folder",
            ", ".join(str(i) for i in inputs),
        )
    return sorted(found, key=str)


def _read_video(path: Path) -> SourceFrames:
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is a dependency
        raise UserError("reading videos needs PyAV; pip install av", path) from exc
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate
            frames = [f.to_ndarray(format="gray") for f in container.decode(stream)]
    except (av.error.FFmpegError, IndexError, ValueError) as exc:
        raise UserError(f"cannot read video ({type(exc).__name__}: {exc}); the file is corrupt or has no video stream", path) from exc
    if not frames:
        raise UserError("video has no frames", path)
    geometry = {"fps": f"{float(rate):.3f}"} if rate else {}
    return SourceFrames(np.stack(frames).astype(np.float32) / 255.0, "video", geometry)


def _read_dicom(path: Path) -> SourceFrames:
    from priormim.io_dicom import read_dicom_sequence

    frames, info = read_dicom_sequence(path)
    geometry = {"bits_stored": str(info.bits_stored), "modality": info.modality}
    if info.pixel_spacing_mm is not None:
        geometry["pixel_spacing_mm"] = f"{info.pixel_spacing_mm:g}"
    if info.frame_time_ms is not None:
        geometry["frame_time_ms"] = f"{info.frame_time_ms:g}"
    return SourceFrames(frames, "dicom", geometry)


def read_source(path: str | Path) -> SourceFrames:
    """The frames of one input file; UserError when it cannot be read."""
    path = Path(path)
    kind = source_kind(path)
    if kind == "video":
        return _read_video(path)
    if kind == "dicom":
        return _read_dicom(path)
    if kind == "image":
        return SourceFrames(read_gray(path)[None], "image")
    raise UserError("is not a DICOM file, video or image", path)
