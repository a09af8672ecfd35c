"""Recipe pieces for few-label vessel segmentation, and the named ``finetune seg`` presets.

* :data:`RECIPES`: ``"default"`` (the historical settings) and ``"strong"`` (native
  resolution, dense patch training, X-ray augmentation with 90-degree rotations, elastic
  deformation and blur, poly schedule with warm-up, flip-averaged inference, dual-threshold
  hysteresis picked on validation) for ``unet`` and ``vit``; :func:`recipe_config` builds a
  :class:`~priormim.training.seg.config.SegFinetuneConfig` from one.
* :func:`hysteresis_mask`: dual-threshold post-processing (scikit-image's connected-component
  hysteresis, which is the fixed point of growing the strong seeds inside the weak mask).
* :func:`flip_tta`: logits averaged over the four flips of the input; :func:`dihedral_tta`: over
  all eight dihedral views (the four flips of the image and of its transpose).
* :func:`ensemble_probabilities`: mean probability of several models (seed ensemble).
* :func:`elastic_grid_offsets`: smooth random displacement fields for the paired augmentation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from priormim.errors import UserError

# Every preset, per model. Keys are SegFinetuneConfig fields; the caller's own values win.
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "default": {"unet": {}, "vit": {}},
    "strong": {
        # Native 300 px (no resize), random 128-px patches, 4 per image per epoch; flip-TTA,
        # hysteresis, poly decay. 120 epochs (1,560 steps of batch 8 on 26 images): at 30 the best
        # epoch was the last in every DCA1 fold; on fold 0's validation images 120 epochs reached
        # 0.771 DSC against 0.741 at 30, flat after epoch 105 (benchmarks/README.md). Measured cost:
        # 5.7 s per epoch with 2 threads on the otherwise idle 2-core box; 18-22 min per fold with
        # one thread while another job used the other core.
        "unet": dict(native=True, train_crop=128, crops_per_image=4, batch_size=8, epochs=120, warmup_epochs=2,
                     unet_base_channels=16, lr=1e-3, schedule="poly", augment_level="strong", tta=True,
                     hysteresis=True, val_every=5),
        # The ViT sees native pixels through 128-px windows (position embeddings built for the
        # window) and predicts by half-overlapping windows.
        "vit": dict(native=True, train_crop=128, crops_per_image=4, batch_size=8, epochs=60, warmup_epochs=5,
                    schedule="poly", augment_level="strong", tta=True, hysteresis=True, val_every=5),
    },
}


def recipe_overrides(recipe: str, model: str) -> dict[str, Any]:
    """The config values preset ``recipe`` sets for ``model`` (``"unet"`` or ``"vit"``)."""
    if recipe not in RECIPES:
        raise UserError(f"unknown --recipe {recipe!r}; use {' or '.join(RECIPES)}")
    return dict(RECIPES[recipe].get(model, {}))


def recipe_config(recipe: str, **kwargs: Any):
    """A :class:`SegFinetuneConfig` with preset ``recipe`` for ``kwargs['model']``; explicit
    ``kwargs`` override the preset (``None`` values count as not given)."""
    from priormim.training.seg.config import SegFinetuneConfig

    given = {k: v for k, v in kwargs.items() if v is not None}
    values = {**recipe_overrides(recipe, given.get("model", "vit")), **given, "recipe": recipe}
    return SegFinetuneConfig(**values)


def hysteresis_mask(prob: np.ndarray, *, low: float, high: float, connectivity: int = 2) -> np.ndarray:
    """``bool [H, W]``: pixels with ``prob > low`` connected to one with ``prob > high``.

    Thin distal branches often sit just under the single threshold while touching a confident
    trunk; isolated weak blobs (noise, catheter shadows) have no strong seed and drop out. The
    connected-component form is the fixed point of growing the strong seeds inside the weak mask
    (no iteration count to get wrong). ``connectivity`` 2: 8-neighbourhood, so a one-pixel
    diagonal vessel stays connected; 1: 4-neighbourhood, as
    ``skimage.filters.apply_hysteresis_threshold``.
    """
    from scipy import ndimage

    if not low <= high:
        raise ValueError(f"hysteresis needs low <= high, got {low}, {high}")
    weak = np.asarray(prob) > low
    labels, n = ndimage.label(weak, structure=ndimage.generate_binary_structure(2, connectivity))
    if n == 0:
        return weak
    keep = np.zeros(n + 1, bool)
    keep[np.unique(labels[np.asarray(prob) > high])] = True
    keep[0] = False
    return keep[labels]


def flip_tta(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Mean logits of ``model`` over the identity, horizontal, vertical and both flips of
    ``x [B, C, H, W]`` (each flipped back); one batched call of ``4B`` images."""
    b = x.shape[0]
    views = torch.cat([x, x.flip(-1), x.flip(-2), x.flip(-1, -2)])
    y = model(views).float()
    y0, yh, yv, yhv = y[:b], y[b : 2 * b].flip(-1), y[2 * b : 3 * b].flip(-2), y[3 * b :].flip(-1, -2)
    return (y0 + yh + yv + yhv) / 4


