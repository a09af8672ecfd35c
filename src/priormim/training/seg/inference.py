"""Inference: sliding windows, logits at original size, post-processing, scoring, threshold choice."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from priormim.errors import UserError
from priormim.models.seg import NormStats
from priormim.training.seg.config import THRESHOLD_GRID
from priormim.training.seg.data import SegSample, resize_image


@dataclass(frozen=True)
class PostProcess:
    """How a segmenter's logits become a mask (stored under ``"postprocess"`` in ``config.json``).

    ``threshold``: probability cut (``sigmoid(logit) > threshold``). ``fov``: ``"collimator"``
    sets predictions outside the X-ray field of view to background: the flat regions touching
    the image frame (collimator, shutters) grown by ``fov_margin`` px, found by
    :func:`priormim.priors.vessel.collimator_mask` on the image at its original size. Hand-drawn
    vessel masks never reach into the collimator, while every learned model tends to mark its
    edge (a dark step edge looks like a vessel wall); the vesselness baseline drops the same
    region. ``"none"`` keeps every prediction. ``low``: with a value (``< threshold``),
    dual-threshold hysteresis: pixels above ``low`` are kept where they connect to a pixel above
    ``threshold`` (:func:`priormim.training.seg.recipe.hysteresis_mask`).
    """

    threshold: float = 0.5
    fov: str = "none"
    fov_margin: int = 8
    low: float | None = None

    @classmethod
    def from_config(cls, model_config: dict[str, Any]) -> PostProcess:
        """From a ``config.json`` dict; configs written before post-processing existed get the
        old behaviour (threshold 0.5, no field-of-view mask)."""
        d = model_config.get("postprocess") or {}
        low = d.get("low")
        return cls(threshold=float(d.get("threshold", 0.5)), fov=str(d.get("fov", "none")), fov_margin=int(d.get("fov_margin", 8)),
                   low=None if low is None else float(low))

    def to_dict(self) -> dict[str, Any]:
        d = {"threshold": self.threshold, "fov": self.fov, "fov_margin": self.fov_margin}
        return d if self.low is None else {**d, "low": self.low}

    def outside_fov(self, image: np.ndarray) -> np.ndarray | None:
        """``bool [H, W]``: True where predictions are dropped, or None without a FOV mask."""
        if self.fov == "none":
            return None
        from priormim.priors.vessel import collimator_mask

        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
        return collimator_mask(x, margin=self.fov_margin)[0, 0].numpy()

    def apply(self, logits: np.ndarray, image: np.ndarray, *, outside: np.ndarray | None = None) -> np.ndarray:
        """``float [H, W]`` logits of ``image`` -> ``bool [H, W]`` mask. ``outside``: the
        image's :meth:`outside_fov`, when the caller already has it (it depends on the image
        only, so validation computes it once per run, not once per epoch or threshold)."""
        if self.low is not None and self.low < self.threshold:
            from priormim.training.seg.recipe import hysteresis_mask

            def logit(p: float) -> float:
                return math.log(p / (1 - p))

            mask = hysteresis_mask(logits, low=logit(self.low), high=logit(self.threshold))
        else:
            mask = logits > math.log(self.threshold / (1 - self.threshold))  # sigmoid(l) > t
        if outside is None:
            outside = self.outside_fov(image)
        return mask if outside is None else mask & ~outside

def _autocast(device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def sliding_window_logits(model: nn.Module, x: torch.Tensor, *, window: int, batch_size: int = 16) -> torch.Tensor:
    """Logits of ``model`` over ``[B, C, H, W]`` ``x`` from ``window x window`` tiles.

    Tiles start every ``window // 2`` px (the image is replicate-padded on the right and bottom
    so that they cover it exactly); overlapping logits are averaged. Extraction and
    re-assembly are ``F.unfold`` / ``F.fold``, so there is no Python loop over tiles; the model
    runs on ``batch_size`` tiles at a time. Returns ``float32 [B, 1, H, W]``.
    """
    b, c, h, w = x.shape
    if window >= max(h, w):
        return model(x).float()
    stride = max(1, window // 2)
    # Smallest padded size >= the image that the tiles cover exactly: window + k * stride.
    hp, wp = (window + math.ceil(max(0, n - window) / stride) * stride for n in (h, w))
    xp = F.pad(x, (0, wp - w, 0, hp - h), mode="replicate") if (hp, wp) != (h, w) else x
    cols = F.unfold(xp, kernel_size=window, stride=stride)  # [B, C*window*window, L]
    n = cols.shape[-1]
    tiles = cols.transpose(1, 2).reshape(b * n, c, window, window)
    logits = torch.cat([model(tiles[i : i + batch_size]).float() for i in range(0, len(tiles), batch_size)])
    logits = logits.reshape(b, n, window * window).transpose(1, 2)
    summed = F.fold(logits, output_size=(hp, wp), kernel_size=window, stride=stride)
    count = F.fold(torch.ones_like(logits[:1]), output_size=(hp, wp), kernel_size=window, stride=stride)
    return (summed / count)[..., :h, :w]


def _chunks(images: Sequence[np.ndarray], size: int, *, same_shape: bool) -> list[list[np.ndarray]]:
    """Consecutive batches of at most ``size`` images; with ``same_shape`` a batch also ends
    where the image shape changes (native-resolution inputs are stacked unresized)."""
    out: list[list[np.ndarray]] = []
    for im in images:
        if out and len(out[-1]) < size and (not same_shape or out[-1][0].shape == im.shape):
            out[-1].append(im)
        else:
            out.append([im])
    return out


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: Sequence[np.ndarray],
    *,
    img_size: int | None,
    norm: NormStats,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    window: int | None = None,
    tta: bool = False,
    tta_dihedral: bool = False,
) -> list[np.ndarray]:
    """Vessel logits at each image's original size.

    Each ``[H, W]`` image in [0, 1] is resized to ``img_size`` (bilinear; ``None``: native
    resolution, no resize), normalised, run through ``model`` (whole, or with ``window`` tile by
    tile, see :func:`sliding_window_logits`; ``tta``: averaged over the four flips, see
    :func:`priormim.training.seg.recipe.flip_tta`; ``tta_dihedral``: over the eight dihedral
    views, see :func:`~priormim.training.seg.recipe.dihedral_tta`); the logits are resized back to ``[H, W]``
    (bilinear). Returns ``float32 [H, W]`` arrays (``> 0`` means vessel).
    """
    from priormim.training.seg.recipe import dihedral_tta, flip_tta

    model.eval()
    device = torch.device(device)
    out: list[np.ndarray] = []

    def run(x: torch.Tensor) -> torch.Tensor:
        if window:
            return sliding_window_logits(model, x, window=window, batch_size=4 * batch_size)
        return model(x).float()

    for chunk in _chunks(images, batch_size, same_shape=img_size is None):
        x = torch.cat([resize_image(torch.from_numpy(np.ascontiguousarray(im, dtype=np.float32))[None, None], img_size or im.shape)
                       for im in chunk])
        x = ((x - norm.mean) / norm.std).to(device)
        with _autocast(device):
            logits = (dihedral_tta(run, x) if tta_dihedral else flip_tta(run, x) if tta else run(x)).float().cpu()
        if not bool(torch.isfinite(logits).all()):
            raise UserError("the model's outputs are NaN or infinite: training diverged (lower --lr) or the "
                            "weights are damaged; a DSC from them would be meaningless")
        for lg, im in zip(logits, chunk):
            out.append(F.interpolate(lg[None], size=im.shape, mode="bilinear", align_corners=False)[0, 0].numpy())
    return out


def tta_settings(model_config: dict[str, Any]) -> dict[str, bool]:
    """The test-time averaging a saved segmenter's ``config.json`` asks for, as keyword
    arguments of :func:`predict_logits` (older configs have no ``tta_dihedral``: flips only)."""
    return {"tta": bool(model_config.get("tta")), "tta_dihedral": bool(model_config.get("tta_dihedral"))}


def predict_masks(
    model: nn.Module,
    images: Sequence[np.ndarray],
    model_config: dict[str, Any],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
) -> list[np.ndarray]:
    """Vessel masks ``bool [H, W]`` of ``[H, W]`` images in [0, 1], at their original size, as a
    saved segmenter's ``config.json`` prescribes (input size, normalisation, window,
    :class:`PostProcess`). The one path from a saved model to a mask: predict, evaluate, the
    bench report and the figures all use it."""
    size = model_config.get("img_size")
    logits = predict_logits(model, images, img_size=None if size is None else int(size), norm=NormStats(**model_config["norm"]),
                            device=device, batch_size=batch_size, window=model_config.get("window"), **tta_settings(model_config))
    post = PostProcess.from_config(model_config)
    return [post.apply(lg, im) for lg, im in zip(logits, images)]


def score_masks(masks: Sequence[np.ndarray], samples: Sequence[SegSample]) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """``(summary, per_image)`` of predicted masks against the samples' ground truth (see
    :class:`priormim.evaluation.metrics.SegmentationMeter`)."""
    from priormim.metrics import SegmentationMeter

    meter = SegmentationMeter()
    for pred, s in zip(masks, samples):
        meter.update(pred[None], s.mask[None], names=[s.name])
    return meter.summary(), meter.per_image()


def evaluate_samples(
    model: nn.Module,
    samples: Sequence[SegSample],
    *,
    img_size: int | None,
    norm: NormStats,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    window: int | None = None,
    tta: bool = False,
    tta_dihedral: bool = False,
    post: PostProcess = PostProcess(),
) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Score ``model`` on ``samples`` at original resolution: ``(summary, per_image)`` as from
    :class:`priormim.evaluation.metrics.SegmentationMeter`."""
    logits = predict_logits(model, [s.image for s in samples], img_size=img_size, norm=norm, device=device, batch_size=batch_size,
                            window=window, tta=tta, tta_dihedral=tta_dihedral)
    return score_masks([post.apply(lg, s.image) for lg, s in zip(logits, samples)], samples)


