"""Fixation heatmaps: each fixation a duration-weighted 2-D Gaussian integrated exactly over
the output pixels, cut to the image and the region shown (conventions: :mod:`priormim.priors.gaze`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import ndtr

from priormim.priors.gaze_fixations import Fixations, GazeHeatmap, validate_fixations

__all__ = ["gaze_heatmap", "gaze_heatmap_stats"]


def _pixel_profiles(mu: np.ndarray, sigma: np.ndarray, lo: np.ndarray, hi: np.ndarray, n: int) -> np.ndarray:
    """Gaussian mass of each pixel ``[j, j+1)``, cut to the interval ``[lo, hi)``.

    Args:
        mu, sigma, lo, hi: ``[N]`` in output pixels. n: number of pixels.
    Returns:
        ``[N, n]`` float64; row sums are at most 1 (mass outside the frame or box is lost).
    """
    j = np.arange(n, dtype=np.float64)[None, :]
    a = np.maximum(j, lo[:, None])
    b = np.minimum(j + 1.0, hi[:, None])
    s = np.maximum(sigma, 1e-9)[:, None]
    prof = ndtr((b - mu[:, None]) / s) - ndtr((a - mu[:, None]) / s)
    return np.where(b > a, np.maximum(prof, 0.0), 0.0)


def gaze_heatmap_stats(readings: Sequence[Fixations], *, out_size: tuple[int, int]) -> GazeHeatmap:
    """Duration-weighted fixation heatmap of one image, with counts of what was dropped.

    All fixations of all readings are rendered in one matrix product: per fixation a 1-D
    x profile ``[N, W]`` and y profile ``[N, H]``; ``heat = (w * gy).T @ gx``.

    Args:
        readings: the readings (readers) of one image; each needs ``image_size``.
        out_size: ``(H, W)`` of the heatmap (numpy shape order).
    Returns:
        :class:`GazeHeatmap` whose ``heatmap`` is float32 ``[H, W]`` summing to 1 (or zero).
    """
    out_h, out_w = (int(v) for v in out_size)
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"out_size must be positive (H, W), got {out_size}")
    valid = []
    for fix in readings:
        if fix.image_size is None:
            raise ValueError(
                f"reading {fix.reading_id!r} has no image_size; set it (dataclasses.replace(fix, "
                "image_size=(W, H))) or pass image_sizes to read_egd"
            )
        valid.append(validate_fixations(fix))
    dropped = {
        k: sum(getattr(f, k) for f in valid)
        for k in ("dropped_outside", "dropped_nonpositive_duration", "dropped_invalid")
    }
    counts = np.array([len(f) for f in valid], dtype=np.int64)
    if counts.sum() == 0:
        return GazeHeatmap(np.zeros((out_h, out_w), np.float32), len(valid), 0, 0, **dropped)

    nonempty = [f for f in valid if len(f)]
    reading = np.repeat(np.arange(len(nonempty)), [len(f) for f in nonempty])
    sx = np.concatenate([np.full(len(f), out_w / f.image_size[0]) for f in nonempty])
    sy = np.concatenate([np.full(len(f), out_h / f.image_size[1]) for f in nonempty])
    x = np.concatenate([f.x for f in nonempty])
    y = np.concatenate([f.y for f in nonempty])
    dur = np.concatenate([f.duration for f in nonempty])
    sig_x = np.concatenate([f.sigma_x for f in nonempty]) * sx
    sig_y = np.concatenate([f.sigma_y for f in nonempty]) * sy
    box = np.concatenate(
        [
            f.shown_box if f.shown_box is not None else np.array([[0.0, 0.0, *f.image_size]]).repeat(len(f), 0)
            for f in nonempty
        ]
    )
    gx = _pixel_profiles((x + 0.5) * sx, sig_x, box[:, 0] * sx, box[:, 2] * sx, out_w)
    gy = _pixel_profiles((y + 0.5) * sy, sig_y, box[:, 1] * sy, box[:, 3] * sy, out_h)

    # Mass of each fixation inside the frame and its shown box (separable: product of sums).
    mass = dur * gx.sum(axis=1) * gy.sum(axis=1)
    reading_mass = np.bincount(reading, weights=mass, minlength=len(nonempty))
    used = reading_mass > 0
    n_used = int(used.sum())
    if n_used == 0:
        return GazeHeatmap(np.zeros((out_h, out_w), np.float32), len(valid), 0, 0, **dropped)
    # Each reading sums to 1, readings are averaged: weight = duration / mass_r / n_used.
    w = np.where(used[reading], dur / np.where(used, reading_mass, 1.0)[reading], 0.0) / n_used
    heat = (gy * w[:, None]).T @ gx
    heat /= heat.sum()  # remove float round-off so the float32 map sums to 1
    return GazeHeatmap(
        heat.astype(np.float32),
        n_readings=len(valid),
        n_readings_used=n_used,
        n_fixations=int((used[reading] & (mass > 0)).sum()),
        **dropped,
    )


def gaze_heatmap(readings: Sequence[Fixations], *, out_size: tuple[int, int]) -> np.ndarray:
    """Gaze heatmap of one image: float32 ``[H, W]`` summing to 1, or all zero.

    Args:
        readings: the readings (readers) of one image, each with ``image_size`` set.
        out_size: ``(H, W)`` of the heatmap (numpy shape order, e.g. ``image.shape``).

    See :func:`gaze_heatmap_stats` for the counts of dropped fixations.
    """
    return gaze_heatmap_stats(readings, out_size=out_size).heatmap
