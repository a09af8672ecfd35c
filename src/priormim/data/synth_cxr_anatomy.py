"""The synthetic chest X-ray's image (:mod:`priormim.data.synth_cxr`): an attenuation map in
normalised coordinates (soft tissue, lungs with vascular markings, ribs, clavicles, spine,
mediastinum, heart, diaphragm, gastric bubble) with its lesion, blur, window and noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

__all__ = ["LESION_MATCHES", "Anatomy", "render_cxr"]


def _sig(x: np.ndarray, edge: float) -> np.ndarray:
    """Smooth step 0 -> 1 around ``x = 0`` with width ``edge`` (a soft inside-test)."""
    return 0.5 + 0.5 * np.tanh(x * np.float32(1.0 / edge))


@dataclass
class Anatomy:
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


def _lung_masks(an: Anatomy, u: np.ndarray, v: np.ndarray, e: float) -> np.ndarray:
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


def _vessels(rng: np.random.Generator, an: Anatomy, size: int, to_px) -> np.ndarray:
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


def _bones(u: np.ndarray, v: np.ndarray, an: Anatomy, rng: np.random.Generator, e: float) -> np.ndarray:
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


def _heart(an: Anatomy, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Soft heart mask: a tilted ellipse resting on the diaphragm, more to the patient's left."""
    cu, cv = u - an.heart_c[0], v - an.heart_c[1]
    t = np.deg2rad(-28)
    ru, rv = np.cos(t) * cu - np.sin(t) * cv, np.sin(t) * cu + np.cos(t) * cv
    return _sig(1.0 - np.sqrt((ru / an.heart_ax[0]) ** 2 + (rv / an.heart_ax[1]) ** 2), 0.04)


def _pick_in_lung(rng: np.random.Generator, an: Anatomy, side: int) -> tuple[float, float]:
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


LESION_MATCHES = ("none", "histogram", "local")
# "local": Gaussian sigma (fraction of the image side) of the local mean the lesion may not change:
# 4 px at 96 px, half a ViT patch of 8 px (1/16 left the random-encoder probe at 0.57-0.62 AUC,
# 1/32 took the supervised CNN below 0.93; benchmarks/cxr_gaze_bench.py)
LOCAL_MATCH_SCALE = 1.0 / 24


def _match_histogram(img: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``img`` with its grey values replaced rank for rank by those of ``ref`` (same shape).

    The result has exactly ``ref``'s histogram (so every global intensity statistic of
    ``ref``) and ``img``'s order of pixels: a monotone remap, so local structure survives.
    """
    out = np.empty(img.size, dtype=img.dtype)
    out[np.argsort(img.ravel(), kind="stable")] = np.sort(ref.ravel())
    return out.reshape(img.shape)


def _match_local_mean(img: np.ndarray, ref: np.ndarray, sigma: float) -> np.ndarray:
    """``ref`` plus the high-pass part of ``d = img - ref``: ``d`` minus its Gaussian blur
    (``sigma`` px, reflecting borders).

    What is left of ``d`` sums to zero over the image, and nearly so over any region much wider
    than ``sigma`` (an 8-px ViT patch when ``sigma`` is 4 px): the lesion keeps its edges and
    texture but no longer brightens its region (up to the clipping to [0, 1]).
    """
    d = img - ref
    return np.clip(ref + d - gaussian_filter(d, sigma), 0, 1).astype(img.dtype)


def render_cxr(
    rng: np.random.Generator, size: int, lesion: str, *, gain: float = 1.0, grow: float = 1.0,
    match: str = "none",
) -> tuple[np.ndarray, np.ndarray, Anatomy, np.ndarray, tuple[float, float, float]]:
    """Render the image. Returns (image float32 [H, W] in [0, 1], lesion mask, anatomy,
    lung masks [2, H, W], lesion (u, v, radius) in anatomy coordinates).

    ``match="histogram"`` (abnormal images only): the same anatomy is also rendered without
    the lesion, through the same imaging chain (blur, window, gamma, vignetting, the same
    noise), and the abnormal image is histogram-matched to it. The lesion then changes no
    global intensity statistic (mean, spread, quantiles) of the image, only where the grey
    values sit. ``match="local"``: the lesion's difference to that lesion-free render is
    high-passed (minus its Gaussian blur of :data:`LOCAL_MATCH_SCALE` x size), so the lesion
    keeps its edges and texture but no longer brightens its region. The random draws are the
    same as with ``"none"``.
    """
    if match not in LESION_MATCHES:
        raise ValueError(f"match must be one of {LESION_MATCHES}, got {match!r}")
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

    an = Anatomy(
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
    att_free = att.copy() if (match != "none" and lesion != "none") else None
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
    blur = rng.uniform(0.4, 0.8) * size / 128
    lo, hi = rng.uniform(-0.03, 0.05), rng.uniform(0.8, 0.95)
    gamma = rng.uniform(0.85, 1.25)
    vignette = 1.0 - rng.uniform(0.0, 0.15) * ((u - 0.5) ** 2 + (v - 0.45) ** 2) * 2
    noise = noise_rng.standard_normal((size, size)).astype(f32)
    noise_amp = rng.uniform(0.008, 0.02)

    def chain(a: np.ndarray) -> np.ndarray:
        a = gaussian_filter(a.astype(f32), blur)
        out = np.clip((a - lo) / (hi - lo), 0, 1) ** gamma * vignette
        out += noise * noise_amp * np.sqrt(0.3 + out)
        return np.clip(out, 0, 1).astype(f32)

    img = chain(att)
    if att_free is not None and match == "histogram":
        img = _match_histogram(img, chain(att_free))
    elif att_free is not None:
        img = _match_local_mean(img, chain(att_free), LOCAL_MATCH_SCALE * size)
    return img, mask, an, lungs, center
