"""Synthetic X-ray coronary angiograms (XCA) with exact vessel masks.

The built-in default data of ``priormim``: no download, no licence, known ground truth. Each
image is composed the way a fluoroscope forms it, in the display (log-attenuation) domain:

1. **Anatomy background**: smooth multi-scale random fields, a heart/diaphragm dome with a soft
   edge, an optional spine band and bright wedge filter, a linear gradient.
2. **Vessel tree**: a trunk from the ostium (near the top, before the random dihedral flip)
   with constant curvature plus tortuosity, and side branches spawned recursively (up to 3
   generations) with smaller radius, each tapering linearly along its length. Vessels are
   rendered as projected cylinders (chord length ``2*sqrt(r^2 - d^2)``), so thick vessels are
   darker than thin ones; contrast saturates (Beer-Lambert) for the thickest.
3. **Catheter**: a thin contrast-filled tube entering from the image edge and ending at the
   ostium. It is **not** in the mask, like the DCA1 annotations.
4. **Unlabelled twigs**: a few thin (1-2.5 px at 300 px) distal vessels drawn faintly in the
   image but left out of the mask, as DCA1 annotators also skip the faintest vessels.
5. **Imaging chain**: blur (focal spot / system MTF), the round collimator edge with a dark
   outside and radial vignetting, signal-dependent (Poisson-like) quantum noise, 8-bit output.

Geometry is defined at the DCA1 scale (300 px) and scaled by ``size / 300``: labelled vessel
widths are 3-10 px at 300 px (median ~5.5 px, like DCA1) and the vessel fraction is about
3.5-8 % of the image (DCA1: 3.4-11 %, mean 5.5 %). Everything is vectorised except the growth
of the ~10-40 tree segments (each segment's samples are drawn at once). Measured against DCA1
and the ``sato`` vesselness baseline in ``docs/synthetic_data.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage as ndi
from skimage.transform import resize

from priormim.errors import UserError
from priormim.io import write_png

__all__ = ["SyntheticAngiogram", "synthesize_angiogram", "write_synthetic_xca"]

_REF_SIZE = 300.0  # geometry constants below are in pixels of a 300x300 DCA1 image
_STEP = 0.5  # centreline sampling step in output pixels: dense enough for gap-free stamping
_MAX_GENERATION = 3


@dataclass
class SyntheticAngiogram:
    """One synthetic angiogram.

    Attributes:
        image: ``uint8 [H, W]`` grey image, dark vessels on a brighter background.
        mask: ``bool [H, W]`` vessel pixels (catheter and faint twigs excluded).
    """

    image: np.ndarray
    mask: np.ndarray

    @property
    def vessel_fraction(self) -> float:
        return float(self.mask.mean())


@dataclass
class _Segment:
    points: np.ndarray  # float [N, 2] (x, y) centreline samples
    radius: np.ndarray  # float [N] vessel radius in output pixels
    heading: np.ndarray  # float [N] direction in radians
    generation: int
    labelled: bool


# --------------------------------------------------------------------------- geometry


def _grow_centreline(
    rng: np.random.Generator,
    *,
    start: np.ndarray,
    heading: float,
    length: float,
    r_start: float,
    r_end: float,
    tortuosity: float,
    scale: float,
    inside: Callable[[np.ndarray], np.ndarray],
    crowded: Callable[[np.ndarray], np.ndarray] | None = None,
    skip: float = 0.0,
    candidates: int = 6,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample one tapering, curving centreline that stays in the field of view.

    ``candidates`` random paths are drawn at once (vectorised) and the one that runs longest
    inside the field is kept, cut where it leaves: vessels then sweep across the field instead
    of being truncated at the border right after the ostium. Points in ``crowded`` cells (near
    earlier vessels, ignoring the first ``skip`` px) count against a candidate, so branches
    spread out instead of bundling along their parent.
    """
    n = max(int(length / _STEP), 2)
    s = np.arange(n) * _STEP
    k = candidates
    # Heading = start + constant bend + periodic tortuosity + smooth random wander.
    bend = rng.uniform(-1.0, 1.0, size=(k, 1)) / (0.4 * _REF_SIZE * scale)
    wavelength = rng.uniform(22.0, 60.0, size=(k, 1)) * scale
    phase = rng.uniform(0, 2 * np.pi, size=(k, 1))
    wander = ndi.gaussian_filter1d(
        rng.normal(size=(k, n)), sigma=25.0 * scale / _STEP, axis=1, mode="nearest"
    )
    wander *= 0.35 / np.maximum(wander.std(axis=1, keepdims=True), 1e-6)
    theta = (
        heading
        + rng.uniform(-0.25, 0.25, size=(k, 1))
        + bend * s
        + tortuosity * (np.sin(2 * np.pi * s / wavelength + phase) - np.sin(phase))
        + (wander - wander[:, :1])
    )
    steps = _STEP * np.stack([np.cos(theta), np.sin(theta)], axis=-1)  # [K, N, 2]
    points = start + np.concatenate([np.zeros((k, 1, 2)), np.cumsum(steps[:, :-1], axis=1)], axis=1)
    outside = ~inside(points.reshape(-1, 2)).reshape(k, n)
    cut = np.where(outside.any(axis=1), np.argmax(outside, axis=1), n)
    score = cut.astype(np.float64) + rng.uniform(0.0, 0.5, size=k)  # random tie-break
    if crowded is not None:
        near = crowded(points.reshape(-1, 2)).reshape(k, n) & (s >= skip)
        score -= 2.0 * (near & (np.arange(n) < cut[:, None])).sum(axis=1)
    best = int(np.argmax(score))
    radius = np.linspace(r_start, r_end, n)
    c = int(cut[best])
    return points[best, :c], radius[:c], theta[best, :c]