def dihedral_tta(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Mean logits of ``model`` over the eight dihedral views of ``x [B, C, H, W]`` (the four
    flips of ``x`` and of its transpose, each mapped back): the symmetry group of the square,
    which the strong recipe's flips + 90-degree turns train the model to respect. Two batched
    calls of ``4B`` images (the transposed views are ``W x H``)."""
    return (flip_tta(model, x) + flip_tta(model, x.transpose(-1, -2)).transpose(-1, -2)) / 2


def ensemble_probabilities(logits: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of ``sigmoid(logits)`` over models (e.g. 3 seeds), each ``[H, W]`` -> ``float32 [H, W]``."""
    if not logits:
        raise ValueError("no model outputs to ensemble")
    return np.mean([1.0 / (1.0 + np.exp(-np.asarray(lg, np.float64))) for lg in logits], axis=0).astype(np.float32)


def elastic_grid_offsets(b: int, h: int, w: int, *, alpha: float, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Smooth random displacements ``float32 [b, h, w, 2]`` in ``grid_sample`` units.

    As ``torchvision.transforms.v2.ElasticTransform``: uniform noise in [-1, 1] per pixel and
    axis, Gaussian-smoothed with ``sigma`` px, scaled to ``alpha`` px; batched (one depthwise
    convolution), and added to the affine grid so image and mask move together.
    """
    noise = torch.rand(b * 2, 1, h, w, generator=generator) * 2 - 1
    radius = max(1, min(int(3 * sigma), h - 1, w - 1))  # reflect padding needs radius < side
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    noise = F.conv2d(F.pad(noise, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    noise = F.conv2d(F.pad(noise, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))
    # Smoothing shrinks the noise; rescale so the peak displacement is about alpha px.
    noise = noise / noise.abs().amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    d = noise.view(b, 2, h, w).permute(0, 2, 3, 1) * alpha
    return d * torch.tensor([2.0 / w, 2.0 / h])  # px -> normalised [-1, 1] coordinates


def gaussian_blur_batch(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each ``x [B, 1, H, W]`` image with its own ``sigma [B]`` (px; 0 = unchanged), as
    one grouped convolution."""
    b = x.shape[0]
    s = sigma.clamp_min(1e-3).view(b, 1)
    radius = max(1, min(int(3 * float(sigma.max())), x.shape[-2] - 1, x.shape[-1] - 1))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device).view(1, -1)
    k = torch.exp(-0.5 * (t / s.to(x)) ** 2)
    k = k / k.sum(dim=1, keepdim=True)
    y = x.reshape(1, b, *x.shape[-2:])
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k.view(b, 1, 1, -1), groups=b)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.view(b, 1, -1, 1), groups=b)
    return y.view_as(x)
