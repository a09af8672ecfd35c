"""Simulated radiologist scan paths over a synthetic chest X-ray (:mod:`priormim.data.synth_cxr`),
REFLACX style: a systematic sweep of both lungs, a look at the heart, mediastinum and
costophrenic angles, and long fixations clustered on the lesion."""

from __future__ import annotations

import numpy as np

from priormim.data.synth_cxr_anatomy import Anatomy
from priormim.priors.gaze import Fixations

__all__ = ["scan_path"]


def scan_path(
    rng: np.random.Generator,
    an: Anatomy,
    lesion: str,
    center: tuple[float, float, float],
    *,
    orig: int,
    reading_id: str,
) -> tuple[Fixations, dict[str, np.ndarray]]:
    """One reader's fixations in original pixels, REFLACX style.

    A systematic sweep comparing both lungs from apex to base (short fixations), a look at
    heart, mediastinum and costophrenic angles, and long fixations clustered on the lesion
    (when there is one) where the sweep reaches it, plus a revisit at the end. Zoom is
    sometimes used on the lesion (smaller shown region, fewer image pixels per degree).
    """
    pts: list[np.ndarray] = []  # [k, 2] in normalised (u, v)
    durs: list[np.ndarray] = []
    zoomed: list[np.ndarray] = []

    def add(p: np.ndarray, dur: np.ndarray, zoom: bool = False) -> None:
        pts.append(p)
        durs.append(dur)
        zoomed.append(np.full(len(p), zoom))

    def short(k: int) -> np.ndarray:
        return np.clip(rng.gamma(9.0, 0.028, k), 0.1, 0.5)  # mean ~250 ms

    # Overview near the centre.
    k = int(rng.integers(1, 4))
    add(np.array([0.5, 0.45]) + rng.normal(0, 0.05, (k, 2)), short(k))
    levels = np.linspace(an.apex.mean() + 0.06, an.dome.mean() - 0.02, int(rng.integers(5, 8)))
    lesion_v = center[1] if lesion != "none" else np.inf
    cluster_done = False
    zoom_on_lesion = rng.random() < 0.3
    for i, lv in enumerate(levels):
        order = (-1.0, 1.0) if (i % 2 == 0) else (1.0, -1.0)  # zig-zag across the chest
        k = int(rng.integers(1, 3))
        for sign in order:
            d = rng.uniform(0.1, 0.33, k)
            p = np.stack([0.5 + sign * d, lv + rng.normal(0, 0.025, k)], axis=1)
            add(p, short(k))
        if not cluster_done and lv >= lesion_v - 0.05:
            _lesion_cluster(rng, center, add, zoom_on_lesion, revisit=False)
            cluster_done = True
    # Heart / mediastinum, then the costophrenic angles.
    k = int(rng.integers(1, 4))
    add(np.stack([an.heart_c[0] + rng.normal(0, 0.04, k), an.heart_c[1] + rng.normal(0, 0.03, k)], 1), short(k))
    for s, sign in enumerate((-1.0, 1.0)):
        if rng.random() < 0.8:
            d = an.lat[s] - 0.05
            angle = np.array([[0.5 + sign * d, an.bottom(d, s) - 0.03]])
            add(angle + rng.normal(0, 0.015, (1, 2)), short(1))
    if lesion != "none":
        if not cluster_done:
            _lesion_cluster(rng, center, add, zoom_on_lesion, revisit=False)
        if rng.random() < 0.7:  # a final look while dictating
            _lesion_cluster(rng, center, add, False, revisit=True)
    if rng.random() < 0.3:  # a glance off the image (dropped by the reader, as in real data)
        add(np.array([[rng.choice([-0.03, 1.03]), rng.uniform(0.2, 0.8)]]), short(1))

    p = an.to_image(np.concatenate(pts))  # the sweep is planned on the anatomy
    dur = np.round(np.concatenate(durs), 3)
    zoom = np.concatenate(zoomed)
    n = len(p)
    xy = np.round(p * orig)
    on_image = (p >= 0).all(1) & (p < 1).all(1)
    xy[on_image] = np.clip(xy[on_image], 0, orig - 1)

    # Timestamps: saccades of 20-80 ms between fixations, counted from the recording start.
    gaps = rng.uniform(0.02, 0.08, n)
    start = rng.uniform(0.5, 3.0) + np.concatenate([[0.0], np.cumsum(dur + gaps)[:-1]])
    start = np.round(start, 3)
    end = np.round(start + dur, 3)

    # ~15-20 degrees of visual angle span the shown image; zoom shrinks the shown region.
    ppd = orig / rng.uniform(15.0, 20.0)
    z = rng.uniform(1.6, 2.5)
    box = np.tile(np.array([0.0, 0.0, orig, orig]), (n, 1))
    ppd_n = np.full(n, ppd)
    if zoom.any():
        half = orig / z / 2
        c_img = an.to_image(np.array([center[:2]]))[0] * orig
        cx = np.clip(c_img[0], half, orig - half)
        cy = np.clip(c_img[1], half, orig - half)
        box[zoom] = np.round([cx - half, cy - half, cx + half, cy + half])
        ppd_n[zoom] = ppd / z
        xy[zoom] = np.clip(xy[zoom], box[zoom, :2], box[zoom, 2:] - 1)
    ppd_n = np.round(ppd_n)

    # Screen placement (a 1920 x 1080 area per image) and display state, for realism.
    screen = np.tile(np.array([420.0, 0.0, 1500.0, 1080.0]), (n, 1))
    extra = {
        "timestamp_start_fixation": start,
        "timestamp_end_fixation": end,
        "pupil_area_normalized": np.round(rng.normal(1.0, 0.08, n), 4),
        "window_width": np.full(n, 1.0),
        "window_level": np.full(n, 0.5),
        "screen": screen,
    }
    fix = Fixations(
        x=xy[:, 0],
        y=xy[:, 1],
        duration=end - start,
        sigma_x=ppd_n,
        sigma_y=ppd_n.copy(),
        shown_box=box,
        image_size=(orig, orig),
        reading_id=reading_id,
    )
    return fix, extra


def _lesion_cluster(rng: np.random.Generator, center, add, zoom: bool, *, revisit: bool) -> None:
    cu, cv, r = center
    k = int(rng.integers(1, 4)) if revisit else int(rng.integers(3, 8))
    spread = max(0.4 * r, 0.008)
    p = np.stack([cu + rng.normal(0, spread, k), cv + rng.normal(0, spread, k)], axis=1)
    add(p, np.round(rng.uniform(0.6, 1.5, k), 3), zoom)
