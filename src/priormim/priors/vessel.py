"""Vessel prior: a thresholded Sato vessel mask of angiograms (VasoMIM).

:func:`vessel_mask` filters a batch with :func:`priormim.priors.sato.vesselness` and keeps
one connected component of the strongest responses, by one of two recipes
(:data:`PRESETS`): ``"official"``, the official VasoMIM code (XA-SSL ``frangi_filter.py``:
8-bit response, border cleared, ``>=`` the 92nd percentile, 4-connected component of the
strongest pixel), and ``"priormim"`` (collimator regions dropped, ``>`` the percentile,
border cleared afterwards, 8-connected component with the largest summed response).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from priormim.priors.components import component_labels
from priormim.priors.sato import _check_image_batch, vesselness

__all__ = [
    "KEEP_MODES",
    "PRESETS",
    "PRESET_DEFAULTS",
    "collimator_mask",
    "component_labels",
    "effective_border",
    "official_threshold",
    "threshold_vesselness",
    "vessel_mask",
    "vesselness",
]

KEEP_MODES = ("strongest", "seeded", "largest", "all")
PRESETS = ("official", "priormim")
# What each preset does when ``keep`` / ``collimator`` are not given (see :func:`vessel_mask`).
PRESET_DEFAULTS: dict[str, dict[str, object]] = {
    "official": {"keep": "seeded", "collimator": False},
    "priormim": {"keep": "strongest", "collimator": True},
}


def _running_max(x: Tensor, size: int, dim: int) -> Tensor:
    """Centred running maximum of odd width ``size`` along ``dim`` (edges see only the image).

    Sparse-table doubling: ``ceil(log2(size))`` elementwise maxima of shifted views. CPU
    ``max_pool2d`` computes argmax indices as well and was 5-20x slower here.
    """
    r = size // 2
    n = x.shape[dim]
    pad = [0, 0] * (x.ndim - 1 - dim) + [r, r]
    m = F.pad(x, pad, value=-math.inf)  # length n + 2r
    span = 1
    while 2 * span <= size:  # m[i] = max of the `span` samples starting at i
        m = torch.maximum(m.narrow(dim, 0, m.shape[dim] - span), m.narrow(dim, span, m.shape[dim] - span))
        span *= 2
    return torch.maximum(m.narrow(dim, 0, n), m.narrow(dim, size - span, n))


def _max_filter(x: Tensor, size: int) -> Tensor:
    """``size x size`` maximum filter of ``x [B, C, H, W]`` (square max filters separate)."""
    return _running_max(_running_max(x, size, dim=3), size, dim=2)


def effective_border(border: int, height: int, width: int) -> int:
    """Border frame actually cleared: ``border`` clamped below a quarter of the short side,
    so small images (tests, thumbnails) keep their centre."""
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    return min(int(border), (min(height, width) - 1) // 4)


def _percentile_rows(flat: Tensor, percentile: float) -> Tensor:
    """Per-row percentile of ``flat [B, N]`` with numpy's default linear interpolation.

    ``kthvalue`` instead of ``torch.quantile``: the latter refuses inputs above 2**24
    elements (a batch of 16 megapixel images)."""
    n = flat.shape[1]
    pos = percentile / 100.0 * (n - 1)
    lo = int(math.floor(pos))
    frac = pos - lo
    v_lo = flat.kthvalue(lo + 1, dim=1).values
    if frac == 0.0 or lo + 1 >= n:
        return v_lo
    v_hi = flat.kthvalue(lo + 2, dim=1).values
    return v_lo + frac * (v_hi - v_lo)


def collimator_mask(
    x: Tensor,
    *,
    margin: int = 8,
    window: int = 5,
    tol: float = 2 / 255,
    max_fraction: float = 0.5,
    method: str = "auto",
) -> Tensor:
    """Flat regions touching the image frame (collimator blades, round field-of-view
    corners, shutters), grown by ``margin`` pixels.

    Sato responds to step edges as well as to tubes: the dark side of a collimator edge
    scores as high as a large vessel, and on DCA1 angiograms the strongest response often
    sits on the round field-of-view edge. A pixel is flat when the intensity range of its
    ``window x window`` neighbourhood is at most ``tol`` (default 2 grey levels of 8 bits:
    collimators in exported angiograms are nearly constant; on DCA1 0.5 and 1 level missed
    parts of them, 3 levels took in image content); flat 8-connected regions that touch the outermost pixel frame and whose
    mean lies at or below the image's 5th or at or above its 95th percentile are the
    collimator. An image whose "collimator" would
    cover more than ``max_fraction`` of it is just smooth (e.g. synthetic), and gets none.
    The test assumes X-ray noise inside the field of view: on noise-free synthetic images
    with bright smooth gradients it can take in some background, so pass
    ``collimator=False`` to :func:`vessel_mask` there.

    Args:
        x: images ``[B, 1, H, W]`` floating point in ``[0, 1]``.
        margin: pixels the region is grown by (about twice the largest Sato sigma covers
            the edge response).
        window, tol, max_fraction: flatness test, see above.
        method: connected-component backend, see :func:`component_labels`.

    Returns:
        ``bool [B, 1, H, W]``: True where responses should be ignored.
    """
    _check_image_batch(x, "x")
    if margin < 0 or window < 1 or window % 2 == 0:
        raise ValueError(f"need margin >= 0 and an odd window >= 1, got margin={margin}, window={window}")
    b, _, h, w = x.shape
    pad = window // 2
    hi = _max_filter(x, window)
    lo = -_max_filter(-x, window)
    flat = (hi - lo) <= tol
    labels = component_labels(flat, method=method).view(b, h * w)
    frame = torch.ones(h, w, dtype=torch.bool, device=x.device)
    frame[1:-1, 1:-1] = False
    # A region qualifies when it touches the frame and its mean grey value is at an end of
    # the image's histogram (collimator: dark; burnt-out: bright). Smooth image content is
    # locally flat too, but sits in the middle of the histogram.
    values = x.reshape(b, h * w)
    sums = torch.zeros(b, h * w + 1, dtype=x.dtype, device=x.device).scatter_add_(1, labels, values)
    counts = torch.zeros_like(sums).scatter_add_(1, labels, torch.ones_like(values))
    mean = sums / counts.clamp_min(1)
    sample = values[:, :: max(1, (h * w) // 65536)]  # rough percentiles are plenty here
    lo_q = _percentile_rows(sample, 5.0)[:, None]
    hi_q = _percentile_rows(sample, 95.0)[:, None]
    qualifies = (mean <= lo_q + tol) | (mean >= hi_q - tol)
    touching = torch.zeros(b, h * w + 1, dtype=torch.bool, device=x.device)
    touching.scatter_(1, labels[:, frame.view(-1)], True)
    qualifies &= touching
    qualifies[:, 0] = False
    coll = qualifies.gather(1, labels).view(b, 1, h, w)
    coll &= coll.float().mean(dim=(1, 2, 3), keepdim=True) <= max_fraction
    grow = margin + pad  # flat marks window centres; grow back to the window, then margin
    if grow > 0:
        coll = _max_filter(coll.to(x.dtype), 2 * grow + 1) > 0
    return coll


def _check_keep(keep: str) -> None:
    if keep not in KEEP_MODES:
        raise ValueError(f"keep must be one of {KEEP_MODES}, got {keep!r}")


def _zero_border(x: Tensor, border: int) -> Tensor:
    """``x [B, 1, H, W]`` with a frame of :func:`effective_border` pixels set to 0 / False."""
    h, w = x.shape[-2:]
    e = effective_border(border, h, w)
    if e == 0:
        return x
    frame = torch.ones(h, w, dtype=torch.bool, device=x.device)
    frame[e : h - e, e : w - e] = False
    return x.masked_fill(frame, 0)


def _select_components(mask: Tensor, score: Tensor, keep: str, *, connectivity: int, method: str) -> Tensor:
    """Keep components of ``mask [B, 1, H, W]`` by ``keep`` (see :func:`threshold_vesselness`),
    with ``score [B, H*W]`` the response; returns ``bool [B, 1, H, W]``."""
    if keep == "all":
        return mask
    b, _, h, w = mask.shape
    labels = component_labels(mask, method=method, connectivity=connectivity).view(b, h * w)
    on = mask.view(b, h * w)
    if keep == "seeded":  # argmax returns the first maximum in row-major order
        seed = torch.where(on, score, torch.full_like(score, -math.inf)).argmax(dim=1, keepdim=True)
        chosen = labels.gather(1, seed)  # 0 when the mask is empty
    else:  # per-component totals in one batched scatter; argmax takes the smallest label on ties
        weight = score if keep == "strongest" else torch.ones_like(score)
        weight = torch.where(on, weight, torch.zeros_like(weight))
        totals = torch.zeros(b, h * w + 1, dtype=weight.dtype, device=weight.device)
        totals.scatter_add_(1, labels, weight)
        totals[:, 0] = 0
        chosen = totals.argmax(dim=1, keepdim=True)
    return ((labels == chosen) & (chosen > 0)).view(b, 1, h, w)


def threshold_vesselness(
    response: Tensor,
    *,
    percentile: float = 92,
    border: int = 20,
    keep: str = "strongest",
    exclude: Tensor | None = None,
    method: str = "auto",
) -> Tensor:
    """Turn a vesselness response into a vessel mask (the ``priormim`` preset's rule).

    Steps, per image: set the response to 0 where ``exclude`` is True (e.g.
    :func:`collimator_mask`); keep pixels strictly above the ``percentile``-th percentile
    of the whole image; clear a frame of :func:`effective_border` pixels; then filter
    8-connected components:

    * ``"strongest"``: the component with the largest summed response (the main vessel
      tree: long and contrasted);
    * ``"seeded"``: the component holding the single strongest remaining pixel;
    * ``"largest"``: the component with the most pixels;
    * ``"all"``: no filtering.

    Ties go to the component whose last pixel (row-major) comes first.

    Args:
        response: ``[B, 1, H, W]`` floating point, e.g. from :func:`vesselness`.
        percentile: in ``[0, 100)``; 92 keeps about 8% of the pixels before filtering.
        border: frame width in pixels (collimator edges).
        keep: one of :data:`KEEP_MODES`.
        exclude: optional ``bool [B, 1, H, W]`` (or broadcastable) pixels to ignore.
        method: connected-component backend, see :func:`component_labels`.

    Returns:
        ``bool [B, 1, H, W]`` on the response's device.
    """
    _check_image_batch(response, "response")
    if not 0 <= percentile < 100:
        raise ValueError(f"percentile must be in [0, 100), got {percentile}")
    _check_keep(keep)
    b, _, h, w = response.shape
    if exclude is not None:
        response = response.masked_fill(exclude.to(device=response.device, dtype=torch.bool), 0.0)
    flat = response.reshape(b, h * w)
    thr = _percentile_rows(flat, float(percentile))
    mask = _zero_border((flat > thr[:, None]).view(b, 1, h, w), border)
    return _select_components(mask, flat, keep, connectivity=8, method=method)


def official_threshold(
    response: Tensor,
    *,
    percentile: float = 92,
    border: int = 20,
    keep: str = "seeded",
    exclude: Tensor | None = None,
    method: str = "auto",
) -> Tensor:
    """Turn a Sato response in 8-bit grey levels into a vessel mask, as the official VasoMIM
    code does (``frangi_filter.py`` of XA-SSL with ``border=20``, ``percentile=92``).

    Steps, per image: truncate the response to whole grey levels in ``[0, 255]`` (numpy's
    ``astype(np.uint8)``); set it to 0 where ``exclude`` is True (the official code has no
    such step: pass None); clear a frame of :func:`effective_border` pixels (the whole
    ``border`` on images of at least ``4 * border + 1`` pixels a side); keep the non-zero
    pixels at or above (``>=``) the ``percentile``-th percentile of the border-cleared
    image; then filter 4-connected components by ``keep`` (see
    :func:`threshold_vesselness`). ``"seeded"`` is the official region growing: the
    component that holds the first (row-major) pixel of the largest value.

    Args:
        response: ``[B, 1, H, W]`` floating point, the Sato response of images in grey
            levels ``0..255`` (not ``[0, 1]``).
        percentile, border, exclude, method: see :func:`threshold_vesselness`.
        keep: one of :data:`KEEP_MODES`, default ``"seeded"``.

    Returns:
        ``bool [B, 1, H, W]`` on the response's device.
    """
    _check_image_batch(response, "response")
    if not 0 <= percentile < 100:
        raise ValueError(f"percentile must be in [0, 100), got {percentile}")
    _check_keep(keep)
    b, _, h, w = response.shape
    # float64 holds every grey level exactly, so the percentile interpolates as numpy does.
    levels = response.double().clamp(0, 255).floor_()
    if exclude is not None:
        levels = levels.masked_fill(exclude.to(device=response.device, dtype=torch.bool), 0.0)
    flat = _zero_border(levels, border).reshape(b, h * w)
    thr = _percentile_rows(flat, float(percentile))
    mask = ((flat >= thr[:, None]) & (flat > 0)).view(b, 1, h, w)
    return _select_components(mask, flat, keep, connectivity=4, method=method)


def _grey_level_vesselness(x: Tensor, sigmas: Sequence[float], black_ridges: bool) -> Tensor:
    """Sato response of ``x [B, 1, H, W]`` in ``[0, 1]`` after quantising it to 8-bit grey
    levels (as :func:`priormim.io.to_uint8`: ``round(x * 255)`` clipped to ``0..255``), in
    grey-level units, float64 ``[B, 1, H, W]``.

    Truncating to whole levels afterwards makes values within rounding error of an integer
    matter. On CUDA the filter runs in float64 (equal to scikit-image's float64 result on
    all 40 DCA1 images). On CPU torch's float64 convolutions are ~40x slower than float32,
    so it runs in float32 on the levels shifted by -128 (Sato ignores constant offsets;
    smaller magnitudes halve the rounding error): on DCA1, 1 pixel in 3.6 million lands one
    level off scikit-image's.
    """
    levels = torch.round(x.double() * 255.0).clamp_(0, 255)
    if x.device.type == "cuda":
        work = levels
    else:
        work = (levels - 128.0).float()
    return vesselness(work, sigmas=sigmas, black_ridges=black_ridges).double()


def vessel_mask(
    x: Tensor,
    percentile: float = 92,
    border: int = 20,
    keep: str | None = None,
    sigmas: Sequence[float] = (1, 2, 3, 4),
    black_ridges: bool = True,
    collimator: bool | None = None,
    method: str = "auto",
    *,
    preset: str = "official",
) -> Tensor:
    """Binary vessel prior of a batch of angiograms.

    Two recipes (:data:`PRESETS`):

    * ``"official"`` (default): the official VasoMIM code (XA-SSL ``frangi_filter.py``).
      The images are quantised to 8-bit grey levels (``round(x * 255)``, as
      :func:`priormim.io.to_uint8` does, so 16-bit and DICOM inputs are reduced to 8 bits
      first, like the official ``PIL convert('L')``), filtered by :func:`vesselness` in grey
      levels, then :func:`official_threshold`: the response truncated to whole levels, the
      border cleared, ``>=`` the percentile, and the 4-connected component of the strongest
      pixel.
    * ``"priormim"``: :func:`vesselness` of the ``[0, 1]`` images, responses next to the
      collimator dropped (:func:`collimator_mask`, margin ``ceil(2 * max(sigmas))``), then
      :func:`threshold_vesselness`: ``>`` the percentile of the whole image, border cleared
      afterwards, the 8-connected component with the largest summed response.

    Args:
        x: images ``[B, 1, H, W]`` floating point in ``[0, 1]``.
        percentile, border: see :func:`threshold_vesselness`.
        keep: one of :data:`KEEP_MODES`; None takes the preset's (``"seeded"`` for
            official, ``"strongest"`` for priormim, see :data:`PRESET_DEFAULTS`).
        sigmas, black_ridges: see :func:`vesselness`.
        collimator: ignore responses at flat frame-touching regions; None takes the
            preset's (False for official, True for priormim).
        method: connected-component backend, see :func:`component_labels`.
        preset: ``"official"`` or ``"priormim"``.

    Returns:
        ``bool [B, 1, H, W]`` on ``x``'s device.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    _check_image_batch(x, "x")
    keep = str(PRESET_DEFAULTS[preset]["keep"]) if keep is None else keep
    collimator = bool(PRESET_DEFAULTS[preset]["collimator"]) if collimator is None else collimator
    exclude = None
    if collimator:
        margin = int(math.ceil(2 * max(float(s) for s in sigmas)))
        exclude = collimator_mask(x.float(), margin=margin, method=method)
    kw = dict(percentile=percentile, border=border, keep=keep, exclude=exclude, method=method)
    if preset == "official":
        return official_threshold(_grey_level_vesselness(x, sigmas, black_ridges), **kw)
    response = vesselness(x, sigmas=sigmas, black_ridges=black_ridges).float()
    return threshold_vesselness(response, **kw)
