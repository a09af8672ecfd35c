"""Synthetic chest X-rays with lesions and simulated radiologist gaze (VP-MIM's built-in data).

Real gaze data (REFLACX, EGD-CXR) need credentialed access, so VP-MIM is developed on these
images, whose simulated scan paths are written in REFLACX's own file format::

    out/
      images/cxr_00000.png            8-bit grey, size x size
      labels.csv                      image, label (0/1), lesion_type (none/opacity/nodule/effusion)
      gaze/main_data/metadata_phase_3.csv           REFLACX metadata (id, dicom_id, image_size_x, ...)
      gaze/main_data/<id>/fixations.csv             REFLACX fixations (1-2 readers per image)

so ``priormim prior gaze --format reflacx --root out/gaze --images out/images`` runs on
them unchanged. As in REFLACX, fixations are in pixels of the "original" image
(``ORIGINAL_SIZE`` px square, like a DICOM) and the PNG is a downsized copy.

The image is an attenuation map built in normalised coordinates ``u`` (left to right) and
``v`` (top to bottom), so every size looks the same: soft tissue, dark lung fields with
vascular markings, posterior and anterior ribs, clavicles, spine, mediastinum, heart,
diaphragm domes with costophrenic angles, a gastric bubble, then blur, exposure/window
variation and quantum noise. Lesions: ``opacity`` (soft patchy blob in a lung),
``nodule`` (small round spot), ``effusion`` (homogeneous density at a costophrenic angle
with a meniscus), with contrasts from subtle to obvious.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from priormim.errors import UserError
from priormim.io import atomic_write_bytes, write_png
from priormim.priors.gaze import REFLACX_FIXATION_COLUMNS, Fixations

__all__ = [
    "LESION_TYPES",
    "ORIGINAL_SIZE",
    "SyntheticCXR",
    "synthesize_cxr",
    "write_synthetic_cxr",
    "write_reflacx_gaze",
]

LESION_TYPES = ("opacity", "nodule", "effusion")
ORIGINAL_SIZE = 2048  # the "DICOM" size fixation coordinates refer to (as in REFLACX)

# Full REFLACX fixations.csv column order (the reader needs only REFLACX_FIXATION_COLUMNS).
REFLACX_FIXATION_HEADER = (
    "timestamp_start_fixation",
    "timestamp_end_fixation",
    "x_position",
    "y_position",
    "pupil_area_normalized",
    "window_width",
    "window_level",
    "angular_resolution_x_pixels_per_degree",
    "angular_resolution_y_pixels_per_degree",
    "xmin_shown_from_image",
    "ymin_shown_from_image",
    "xmax_shown_from_image",
    "ymax_shown_from_image",
    "xmin_in_screen_coordinates",
    "ymin_in_screen_coordinates",
    "xmax_in_screen_coordinates",
    "ymax_in_screen_coordinates",
)
assert set(REFLACX_FIXATION_COLUMNS) <= set(REFLACX_FIXATION_HEADER)

# REFLACX phase 2/3 label columns (certainty 0-5) and the one each lesion type sets.
REFLACX_LABELS = (
    "Abnormal mediastinal contour",
    "Acute fracture",
    "Atelectasis",
    "Consolidation",
    "Enlarged cardiac silhouette",
    "Enlarged hilum",
    "Groundglass opacity",
    "Hiatal hernia",
    "High lung volume / emphysema",
    "Interstitial lung disease",
    "Lung nodule or mass",
    "Pleural abnormality",
    "Pneumothorax",
    "Pulmonary edema",
)
_LESION_LABEL = {"opacity": "Consolidation", "nodule": "Lung nodule or mass", "effusion": "Pleural abnormality"}


@dataclass
class SyntheticCXR:
    """One synthetic chest X-ray.

    Attributes:
        image: uint8 ``[H, W]``. label: 1 if a lesion is present. lesion_type: ``"none"``
        or one of :data:`LESION_TYPES`. lesion_mask: bool ``[H, W]``.
        fixations: one :class:`~priormim.priors.gaze.Fixations` per simulated reader, in
            pixels of the ``ORIGINAL_SIZE`` original (``image_size`` set), with REFLACX extras
            in ``extra`` (``timestamp_start``, screen box, ...) for writing the CSV.
    """

    image: np.ndarray
    label: int
    lesion_type: str
    lesion_mask: np.ndarray
    fixations: list[Fixations]
    extra: list[dict[str, np.ndarray]]


# --------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------


def _sig(x: np.ndarray, edge: float) -> np.ndarray:
    """Smooth step 0 -> 1 around ``x = 0`` with width ``edge`` (a soft inside-test)."""
    return 0.5 + 0.5 * np.tanh(x * np.float32(1.0 / edge))


@dataclass
class _Anatomy:
    """Per-image anatomy in normalised coordinates; index 0 = image left (patient right)."""

    apex: np.ndarray  # [2] lung apex height
    dome: np.ndarray  # [2] diaphragm dome top height (the left hemidiaphragm sits lower)
    dome_k: np.ndarray  # [2] dome curvature
    lat: np.ndarray  # [2] lateral lung extent (distance from the midline)
    medial: float  # half width of the upper mediastinum
    heart_c: tuple[float, float]
    heart_ax: tuple[float, float]
    hilum_v: float
    pose: tuple[float, float, float, float, float] = (1.0, 0.0, 1.0, 0.0, 0.0)  # cos, sin, scale, shift u, v

    def to_image(self, p: np.ndarray) -> np.ndarray:
        """Anatomy ``(u, v)`` points ``[K, 2]`` -> normalised image ``(x, y)`` (undo the pose)."""
        ca, sa, scale, su, sv = self.pose
        qu, qv = (p[:, 0] - 0.5 - su) * scale, (p[:, 1] - 0.5 - sv) * scale
        return np.stack([ca * qu + sa * qv + 0.5, -sa * qu + ca * qv + 0.5], axis=1)

    def top(self, d: np.ndarray, s: int) -> np.ndarray:
        return self.apex[s] + 1.6 * (d - 0.2) ** 2

    def bottom(self, d: np.ndarray, s: int) -> np.ndarray:
        return self.dome[s] + self.dome_k[s] * (d - 0.2) ** 2

    def lateral(self, v: np.ndarray, s: int) -> np.ndarray:
        return self.lat[s] * (1.0 - np.exp(-np.clip(v - self.apex[s] + 0.03, 0, None) / 0.12))


def _lung_masks(an: _Anatomy, u: np.ndarray, v: np.ndarray, e: float) -> np.ndarray:
    """Soft lung masks ``[2, H, W]`` (the heart is removed later)."""
    out = []
    for s, sign in enumerate((-1.0, 1.0)):
        d = sign * (u - 0.5)
        out.append(
            _sig(v - an.top(d, s), e)
            * _sig(an.bottom(d, s) - v, e)
            * _sig(d - an.medial, 2 * e)
            * _sig(an.lateral(v, s) - d, e)
        )
    return np.stack(out)


def _vessels(rng: np.random.Generator, an: _Anatomy, size: int, to_px) -> np.ndarray:
    """Vascular markings: branches radiating from both hila, ``[H, W]`` roughly in [0, 1].

    Points along each branch are splatted onto the grid and blurred (cheap, and the blur
    gives the tapering vessels their round profile).
    """
    trunks, twigs = [], []
    for sign in (-1.0, 1.0):
        hil = np.array([0.5 + sign * (an.medial + 0.06), an.hilum_v])
        n1 = 10
        ang = np.linspace(-1.2, 1.3, n1) + rng.normal(0, 0.12, n1)  # 0 = lateral, + = down
        length = rng.uniform(0.12, 0.22, n1)
        d1 = np.stack([sign * np.cos(ang), np.sin(ang)], axis=1)
        t = np.linspace(0, 1, 24)[None, :, None]
        trunks.append((hil + t * (d1 * length[:, None])[:, None, :], 1.0 - 0.6 * t))
        ends = hil + d1 * length[:, None]
        for turn in (-0.5, 0.5):
            a2 = ang + turn + rng.normal(0, 0.2, n1)
            d2 = np.stack([sign * np.cos(a2), np.sin(a2)], axis=1) * rng.uniform(0.06, 0.14, n1)[:, None]
            twigs.append((ends[:, None, :] + t * d2[:, None, :], 0.5 - 0.3 * t))
    out = np.zeros((size, size), np.float32)
    for group, sigma in ((trunks, 0.0045), (twigs, 0.0025)):
        pts = np.concatenate([p.reshape(-1, 2) for p, _ in group])
        w = np.concatenate([np.broadcast_to(wt, p.shape[:2] + (1,)).reshape(-1) for p, wt in group])
        col, row = to_px(pts)
        ok = (row >= 0) & (row < size) & (col >= 0) & (col < size)
        grid = np.zeros((size, size), np.float32)
        np.add.at(grid, (row[ok], col[ok]), w[ok])
        sig_px = max(sigma * size, 0.6)
        # Splat density ~ points per pixel; normalise so a vessel's peak is ~1 at any size.
        out += gaussian_filter(grid, sig_px) * (sig_px * 2.5 * 24 / (0.17 * size))
    return np.clip(out, 0, 1.5)


def _bones(u: np.ndarray, v: np.ndarray, an: _Anatomy, rng: np.random.Generator, e: float) -> np.ndarray:
    """Posterior (bright) and anterior (faint) ribs and clavicles: ``[H, W]`` bone density.

    Ribs of one side are parallel curves shifted vertically, so one periodic profile in a
    rib coordinate draws all of them at once.
    """
    bone = np.zeros_like(u)
    spacing = rng.uniform(0.062, 0.072)
    for s, sign in enumerate((-1.0, 1.0)):
        d = np.clip(sign * (u - 0.5), 0, None)
        chest = _sig(an.lateral(v, s) + 0.04 - d, 2 * e) * _sig(d - 0.03, e)
        # Posterior ribs: nearly horizontal by the spine, arching down to the chest wall.
        lat_bend = np.clip(d - 0.3, 0, None)
        f = -0.22 * d + 0.85 * d**2 + 2.5 * lat_bend**2
        slope = -0.22 + 1.7 * d + 5.0 * lat_bend
        phase = (v - f - (an.apex[s] - 0.035)) / spacing
        k = np.round(phase)
        dist = np.abs(phase - k) * spacing / np.sqrt(1.0 + slope**2)
        half = 0.008 + 0.016 * d
        shaft = _sig(half - dist, 0.5 * e)
        cortex = np.exp(-(((dist - half) / (0.3 * half + 0.5 * e)) ** 2))
        post = (0.55 * shaft + 0.35 * cortex) * ((k >= 0) & (k <= 9))
        # Anterior ribs: from the chest wall down towards the sternum, faint, fading medially.
        dd = np.clip(0.44 - d, 0, None)
        g = 0.42 * dd + 0.6 * dd**2
        phase_a = (v - g - (an.apex[s] + 0.02)) / (1.3 * spacing)
        ka = np.round(phase_a)
        dist_a = np.abs(phase_a - ka) * 1.3 * spacing / np.sqrt(1.0 + (0.42 + 1.2 * dd) ** 2)
        ant = _sig(0.011 - dist_a, 0.6 * e) * ((ka >= 0) & (ka <= 5)) * _sig(d - 0.17, 0.03)
        bone += chest * (post + 0.35 * ant)
        # Clavicle: S-shaped, from the sternal end up and out to the shoulder.
        c = d - 0.05
        yc = an.apex[s] + 0.07 - 0.36 * c + 0.55 * c**2 - 0.4 * np.clip(c - 0.25, 0, None) ** 2
        distc = np.abs(v - yc) / np.sqrt(1.0 + (0.36 - 1.1 * c) ** 2)
        span = _sig(c, 0.01) * _sig(0.33 - c, 0.02)
        bone += span * (0.8 * _sig(0.02 - distc, 0.5 * e) + 0.3 * np.exp(-(((distc - 0.02) / 0.005) ** 2)))
    return bone


def _heart(an: _Anatomy, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Soft heart mask: a tilted ellipse resting on the diaphragm, more to the patient's left."""
    cu, cv = u - an.heart_c[0], v - an.heart_c[1]
    t = np.deg2rad(-28)
    ru, rv = np.cos(t) * cu - np.sin(t) * cv, np.sin(t) * cu + np.cos(t) * cv
    return _sig(1.0 - np.sqrt((ru / an.heart_ax[0]) ** 2 + (rv / an.heart_ax[1]) ** 2), 0.04)