def val_dice(model: nn.Module, samples: Sequence[SegSample], *, post: PostProcess = PostProcess(),
             outside: Sequence[np.ndarray | None] | None = None, **kwargs: Any) -> float:
    """Mean Dice at original resolution (no clDice: cheap enough for every epoch). ``outside``:
    the samples' precomputed :meth:`PostProcess.outside_fov` masks, if any."""
    from priormim.metrics import dice_score

    logits = predict_logits(model, [s.image for s in samples], **kwargs)
    outside = outside if outside is not None else [None] * len(samples)
    return float(np.mean([dice_score(post.apply(lg, s.image, outside=out), s.mask)[0]
                          for lg, out, s in zip(logits, outside, samples)]))


def pick_threshold(
    model: nn.Module, samples: Sequence[SegSample], *, post: PostProcess, grid: Sequence[float] = THRESHOLD_GRID, **kwargs: Any
) -> tuple[float, dict[float, float]]:
    """The probability threshold from ``grid`` with the best mean Dice on ``samples`` (the
    validation split; ties go to the threshold nearest 0.5). ``kwargs`` go to
    :func:`predict_logits`. Returns ``(threshold, {threshold: mean Dice})``."""
    from priormim.metrics import dice_score

    logits = predict_logits(model, [s.image for s in samples], **kwargs)
    outside = [post.outside_fov(s.image) for s in samples]  # once, not once per threshold
    scores = {}
    for t in grid:
        cut = replace(post, threshold=float(t))
        scores[float(t)] = float(np.mean([
            dice_score(cut.apply(lg, s.image, outside=out), s.mask)[0] for lg, out, s in zip(logits, outside, samples)
        ]))
    best = max(scores, key=lambda t: (round(scores[t], 9), -abs(t - 0.5)))
    return best, scores


