"""One source -> selected, de-duplicated, de-identified frames on disk (runs in a worker).

Frames are written as 8-bit grey PNG under ``<out>/frames/<h[:2]>/<h>.png`` where ``h`` is
the SHA-256 of the frame's pixels (``uint8`` bytes plus shape), cut to 32 hex digits: the name
says nothing about the patient, the study or the file it came from, and the same frame ingested
twice lands on the same file. No DICOM tag is copied except the geometry in
:class:`~priormim.ingest.sources.SourceFrames` (bits stored, modality, pixel spacing, frame
time).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from priormim.errors import UserError
from priormim.ingest.dedup import dhash, hash_hex, near_duplicates
from priormim.ingest.select import FrameRule, contrast_curve, select_frames
from priormim.ingest.sources import read_source
from priormim.io import atomic_write_bytes, to_uint8

__all__ = ["PNG_ENCODING", "IngestParams", "encode_png", "frame_name", "process_source", "source_id", "source_key"]

# zlib level 1, run-length strategy, Sub filter (OpenCV's fast PNG settings): on 512 px
# synthetic cine frames 3.7 ms and 103 KiB a frame against PIL's default (level 6, adaptive
# filters) 60 ms and 102 KiB; on the DCA1 angiograms 1.5 ms / 33.6 KiB against 19 ms / 32.4 KiB.
# Part of the journal's parameters: a change re-encodes every source (the manifest's sha256
# is of the PNG bytes).
PNG_ENCODING = "zlib1-rle-sub"


@dataclass(frozen=True)
class IngestParams:
    """Options that decide the output of a source (a change redoes every source)."""

    rule: FrameRule
    dedup_bits: int = 2  # near-duplicate within this many of 256 dHash bits; < 0: off
    contrast_size: int = 128
    bright_vessels: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"frames": str(self.rule), "level": self.rule.level, "dedup_bits": self.dedup_bits,
                "contrast_size": self.contrast_size, "bright_vessels": self.bright_vessels, "png": PNG_ENCODING}


def encode_png(pixels: np.ndarray) -> bytes:
    """A ``uint8 [H, W]`` frame as grey PNG bytes (no metadata chunks), fast settings."""
    import imagecodecs

    png = imagecodecs.PNG
    return bytes(imagecodecs.png_encode(np.ascontiguousarray(pixels), level=png.COMPRESSION.SPEED,
                                        strategy=png.STRATEGY.RLE, filter=png.FILTER.SUB))


def source_id(path: Path) -> str:
    """SHA-256 of a source file's bytes (24 hex digits): provenance without the path."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()[:24]


def source_key(path: Path) -> str:
    """Journal key of a source: a hash of its resolved path (the journal never holds paths)."""
    return hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:32]


def frame_name(pixels: np.ndarray) -> str:
    """Content hash of a ``uint8 [H, W]`` frame: 32 hex digits."""
    h = hashlib.sha256(f"{pixels.shape[0]}x{pixels.shape[1]}:".encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()[:32]


def process_source(path: str, out: str, params: IngestParams) -> dict[str, Any]:
    """Read, select, de-duplicate and write one source; returns its journal record.

    The record holds ``rows`` (one dict per written frame: ``image`` relative to ``out``,
    ``bytes``, ``sha256``, ``source``, ``frame``, ``n_frames``, ``contrast``, ``phash``,
    ``height``, ``width`` and the geometry) and counts; ``error`` instead when the source
    cannot be read (one line, counted as a skip).
    """
    torch.set_num_threads(1)  # one process per core; the pool is the parallelism
    p, root = Path(path), Path(out)
    st = p.stat()
    record: dict[str, Any] = {"key": source_key(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                              "params": params.as_dict()}
    try:
        src = read_source(p)
    except UserError as exc:
        reason = str(exc).removeprefix(f"{exc.path}: ") if exc.path is not None else str(exc)
        return {**record, "error": reason, "rows": [], "n_frames": 0, "n_selected": 0, "n_duplicates": 0}
    frames = src.frames
    n = len(frames)
    # The score is provenance for every rule (and what `peak` selects by): one batched filter call.
    scores = contrast_curve(frames, size=params.contrast_size, black_ridges=not params.bright_vessels)
    chosen = select_frames(scores, params.rule)
    hashes = dhash(frames[chosen])
    dup = near_duplicates(hashes, max_distance=params.dedup_bits)
    sid = source_id(p)
    keep = np.flatnonzero(~dup)  # positions in ``chosen``
    pixels_kept = to_uint8(frames[chosen[keep]])  # one conversion for every written frame
    rows = []
    for k, pixels in zip(keep.tolist(), pixels_kept):
        t = int(chosen[k])
        name = frame_name(pixels)
        rel = f"frames/{name[:2]}/{name}.png"
        data = encode_png(pixels)
        target = root / rel
        if not (target.is_file() and target.stat().st_size == len(data)):
            atomic_write_bytes(target, data)
        rows.append({
            "image": rel,
            "bytes": str(len(data)),
            "sha256": hashlib.sha256(data).hexdigest(),
            "source": sid,
            "kind": src.kind,
            "frame": str(t),
            "n_frames": str(n),
            "contrast": f"{scores[t]:.6g}",
            "phash": hash_hex(hashes[k]),
            "height": str(pixels.shape[0]),
            "width": str(pixels.shape[1]),
            **src.geometry,
        })
    return {**record, "source": sid, "rows": rows, "n_frames": n, "n_selected": len(chosen),
            "n_duplicates": int(dup.sum())}