def _grow_tree(
    rng: np.random.Generator, *, size: int, scale: float, inside: Callable[[np.ndarray], np.ndarray]
) -> tuple[list[_Segment], np.ndarray, float]:
    """Vessel tree segments, plus the ostium point and trunk start heading (for the catheter)."""
    r_min = max(1.5 * scale, 0.75)  # below ~1.5 px wide a mask is not connected on the pixel grid
    root = np.array([rng.uniform(0.25, 0.75) * size, rng.uniform(0.14, 0.3) * size])
    # Trunk runs sideways-down first, then its bend and branches cover the lower field.
    heading0 = rng.uniform(-0.2, 0.9) if rng.random() < 0.5 else np.pi - rng.uniform(-0.2, 0.9)
    r_root = max(rng.uniform(4.0, 5.2) * scale, r_min)
    pts, rad, th = _grow_centreline(
        rng,
        start=root,
        heading=heading0,
        length=rng.uniform(0.9, 1.5) * size,
        r_start=r_root,
        r_end=max(r_root * rng.uniform(0.45, 0.7), r_min),
        tortuosity=rng.uniform(0.0, 0.25),
        scale=scale,
        inside=inside,
    )
    segments = [_Segment(pts, rad, th, 0, True)]
    # Coarse occupancy grid of the vessels drawn so far (canonical frame = image square).
    cell = max(8.0 * scale, 2.0)
    occupied = np.zeros((int(size / cell) + 1,) * 2, dtype=bool)

    def cells(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.clip((p / cell).astype(int), 0, occupied.shape[0] - 1)
        return idx[:, 1], idx[:, 0]

    def crowded(p: np.ndarray) -> np.ndarray:
        return occupied[cells(p)]

    occupied[cells(pts)] = True
    target_area = rng.uniform(0.035, 0.075) * size * size
    area = float(np.sum(2 * rad) * _STEP)

    forks = [root]  # branch points so far; new ones keep a distance so no star-shaped hubs
    for _ in range(80):  # bounded: truncated branches may add little area
        if area >= target_area:
            break
        parents = [g for g in segments if g.generation < _MAX_GENERATION and len(g.radius) > 8]
        if not parents:  # trunk cut right at the ostium (tiny images): nothing to branch from
            break
        weights = np.array([g.radius.sum() * (0.4**g.generation) for g in parents])
        parent = parents[rng.choice(len(parents), p=weights / weights.sum())]
        k = int(rng.uniform(0.08, 0.9) * len(parent.radius))
        if np.hypot(*(np.array(forks) - parent.points[k]).T).min() < 18.0 * scale:
            continue
        r_branch = max(parent.radius[k] * rng.uniform(0.6, 0.9), r_min)
        angle = rng.uniform(0.4, 1.1) * rng.choice([-1.0, 1.0])
        generation = parent.generation + 1
        pts, rad, th = _grow_centreline(
            rng,
            start=parent.points[k],
            heading=float(parent.heading[k] + angle),
            length=rng.uniform(0.25, 0.7) * size * (0.8**generation),
            r_start=r_branch,
            r_end=max(r_branch * rng.uniform(0.5, 0.8), r_min),
            tortuosity=rng.uniform(0.1, 0.5) + 0.25 * generation * rng.random(),
            scale=scale,
            inside=inside,
            crowded=crowded,
            skip=parent.radius[k] + 2.0 * cell,
        )
        if len(rad) * _STEP < 10.0 * scale:
            continue
        segments.append(_Segment(pts, rad, th, generation, True))
        forks.append(parent.points[k])
        occupied[cells(pts)] = True
        # Exclude the part hidden inside the parent from the area estimate.
        area += float(np.sum(2 * rad) * _STEP) - 2 * parent.radius[k] * r_branch

    # Faint distal twigs: visible in the image, not annotated (like DCA1).
    labelled = [g for g in segments if len(g.radius) > 8]
    for _ in range(int(rng.integers(4, 15)) if labelled else 0):
        parent = labelled[int(rng.integers(len(labelled)))]
        k = int(rng.uniform(0.3, 1.0) * (len(parent.radius) - 1))
        r_twig = rng.uniform(0.6, 1.2) * scale
        pts, rad, th = _grow_centreline(
            rng,
            start=parent.points[k],
            heading=float(parent.heading[k] + rng.uniform(0.4, 1.2) * rng.choice([-1.0, 1.0])),
            length=rng.uniform(0.1, 0.35) * size,
            r_start=r_twig,
            r_end=r_twig * 0.6,
            tortuosity=rng.uniform(0.2, 0.9),
            scale=scale,
            inside=inside,
        )
        if len(rad) > 2:
            segments.append(_Segment(pts, rad, th, _MAX_GENERATION + 1, False))
    return segments, root, heading0


def _catheter(rng: np.random.Generator, *, root: np.ndarray, heading: float, size: int) -> np.ndarray:
    """Centreline ``[N, 2]`` of a catheter: a quadratic Bezier from the top edge to the ostium."""
    back = -np.array([np.cos(heading), np.sin(heading)])
    p0 = root
    p1 = root + back * rng.uniform(0.08, 0.22) * size
    p2 = np.array([p1[0] + rng.uniform(-0.25, 0.25) * size, -0.05 * size])  # beyond the top edge
    n = int(np.ceil(2.5 * size / _STEP))
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


# --------------------------------------------------------------------------- rendering


def _render_tubes(points: np.ndarray, radius: np.ndarray, size: int) -> np.ndarray:
    """Projected thickness ``float [size, size]`` of tubes: max over samples of the chord length.

    Hand-written disc stamping: each centreline sample writes ``2*sqrt(r^2 - d^2)`` into a small
    window with ``np.maximum.at``; samples are grouped by window size so it stays vectorised.
    """
    out = np.zeros(size * size, dtype=np.float64)
    if len(points) == 0:
        return out.reshape(size, size)
    half = np.ceil(radius + 0.5).astype(int)
    for h in np.unique(half):
        sel = half == h
        p, r = points[sel], radius[sel]
        offs = np.arange(-h, h + 1)
        cx = np.round(p[:, 0]).astype(int)[:, None, None] + offs[None, None, :]
        cy = np.round(p[:, 1]).astype(int)[:, None, None] + offs[None, :, None]
        d2 = (cx - p[:, 0, None, None]) ** 2 + (cy - p[:, 1, None, None]) ** 2
        chord = 2.0 * np.sqrt(np.clip(r[:, None, None] ** 2 - d2, 0.0, None))
        cx, cy = np.broadcast_arrays(cx, cy)
        ok = (cx >= 0) & (cx < size) & (cy >= 0) & (cy < size) & (chord > 0)
        np.maximum.at(out, cy[ok] * size + cx[ok], chord[ok])
    return out.reshape(size, size)


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean unit-std random field with features ~``size / cells`` px (cubic upsampling)."""
    # Cubic-spline upsampling is linear and separable, so resize the identity once per axis
    # and apply it as two small matrix products (10x faster than resizing the field at 1024 px).
    interp = resize(np.eye(cells + 1), (size, cells + 1), order=3, mode="reflect", clip=False)
    f = interp @ rng.normal(size=(cells + 1, cells + 1)) @ interp.T
    return (f - f.mean()) / max(float(f.std()), 1e-6)


def _ribs(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Overlapping rib shadows ``float [size, size]`` (positive = brighter, i.e. more bone).

    Each rib is a gently curved band 0.11-0.17 of the image wide, 0.26-0.4 apart (at a typical 12-16 cm field
    of view ribs are 1.5-2.5 cm wide, 3-5 cm apart), brighter at its two cortical edges than in its
    middle (a projected hollow tube); posterior and anterior ribs cross at different angles.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    out = np.zeros((size, size))
    for family in range(int(rng.integers(1, 3))):  # one or two rib families (posterior / anterior)
        ang = rng.uniform(-0.6, 0.6) + (np.pi / 2 if family else 0.0) * rng.uniform(0.25, 0.45)
        nx, ny = -np.sin(ang), np.cos(ang)
        bend = rng.uniform(-1.5, 1.5) / size  # curvature: the band's offset grows quadratically
        along = (xx - size / 2) * np.cos(ang) + (yy - size / 2) * np.sin(ang)
        across = (xx - size / 2) * nx + (yy - size / 2) * ny - bend * along**2
        pitch = rng.uniform(0.26, 0.4) * size
        width = rng.uniform(0.11, 0.17) * size
        phase = rng.uniform(0, pitch)
        d = np.mod(across + phase, pitch) - pitch / 2  # signed distance to the nearest rib's centre
        edge = 3.0 * scale + 0.4  # soft: ribs sit far from the detector, out of the focal plane
        band = 1.0 / (1.0 + np.exp((np.abs(d) - width / 2) / edge))
        cortex = np.exp(-0.5 * ((np.abs(d) - width / 2 + 1.5 * edge) / edge) ** 2)
        out += rng.uniform(0.02, 0.045) * (band + 0.35 * cortex)
    return out


def _motion_blur(img: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Blur along one random direction (cardiac / respiratory motion during the exposure)."""
    length = rng.uniform(2.0, 8.0) * scale
    ang = rng.uniform(0, np.pi)
    # an anisotropic Gaussian: rotate, blur along x only, rotate back
    rot = np.degrees(ang)
    work = ndi.rotate(img, rot, reshape=True, order=1, mode="nearest")
    work = ndi.gaussian_filter1d(work, sigma=max(length / 2.355, 0.3), axis=1, mode="nearest")
    back = ndi.rotate(work, -rot, reshape=False, order=1, mode="nearest")
    h0 = (back.shape[0] - img.shape[0]) // 2
    w0 = (back.shape[1] - img.shape[1]) // 2
    return back[h0 : h0 + img.shape[0], w0 : w0 + img.shape[1]]


def _background(rng: np.random.Generator, size: int, scale: float, *, rich: bool = False) -> np.ndarray:
    """Anatomy background ``float [size, size]`` around 0.5 in display units.

    ``rich`` adds rib shadows, a sharper, darker diaphragm edge and motion blur of the anatomy
    (drawn after everything else, so the default images stay as they were)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    bg = np.full((size, size), rng.uniform(0.5, 0.66))
    bg += rng.uniform(0.05, 0.11) * _smooth_field(rng, size, 2)  # organs, lung fields
    bg += rng.uniform(0.01, 0.025) * _smooth_field(rng, size, 7)
    # Fine mottling (lung parenchyma / scatter), a few px across.
    fine = ndi.gaussian_filter(rng.normal(size=(size, size)), sigma=max(2.0 * scale, 0.7))
    bg += rng.uniform(0.01, 0.02) * fine / max(float(fine.std()), 1e-6)
    g = rng.normal(size=2)
    bg += rng.uniform(0.0, 0.12) * ((xx - size / 2) * g[0] + (yy - size / 2) * g[1]) / (size * np.hypot(*g))
    if rng.random() < 0.7:  # heart shadow / diaphragm dome: a big disc centred off-image
        ang = rng.uniform(0, 2 * np.pi)
        c = size / 2 + rng.uniform(0.6, 1.1) * size * np.array([np.cos(ang), np.sin(ang)])
        rad = rng.uniform(0.55, 1.0) * size
        edge = rng.uniform(2.0, 9.0) * scale
        inside = 1.0 / (1.0 + np.exp(-(rad - np.hypot(xx - c[0], yy - c[1])) / edge))
        bg -= rng.uniform(0.07, 0.2) * inside
    if rng.random() < 0.4:  # spine: a soft darker band
        ang = rng.uniform(-0.4, 0.4) + np.pi / 2
        dist = (xx - rng.uniform(0.2, 0.8) * size) * np.sin(ang) - (yy - size / 2) * np.cos(ang)
        half = rng.uniform(0.08, 0.15) * size
        bg -= rng.uniform(0.03, 0.08) / (1.0 + np.exp((np.abs(dist) - half) / (6.0 * scale)))
    if rng.random() < 0.4:  # wedge filter / lung edge: a brighter half-plane with a sharp edge
        ang = rng.uniform(0, 2 * np.pi)
        dist = (xx - size / 2) * np.cos(ang) + (yy - size / 2) * np.sin(ang) - rng.uniform(0.15, 0.45) * size
        bg += rng.uniform(0.08, 0.25) / (1.0 + np.exp(-dist / (1.0 * scale + 0.3)))
    if rich:
        bg += _ribs(rng, size, scale)
        if rng.random() < 0.6:  # diaphragm / liver: a dark dome with a sharp edge low in the frame
            yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
            cx, rad = rng.uniform(0.2, 0.8) * size, rng.uniform(0.5, 0.9) * size
            cy = size * rng.uniform(0.75, 1.1) + rad
            dist = rad - np.hypot(xx - cx, yy - cy)
            bg -= rng.uniform(0.08, 0.18) / (1.0 + np.exp(-dist / (1.0 * scale + 0.3)))
        if rng.random() < 0.7:
            bg = _motion_blur(bg, rng, scale)
    return bg


# --------------------------------------------------------------------------- public API


def synthesize_angiogram(*, size: int = 256, seed: int | np.random.Generator = 0,
                         rich: bool = False) -> SyntheticAngiogram:
    """Synthesize one coronary angiogram with its vessel mask.

    Args:
        size: side length in pixels (square image), >= 32.
        seed: an integer seed or a ``numpy.random.Generator`` (consumed).
        rich: overlapping anatomy (rib shadows with cortical edges, a sharp diaphragm dome) and
            motion blur of the anatomy, as in real angiograms (see ``docs/synthetic_data.md``);
            False keeps the original, plainer backgrounds (same images as before for a seed).

    Returns:
        :class:`SyntheticAngiogram` with ``image`` ``uint8 [size, size]`` and ``mask``
        ``bool [size, size]``. The catheter and faint twigs are visible but not in the mask.
    """
    size = int(size)
    if size < 32:
        raise UserError(f"size must be >= 32 pixels, got {size}; pass a larger --size")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    scale = size / _REF_SIZE

    # Round collimator: centre near the image centre, radius cuts the corners (or not).
    col_c = size / 2 + rng.uniform(-0.05, 0.05, size=2) * size
    col_r = rng.uniform(0.56, 0.75) * size
    margin = 4.0 * scale
    # Random dihedral orientation, so the ostium and catheter may come from any side: the tree
    # grows in a canonical frame (ostium near the top) and its points are mapped to the image.
    n_rot, flip = int(rng.integers(4)), bool(rng.integers(2))

    def to_image(p: np.ndarray) -> np.ndarray:
        x, y = p[:, 0], p[:, 1]
        if flip:
            x = size - 1 - x
        for _ in range(n_rot):
            x, y = y, size - 1 - x
        return np.stack([x, y], axis=1)

    def inside(p: np.ndarray) -> np.ndarray:
        p = to_image(p)
        in_col = np.hypot(p[:, 0] - col_c[0], p[:, 1] - col_c[1]) < col_r - margin
        in_img = (p >= margin).all(axis=1) & (p <= size - 1 - margin).all(axis=1)
        return in_col & in_img

    segments, root, heading0 = _grow_tree(rng, size=size, scale=scale, inside=inside)
    lab = [g for g in segments if g.labelled]
    thick_lab = _render_tubes(
        to_image(np.concatenate([g.points for g in lab])), np.concatenate([g.radius for g in lab]), size
    )
    twigs = [g for g in segments if not g.labelled]
    thick_twig = _render_tubes(
        to_image(np.concatenate([g.points for g in twigs] + [np.zeros((0, 2))])),
        np.concatenate([g.radius for g in twigs] + [np.zeros(0)]),
        size,
    )
    cath_pts = _catheter(rng, root=root, heading=heading0, size=size)
    cath_r = max(rng.uniform(1.8, 2.4) * scale, 0.6)
    thick_cath = _render_tubes(to_image(cath_pts), np.full(len(cath_pts), cath_r), size)
    mask = thick_lab > 0

    # Thickness in DCA1 pixels; contrast saturates for thick vessels (Beer-Lambert).
    tau = 6.0
    # Contrast varies smoothly over the tree (inflow, mixing with blood, foreshortening).
    vessel_dark = rng.uniform(0.17, 0.3) * (1.0 - rng.uniform(0.0, 0.2) * (1.0 + _smooth_field(rng, size, 3)))
    dark = vessel_dark * (1.0 - np.exp(-np.maximum(thick_lab, thick_twig) / scale / tau))
    # max, not sum: the catheter tip sits in the ostium and would otherwise make a dark blob.
    dark = np.maximum(dark, rng.uniform(0.2, 0.32) * (1.0 - np.exp(-thick_cath / scale / tau)))

    img = _background(rng, size, scale, rich=rich) - ndi.gaussian_filter(dark, sigma=rng.uniform(0.3, 0.7) * scale)
    yy, xx = np.mgrid[0:size, 0:size]
    rr = np.hypot(xx - col_c[0], yy - col_c[1]) / col_r
    img *= 1.0 - rng.uniform(0.0, 0.2) * rr**2  # vignetting
    in_field = 1.0 / (1.0 + np.exp(-(1.0 - rr) * col_r / (1.2 * scale + 0.3)))
    outside_level = rng.uniform(0.03, 0.12)
    img = in_field * img + (1.0 - in_field) * outside_level
    img = ndi.gaussian_filter(img, sigma=rng.uniform(0.4, 0.8) * scale + 0.2)  # system MTF

    # Quantum noise: std grows with sqrt(signal); slightly correlated like real detectors.
    noise = ndi.gaussian_filter(rng.normal(size=(size, size)), sigma=0.6)
    noise /= max(float(noise.std()), 1e-6)
    img += rng.uniform(0.005, 0.012) * np.sqrt(np.clip(img, 0.0, None) / 0.5) * noise
    image = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    return SyntheticAngiogram(image=np.ascontiguousarray(image), mask=np.ascontiguousarray(mask))


def write_synthetic_xca(
    out: str | Path, *, n: int, size: int = 256, seed: int = 0, prefix: str = "xca", rich: bool = False
) -> list[Path]:
    """Write ``n`` synthetic angiograms to ``out/images/`` and masks to ``out/masks/``.

    File names are ``{prefix}_{i:05d}.png`` in both folders (8-bit grey; masks are 0/255).
    Image ``i`` depends only on ``(seed, i, size)``: it equals
    ``synthesize_angiogram(size=size, seed=np.random.default_rng([seed, i]))``, so a run with a
    larger ``n`` extends a smaller one. Existing files are overwritten atomically.

    ``rich`` selects :func:`synthesize_angiogram`'s richer anatomy.

    Returns:
        The image paths, in index order.
    """
    out = Path(out)
    if int(n) < 1:
        raise UserError(f"n must be >= 1, got {n}; pass --n 1 or more", out)
    if int(size) < 32:
        raise UserError(f"size must be >= 32 pixels, got {size}; pass a larger --size", out)
    if int(seed) < 0:
        raise UserError(f"seed must be >= 0, got {seed}; pass a non-negative --seed", out)
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a folder; pass a folder for --out", out)
    paths = []
    for i in range(int(n)):
        sample = synthesize_angiogram(size=size, seed=np.random.default_rng([int(seed), i]), rich=rich)
        name = f"{prefix}_{i:05d}.png"
        write_png(out / "masks" / name, sample.mask)
        write_png(out / "images" / name, sample.image)
        paths.append(out / "images" / name)
    return paths