HYSTERESIS_GAPS = (0.1, 0.2, 0.3)  # low = high - gap, tried on val next to the single cut


def pick_postprocess(
    model: nn.Module, samples: Sequence[SegSample], *, post: PostProcess, grid: Sequence[float] = THRESHOLD_GRID,
    hysteresis: bool = False, **kwargs: Any
) -> tuple[PostProcess, dict[str, float]]:
    """The threshold (and with ``hysteresis`` the low threshold) with the best mean Dice of
    ``model`` on ``samples`` (the validation split); ``kwargs`` go to :func:`predict_logits`.
    See :func:`choose_postprocess`."""
    logits = predict_logits(model, [s.image for s in samples], **kwargs)
    return choose_postprocess(logits, samples, post=post, grid=grid, hysteresis=hysteresis)


def choose_postprocess(
    logits: Sequence[np.ndarray], samples: Sequence[SegSample], *, post: PostProcess, grid: Sequence[float] = THRESHOLD_GRID,
    hysteresis: bool = False
) -> tuple[PostProcess, dict[str, float]]:
    """The threshold (and with ``hysteresis`` the low threshold, ``high - gap`` for each gap in
    :data:`HYSTERESIS_GAPS`, or none) with the best mean Dice of ``logits [H, W]`` against
    ``samples`` (the validation split). Ties go to the simpler rule (no hysteresis), then to
    the threshold nearest 0.5. Returns ``(post-processing, {"<high>" or "<high>/<low>": mean Dice})``."""
    from priormim.metrics import dice_score

    outside = [post.outside_fov(s.image) for s in samples]  # once, not once per candidate
    candidates = [replace(post, threshold=float(t), low=None) for t in grid]
    if hysteresis:
        candidates += [replace(post, threshold=float(t), low=round(float(t) - g, 2)) for t in grid for g in HYSTERESIS_GAPS
                       if t - g >= 0.05]
    scores: dict[str, float] = {}
    best, best_key = None, None
    for cut in candidates:
        d = float(np.mean([dice_score(cut.apply(lg, s.image, outside=out), s.mask)[0] for lg, out, s in zip(logits, outside, samples)]))
        scores[f"{cut.threshold:.2f}" if cut.low is None else f"{cut.threshold:.2f}/{cut.low:.2f}"] = d
        key = (round(d, 9), cut.low is None, -abs(cut.threshold - 0.5))
        if best_key is None or key > best_key:
            best, best_key = cut, key
    return best, scores
