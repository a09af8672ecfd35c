"""Simulated radiologist scan paths over a synthetic chest X-ray (:mod:`priormim.data.synth_cxr`),
REFLACX style: a systematic sweep of both lungs, a look at the heart, mediastinum and
costophrenic angles, and long fixations clustered on the lesion.

:data:`GAZE_STATS` holds the statistics the simulated readings are built to, each with the
published figure it comes from or the note that none was found (then the value is ours);
``tests/data/test_synth_cxr_gaze.py`` checks the simulator against them and
``docs/vpmim_gaze.md`` ("Simulated readings") tabulates them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from priormim.data.synth_cxr_anatomy import Anatomy
from priormim.priors.gaze import Fixations

__all__ = ["GAZE_STATS", "READINGS_PER_IMAGE", "GazeStat", "scan_path"]

REFLACX = "REFLACX (Bigolin Lanfredi et al., Sci. Data 9:350, 2022)"
EGD_CXR = "EGD-CXR (Karargyris et al., Sci. Data 8:92, 2021)"
NOT_PUBLISHED = (
    "not published: not in the parts of the REFLACX and EGD-CXR papers that could be reached (abstracts, "
    "EGD-CXR Table 2) nor in their code (github.com/ricbl/eyetracking, github.com/cxr-eye-gaze/eye-gaze-dataset); "
    "chosen"
)


@dataclass(frozen=True)
class GazeStat:
    """One statistic of the simulated readings and where its target comes from.

    Attributes:
        target: the value the simulator is built to (a median, or a mean where ``how`` says so).
        rel_tol: the relative tolerance the tests allow around ``target``.
        how: how the statistic is measured (over readings, fixations or images).
        published: the published figure, as text ("-" when there is none).
        source: the paper and place (table, section, file) the figure is from, how the
            target is derived from it, or :data:`NOT_PUBLISHED`.
        matched: whether the simulator meets the target (the tests check both ways, so a
            simulator change that moves a statistic across its tolerance must update this).
    """

    target: float
    rel_tol: float
    how: str
    published: str
    source: str
    matched: bool = True


# Readings per image: REFLACX has 3,032 readings of 2,616 images (abstract; five radiologists, most
# images read once, a small subset by all five); EGD-CXR has one radiologist on 1,083 images.
READINGS_PER_IMAGE = 3032 / 2616

GAZE_STATS: dict[str, GazeStat] = {
    "readings per image": GazeStat(
        target=READINGS_PER_IMAGE, rel_tol=0.1, how="mean over images",
        published="3,032 readings / 2,616 images = 1.16 (REFLACX); 1,083 images, 1 reader = 1.0 (EGD-CXR)",
        source=f"{REFLACX}, abstract; {EGD_CXR}, abstract. Simulated: a second reader with probability 0.159",
    ),
    "fixations per reading": GazeStat(
        target=27.0, rel_tol=0.2, how="median over readings", published="-", source=NOT_PUBLISHED,
    ),
    "fixation duration (ms)": GazeStat(
        target=255.0, rel_tol=0.2, how="median over fixations", published="-",
        source=NOT_PUBLISHED + " (sweep fixations ~250 ms, lesion dwells 0.6-1.5 s)",
    ),
    "saccade amplitude (deg)": GazeStat(
        target=2.7, rel_tol=0.3, how="median over saccades (pixels / the reading's pixels per degree)",
        published="-",
        source=NOT_PUBLISHED + " (REFLACX fixations.csv documents the pixels per degree of every "
        "fixation, angular_resolution_x/y_pixels_per_degree, but no summary of it is published)",
    ),
    "dwell share near lesion (%)": GazeStat(
        target=55.0, rel_tol=0.2,
        how="median over readings of abnormal images: share of fixation time within the lesion mask "
        "dilated by 1/32 of the image side",
        published="-", source=NOT_PUBLISHED,
    ),
    "gaze density, lesion / elsewhere": GazeStat(
        target=6.0, rel_tol=0.5,
        how="median over abnormal images: mean of the gaze heatmap inside the lesion mask / mean outside",
        published="6x (REFLACX: 'average gaze density within abnormal regions is six times higher than "
        "that of normal regions')",
        source="Zhao et al., 'Taming Masked Image Modeling for Chest X-ray Diagnosis by Incorporating "
        "Clinical Visual Priors', IPMI 2025, github.com/zhaozh10/CXR-MIM README.md (teaser caption); "
        "how they delimit the regions (REFLACX's radiologist-drawn ellipses are larger than a lesion) "
        "is not given there. Not matched: the simulator gives ~20x on its tight lesion masks",
        matched=False,
    ),
}

# Knobs of the simulator (chosen, see GAZE_STATS): sweep fixation durations (gamma shape, scale in s;
# clipped), lesion dwell durations (s), saccade gaps between fixations (s), and the visual angle
# (degrees) the shown image spans, which sets the pixels per degree.
SWEEP_FIXATION_GAMMA = (9.0, 0.028)  # mean ~250 ms
SWEEP_FIXATION_CLIP_S = (0.1, 0.5)
LESION_FIXATION_S = (0.6, 1.5)
SACCADE_GAP_S = (0.02, 0.08)
DEGREES_SPANNED = (15.0, 20.0)


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
        return np.clip(rng.gamma(*SWEEP_FIXATION_GAMMA, k), *SWEEP_FIXATION_CLIP_S)

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
    gaps = rng.uniform(*SACCADE_GAP_S, n)
    start = rng.uniform(0.5, 3.0) + np.concatenate([[0.0], np.cumsum(dur + gaps)[:-1]])
    start = np.round(start, 3)
    end = np.round(start + dur, 3)

    # ~15-20 degrees of visual angle span the shown image; zoom shrinks the shown region.
    ppd = orig / rng.uniform(*DEGREES_SPANNED)
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
    add(p, np.round(rng.uniform(*LESION_FIXATION_S, k), 3), zoom)
