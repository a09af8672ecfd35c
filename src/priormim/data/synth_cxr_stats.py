"""Statistics of simulated chest X-ray readings (:mod:`priormim.data.synth_cxr`), measured the way
:data:`~priormim.data.synth_cxr_gaze.GAZE_STATS` defines them, and compared with its targets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from priormim.data.synth_cxr import SyntheticCXR
from priormim.data.synth_cxr_gaze import GAZE_STATS
from priormim.priors.gaze import gaze_heatmap

__all__ = ["StatCheck", "check_reading_stats", "reading_stats"]


def reading_stats(samples: Sequence[SyntheticCXR]) -> dict[str, np.ndarray]:
    """Per-unit values of every :data:`GAZE_STATS` statistic over ``samples``.

    Returns:
        ``{name: values}`` with the keys of :data:`GAZE_STATS`; one value per image (readings per
        image; gaze density on abnormal images), per reading (fixations; dwell share on abnormal
        images), per fixation (duration in ms) or per saccade (amplitude in degrees: the distance
        between consecutive fixations over the later fixation's pixels per degree).
    """
    n_read, n_fix, dur, sacc, share, density = [], [], [], [], [], []
    for s in samples:
        n_read.append(len(s.fixations))
        h, w = s.lesion_mask.shape
        near = None
        if s.label and s.lesion_mask.any():
            near = ndi.binary_dilation(s.lesion_mask, iterations=max(1, h // 32))
            heat = gaze_heatmap(s.fixations, out_size=(h, w)).astype(np.float64)
            density.append(heat[s.lesion_mask].mean() / max(heat[~s.lesion_mask].mean(), 1e-12))
        for f in s.fixations:
            x, y, d = (np.asarray(a, np.float64) for a in (f.x, f.y, f.duration))
            n_fix.append(len(x))
            dur.append(1000.0 * d)
            sacc.append(np.hypot(np.diff(x), np.diff(y)) / np.asarray(f.sigma_x, np.float64)[1:])
            if near is not None:
                col = np.clip((x / f.image_size[0] * w).astype(int), 0, w - 1)
                row = np.clip((y / f.image_size[1] * h).astype(int), 0, h - 1)
                share.append(100.0 * d[near[row, col]].sum() / max(d.sum(), 1e-12))
    out = {
        "readings per image": np.asarray(n_read, np.float64),
        "fixations per reading": np.asarray(n_fix, np.float64),
        "fixation duration (ms)": np.concatenate(dur) if dur else np.zeros(0),
        "saccade amplitude (deg)": np.concatenate(sacc) if sacc else np.zeros(0),
        "dwell share near lesion (%)": np.asarray(share, np.float64),
        "gaze density, lesion / elsewhere": np.asarray(density, np.float64),
    }
    assert out.keys() == GAZE_STATS.keys()
    return out


@dataclass(frozen=True)
class StatCheck:
    """One statistic against its target: ``value`` (mean or median as ``GAZE_STATS`` says),
    ``q25`` / ``q75`` quartiles of the units, ``target`` and whether ``value`` is within tolerance."""

    value: float
    q25: float
    q75: float
    target: float
    ok: bool


def check_reading_stats(samples: Sequence[SyntheticCXR]) -> dict[str, StatCheck]:
    """Measure :func:`reading_stats` and compare each with its :data:`GAZE_STATS` target."""
    out = {}
    for name, vals in reading_stats(samples).items():
        st = GAZE_STATS[name]
        if vals.size == 0:
            out[name] = StatCheck(np.nan, np.nan, np.nan, st.target, False)
            continue
        value = float(vals.mean() if st.how.startswith("mean") else np.median(vals))
        q25, q75 = (float(v) for v in np.percentile(vals, [25, 75]))
        out[name] = StatCheck(value, q25, q75, st.target, abs(value - st.target) <= st.rel_tol * st.target)
    return out
