"""Near-duplicate frames within a sequence, by difference hash (dHash).

A frame's hash is 256 bits: the frame area-downscaled to 16 x 17 pixels and the sign of each
horizontal neighbour difference. Frames whose hash is within ``max_distance`` bits (Hamming)
of the last *kept* frame are dropped: repeated frames of a video export (frame-rate
conversion), a paused run, re-encodings. Consecutive frames of a real cine run differ by
motion and quantum noise and stay (on synthetic cine at 15 fps: tens of bits apart).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["dhash", "hash_hex", "near_duplicates"]

_SIDE = 16


def dhash(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """``bool [T, 256]`` difference hashes of frames ``[T, H, W]`` (batched)."""
    x = torch.as_tensor(frames, dtype=torch.float32)[:, None]
    small = F.interpolate(x, size=(_SIDE, _SIDE + 1), mode="area")[:, 0]
    return (small[:, :, 1:] > small[:, :, :-1]).reshape(len(small), -1).numpy()


def hash_hex(bits: np.ndarray) -> str:
    """A ``bool [256]`` hash as 64 hex digits (the manifest's ``phash`` column)."""
    return np.packbits(bits.astype(np.uint8)).tobytes().hex()


def near_duplicates(hashes: np.ndarray, *, max_distance: int) -> np.ndarray:
    """``bool [T]``: True for frames within ``max_distance`` bits of the last kept frame.

    ``max_distance < 0`` turns removal off (nothing is a duplicate).
    """
    dup = np.zeros(len(hashes), dtype=bool)
    if max_distance < 0 or len(hashes) == 0:
        return dup
    last = hashes[0]
    for t in range(1, len(hashes)):  # sequential by nature (compares with the last kept frame); T is small
        if int(np.count_nonzero(hashes[t] != last)) <= max_distance:
            dup[t] = True
        else:
            last = hashes[t]
    return dup