def _pick_in_lung(rng: np.random.Generator, an: _Anatomy, side: int) -> tuple[float, float]:
    """A lesion centre well inside lung ``side`` and clear of the heart, in (u, v).

    Chosen on a fixed 64 x 64 grid (plus jitter) so it does not depend on the image size.
    """
    g = ((np.arange(64) + 0.5) / 64).astype(np.float32)
    gu, gv = np.meshgrid(g, g)
    free = _lung_masks(an, gu, gv, 0.004)[side] * (1.0 - _heart(an, gu, gv))
    ok = np.flatnonzero(free.ravel() > 0.95)
    i = int(ok[rng.integers(ok.size)]) if ok.size else int(free.argmax())
    jitter = rng.uniform(-0.5, 0.5, 2) / 64
    return float(gu.flat[i] + jitter[0]), float(gv.flat[i] + jitter[1])


def _render(
    rng: np.random.Generator, size: int, lesion: str, *, gain: float = 1.0, grow: float = 1.0
) -> tuple[np.ndarray, np.ndarray, _Anatomy, np.ndarray, tuple[float, float, float]]:
    """Render the image. Returns (image float32 [H, W] in [0, 1], lesion mask, anatomy,
    lung masks [2, H, W], lesion (u, v, radius) in anatomy coordinates)."""
    f32 = np.float32
    px = 1.0 / size
    e = max(0.003, 0.6 * px)  # edge softness: sharp at any size, never aliased
    # Small global pose change: shift, scale, rotation (image -> anatomy coordinates).
    # Pixel noise has its own stream, so the anatomy and lesion do not depend on ``size``.
    noise_rng = np.random.default_rng(rng.integers(0, 2**63))
    ang = np.deg2rad(rng.normal(0, 1.5))
    scale = rng.uniform(0.94, 1.05)
    shift = rng.normal(0, 0.012, 2)
    ca, sa = np.cos(ang), np.sin(ang)
    g = ((np.arange(size) + 0.5) / size - 0.5).astype(f32)
    gu, gv = np.meshgrid(g, g)
    u = ((ca * gu - sa * gv) / scale + 0.5 + shift[0]).astype(f32)
    v = ((sa * gu + ca * gv) / scale + 0.5 + shift[1]).astype(f32)

    an = _Anatomy(
        apex=rng.uniform(0.09, 0.14) + rng.normal(0, 0.006, 2),
        dome=rng.uniform(0.65, 0.72) + np.array([0.0, rng.uniform(0.01, 0.04)]),
        dome_k=rng.uniform(1.6, 2.8, 2),
        lat=rng.uniform(0.39, 0.43) + rng.normal(0, 0.006, 2),
        medial=rng.uniform(0.05, 0.065),
        heart_c=(0.5 + rng.uniform(0.05, 0.08), rng.uniform(0.60, 0.65)),
        heart_ax=(rng.uniform(0.17, 0.21), rng.uniform(0.12, 0.15)),
        hilum_v=rng.uniform(0.38, 0.44),
        pose=(float(ca), float(sa), float(scale), float(shift[0]), float(shift[1])),
    )

    def to_px(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Anatomy (u, v) points [K, 2] -> nearest pixel (col, row)."""
        xy = np.floor(an.to_image(p) * size).astype(np.int64)
        return xy[:, 0], xy[:, 1]

    for name in ("apex", "dome", "dome_k", "lat"):  # float32 scalars keep the maps float32
        setattr(an, name, getattr(an, name).astype(f32))
    d_abs = np.abs(u - 0.5)

    # Body: neck and shoulders at the top; air above the shoulders is dark.
    shoulder = 0.13 * np.clip((d_abs - 0.15) / 0.35, 0, 1) ** 0.7 - 0.03
    body = _sig(v - shoulder, 0.012) * _sig(0.53 - d_abs, 0.01)
    lungs = _lung_masks(an, u, v, e)
    # Heart: a tilted ellipse resting on the diaphragm, more to the patient's left.
    heart = _heart(an, u, v)
    lung = np.clip(lungs.sum(0), 0, 1) * (1.0 - 0.9 * heart)

    # Mediastinum (wider at the aortic arch), spine, trachea and main bronchi.
    arch = 0.025 * np.exp(-(((v - an.hilum_v + 0.08) / 0.05) ** 2)) * (u > 0.5)
    medi = _sig(an.medial + 0.01 + arch - d_abs, 0.01)
    spine = _sig(0.03 - d_abs, 0.006) * _sig(an.heart_c[1] - v, 0.06)
    disc = 0.5 + 0.5 * np.cos(2 * np.pi * (v - rng.uniform(0, 0.05)) / 0.05)
    carina = an.hilum_v - 0.06
    trachea = _sig(0.012 - np.abs(u - 0.5 - 0.01 * (v - 0.2)), 0.004) * _sig(carina - v, 0.01)
    for sign in (-1.0, 1.0):  # main bronchi leave the carina downwards and outwards
        b = sign * (u - 0.5)
        dist_b = np.abs((v - carina) - 0.9 * b) / 1.35
        trachea += _sig(0.008 - dist_b, 0.004) * _sig(b, 0.004) * _sig(0.07 - b, 0.01)
    # Gastric bubble under the left dome.
    gb_v = an.bottom(np.float32(0.22), 1) + 0.045
    gb = _sig(1.0 - np.hypot((u - 0.72) / 0.06, (v - gb_v) / 0.028), 0.25) * float(rng.random() < 0.8)

    bone = _bones(u, v, an, rng, e)
    ves = _vessels(rng, an, size, to_px)
    texture = gaussian_filter(noise_rng.standard_normal((size, size)).astype(f32), 1.0 * size / 128)
    texture /= texture.std() + 1e-6

    # Attenuation (bright = dense). Lungs are darkest upper-laterally and brighten towards
    # the hila and bases, where more soft tissue overlaps them.
    depth = rng.uniform(0.34, 0.5)
    base = _sig(v - an.dome.mean() + 0.12, 0.06)
    hilar = np.exp(-((d_abs - 0.1) ** 2 + (v - an.hilum_v) ** 2) / 0.02)
    att = 0.70 * body - 0.08 * _sig(d_abs - 0.44, 0.03)
    att -= depth * lung * (1.0 - 0.22 * base - 0.2 * hilar) * body
    heart_top = an.heart_c[1] - 0.8 * an.heart_ax[1]
    att += 0.07 * medi * (1 - lung) * _sig(heart_top - v, 0.04) + 0.07 * heart
    att += 0.04 * _sig(v - an.dome.mean() - 0.06, 0.04) * body
    att += 0.04 * spine * (0.5 + 0.5 * disc) * (1.0 - 0.6 * heart)
    att -= 0.10 * np.clip(trachea, 0, 1)
    att -= 0.10 * gb
    att += rng.uniform(0.08, 0.13) * bone * body * (1.0 - 0.5 * heart) * (1.0 - 0.5 * medi)
    att += rng.uniform(0.07, 0.11) * ves * lung
    att += 0.02 * texture * lung
    if rng.random() < 0.4:  # breast shadows over the lower lungs
        breast = _sig(0.17 - np.hypot(d_abs - 0.3, (v - 0.78) * 1.3), 0.04)
        att += rng.uniform(0.04, 0.08) * breast * body

    # Lesion.
    mask = np.zeros((size, size), dtype=bool)
    center = (0.0, 0.0, 0.0)
    if lesion != "none":
        side = int(rng.integers(2))
        free = lungs[side] * (1.0 - heart)
        if lesion == "effusion":
            d = (-1.0, 1.0)[side] * (u - 0.5)
            # Fluid fills the costophrenic angle; the meniscus climbs along the lateral wall.
            cp_v = an.bottom(an.lat[side], side)
            h = rng.uniform(0.07, 0.18)
            level = cp_v - h - 0.5 * h * np.clip((d - 0.1) / (an.lat[side] - 0.1), 0, 1) ** 3
            fluid = _sig(v - level, 0.012) * free  # fluid behind the heart does not show
            att += gain * rng.uniform(0.45, 0.8) * depth * fluid * body
            mask = fluid > 0.5
            ys, xs = np.nonzero(mask)
            if ys.size:
                uv = np.stack([u[ys, xs], v[ys, xs]], 1).mean(0)
                center = (float(uv[0]), float(uv[1]), float(np.sqrt(mask.mean() / np.pi)))
        else:
            cu0, cv0 = _pick_in_lung(rng, an, side)
            if lesion == "nodule":
                r = grow * rng.uniform(0.012, 0.028)
                prof = _sig(r - np.hypot(u - cu0, v - cv0), 0.3 * r)
                amp = rng.uniform(0.08, 0.2)
            else:  # opacity: overlapping soft blobs with a patchy texture
                r = grow * rng.uniform(0.05, 0.10)
                k = int(rng.integers(3, 6))
                off = rng.normal(0, 0.45 * r, (k, 2))
                rr = r * rng.uniform(0.5, 0.9, k)
                q = ((u[None] - cu0 - off[:, 0, None, None]) ** 2 + (v[None] - cv0 - off[:, 1, None, None]) ** 2)
                prof = np.clip(np.exp(-q / (2 * rr[:, None, None] ** 2)).sum(0), 0, 1.2) / 1.2
                amp = rng.uniform(0.08, 0.2)
            prof = prof * free
            mask = prof > 0.35 * max(float(prof.max()), 1e-6)
            if mask.any():  # look at the middle of what is visible, not the seed point
                ys, xs = np.nonzero(mask)
                cu0, cv0 = float(u[ys, xs].mean()), float(v[ys, xs].mean())
            if lesion == "opacity":
                prof = prof * np.clip(0.75 + 0.3 * texture, 0.3, 1.2)  # patchy air-space filling
            att += gain * amp * prof
            center = (cu0, cv0, float(r))

    # Imaging chain: blur, exposure/window, detector gamma, vignetting, quantum noise.
    att = gaussian_filter(att.astype(f32), rng.uniform(0.4, 0.8) * size / 128)
    lo, hi = rng.uniform(-0.03, 0.05), rng.uniform(0.8, 0.95)
    img = np.clip((att - lo) / (hi - lo), 0, 1) ** rng.uniform(0.85, 1.25)
    img *= 1.0 - rng.uniform(0.0, 0.15) * ((u - 0.5) ** 2 + (v - 0.45) ** 2) * 2
    img += noise_rng.standard_normal((size, size)).astype(f32) * rng.uniform(0.008, 0.02) * np.sqrt(0.3 + img)
    return np.clip(img, 0, 1).astype(f32), mask, an, lungs, center

# --------------------------------------------------------------------------------------
# Gaze simulation
# --------------------------------------------------------------------------------------


def _scan_path(
    rng: np.random.Generator,
    an: _Anatomy,
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


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def synthesize_cxr(
    *,
    size: int = 128,
    seed: int | Sequence[int] = 0,
    lesion: str | None = None,
    n_readers: int | None = None,
    lesion_gain: float = 1.0,
    lesion_size: float = 1.0,
) -> SyntheticCXR:
    """One synthetic chest X-ray with its lesion mask and simulated gaze.

    Args:
        size: image side in pixels (square). seed: int or sequence of ints (e.g.
            ``(seed, index)``); the output is a pure function of ``(size, seed, lesion,
            n_readers)``.
        lesion: ``None`` / ``"none"`` (normal) or one of :data:`LESION_TYPES`.
        n_readers: simulated readers (default: 1 or 2, drawn from the seed).
        lesion_gain, lesion_size: multiply every lesion's contrast and the radius of nodules and
            opacities (1 = the default, subtle-to-obvious, range; > 1 makes the task easier at a small
            image size, see ``benchmarks/cxr_gaze_bench.py``). The random draws do not change.
    Returns:
        :class:`SyntheticCXR`; fixations are in pixels of an ``ORIGINAL_SIZE`` square original.
    """
    lesion = "none" if lesion is None else str(lesion).lower()
    if lesion not in ("none", *LESION_TYPES):
        raise UserError(f"unknown lesion type {lesion!r}; use none, {', '.join(LESION_TYPES)}")
    if size < 32:
        raise UserError(f"synthetic chest X-ray size must be at least 32 px, got {size}")
    rng = np.random.default_rng(list(seed) if isinstance(seed, Sequence) else seed)
    img, mask, an, _, center = _render(rng, size, lesion, gain=float(lesion_gain), grow=float(lesion_size))
    orig = max(ORIGINAL_SIZE, size)
    n_readers = int(rng.integers(1, 3)) if n_readers is None else int(n_readers)
    fixations, extras = [], []
    for r in range(n_readers):
        fix, extra = _scan_path(rng, an, lesion, center, orig=orig, reading_id=f"reader{r + 1}")
        fixations.append(fix)
        extras.append(extra)
    return SyntheticCXR(
        image=np.clip(np.round(img * 255), 0, 255).astype(np.uint8),
        label=int(lesion != "none"),
        lesion_type=lesion,
        lesion_mask=mask,
        fixations=fixations,
        extra=extras,
    )


def _csv_bytes(header: Sequence[str], rows: list[Sequence]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def _fixations_csv(fix: Fixations, extra: dict[str, np.ndarray]) -> bytes:
    n = len(fix)
    cols = {
        "timestamp_start_fixation": extra["timestamp_start_fixation"],
        "timestamp_end_fixation": extra["timestamp_end_fixation"],
        "x_position": fix.x.astype(np.int64),
        "y_position": fix.y.astype(np.int64),
        "pupil_area_normalized": extra["pupil_area_normalized"],
        "window_width": extra["window_width"],
        "window_level": extra["window_level"],
        "angular_resolution_x_pixels_per_degree": fix.sigma_x.astype(np.int64),
        "angular_resolution_y_pixels_per_degree": fix.sigma_y.astype(np.int64),
        "xmin_shown_from_image": fix.shown_box[:, 0].astype(np.int64),
        "ymin_shown_from_image": fix.shown_box[:, 1].astype(np.int64),
        "xmax_shown_from_image": fix.shown_box[:, 2].astype(np.int64),
        "ymax_shown_from_image": fix.shown_box[:, 3].astype(np.int64),
        "xmin_in_screen_coordinates": extra["screen"][:, 0].astype(np.int64),
        "ymin_in_screen_coordinates": extra["screen"][:, 1].astype(np.int64),
        "xmax_in_screen_coordinates": extra["screen"][:, 2].astype(np.int64),
        "ymax_in_screen_coordinates": extra["screen"][:, 3].astype(np.int64),
    }
    table = np.stack([np.asarray(cols[c]).astype(str) for c in REFLACX_FIXATION_HEADER], axis=1)
    return _csv_bytes(REFLACX_FIXATION_HEADER, table.tolist() if n else [])


def _reading_rows(main: Path, index: int, dicom_id: str, s: SyntheticCXR) -> list[list]:
    """Write one image's readings to ``main/<id>/fixations.csv``; return its metadata rows."""
    rows = []
    labels = [4 if _LESION_LABEL.get(s.lesion_type) == name else 0 for name in REFLACX_LABELS]
    for r, (fix, extra) in enumerate(zip(s.fixations, s.extra, strict=True)):
        rid = f"P3{r + 1:02d}R{index:06d}"  # REFLACX style: phase, reader, running number
        (main / rid).mkdir(parents=True, exist_ok=True)
        (main / rid / "fixations.csv").write_bytes(_fixations_csv(fix, extra))
        rows.append([rid, "train", "False", f"images/{dicom_id}.png", dicom_id, f"{index:08d}",
                     fix.image_size[0], fix.image_size[1], *labels, "False", ""])
    return rows


def _write_metadata(main: Path, rows: list[list], phase: int = 3) -> Path:
    header = ["id", "split", "eye_tracking_data_discarded", "image", "dicom_id", "subject_id",
              "image_size_x", "image_size_y", *REFLACX_LABELS, "Support devices", "Other"]
    meta = main / f"metadata_phase_{phase}.csv"
    atomic_write_bytes(meta, _csv_bytes(header, rows))
    return meta


def write_reflacx_gaze(gaze_root: str | Path, items: Sequence[tuple[str, SyntheticCXR]]) -> Path:
    """Write simulated readings as REFLACX files under ``gaze_root/main_data/``.

    Args:
        items: ``(dicom_id, SyntheticCXR)`` pairs; reader ``r`` of item ``i`` becomes reading
            ``P3{r+1:02d}R{i:06d}`` with ``main_data/<id>/fixations.csv``.
    Returns:
        Path of the metadata table ``main_data/metadata_phase_3.csv``.
    """
    main = Path(gaze_root) / "main_data"
    main.mkdir(parents=True, exist_ok=True)
    rows = [row for i, (did, s) in enumerate(items) for row in _reading_rows(main, i, did, s)]
    return _write_metadata(main, rows)


def write_synthetic_cxr(
    out: str | Path, *, n: int, size: int = 128, seed: int = 0, lesion_rate: float = 0.5,
    lesion_gain: float = 1.0, lesion_size: float = 1.0,
) -> list[Path]:
    """Write ``n`` synthetic chest X-rays, ``labels.csv`` and REFLACX-format gaze to ``out``.

    Image ``i`` depends only on ``(seed, i, size, lesion_rate)``; a lesion is present with
    probability ``lesion_rate``, its type uniform over :data:`LESION_TYPES`. ``labels.csv``
    and the metadata table are written last, so their presence marks a finished run.

    Returns:
        The written image paths ``out/images/cxr_00000.png, ...``.
    """
    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    if not 0.0 <= lesion_rate <= 1.0:
        raise UserError(f"--lesion-rate must be in [0, 1], got {lesion_rate}")
    out = Path(out)
    img_dir, main = out / "images", out / "gaze" / "main_data"
    img_dir.mkdir(parents=True, exist_ok=True)
    main.mkdir(parents=True, exist_ok=True)
    paths, label_rows, meta_rows = [], [], []
    for i in range(n):
        pick = np.random.default_rng([seed, i, 7])
        lesion = LESION_TYPES[int(pick.integers(3))] if pick.random() < lesion_rate else "none"
        name = f"cxr_{i:05d}"
        s = synthesize_cxr(size=size, seed=(seed, i), lesion=lesion, lesion_gain=lesion_gain, lesion_size=lesion_size)
        path = img_dir / f"{name}.png"
        write_png(path, s.image)
        paths.append(path)
        label_rows.append([path.name, s.label, s.lesion_type])
        meta_rows.extend(_reading_rows(main, i, name, s))
    _write_metadata(main, meta_rows)
    atomic_write_bytes(out / "labels.csv", _csv_bytes(["image", "label", "lesion_type"], label_rows))
    return paths
