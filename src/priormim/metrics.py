"""Downstream evaluation metrics: vessel segmentation (Dice, clDice) and classification (AUC).

Segmentation metrics take a predicted and a reference mask, each of shape ``[B, H, W]``,
``[H, W]`` (one image) or ``[B, 1, H, W]`` (channel squeezed), as ``torch.Tensor`` or
``np.ndarray``. Boolean inputs are used as they are; any other dtype (probabilities,
0/1 or 0/255 integers) is thresholded: values ``> 0.5`` are foreground. Multi-channel
masks ``[B, C>1, H, W]`` are rejected with ``ValueError``: convert class maps to one binary
vessel mask first. Every segmentation metric returns ``float64 [B]``, one value per image.

Empty masks are handled explicitly (no NaN, no epsilon smoothing):

* Dice / clDice: both empty -> 1.0 (nothing to find, nothing found); exactly one empty -> 0.0.
* precision: empty prediction -> 1.0 if the reference is empty too, else 0.0.
* recall: empty reference -> 1.0 if the prediction is empty too, else 0.0.

Classification metrics wrap ``torchmetrics.functional`` AUROC and return plain floats;
labels for which AUC is undefined (only one class present) give NaN instead of
torchmetrics' silent 0.0.

Pure functions of masks and scores, so they sit low (beside the losses): the training loops
score their validation sets with them and :mod:`priormim.evaluation.metrics` re-exports them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch
from skimage.morphology import skeletonize
from torch import Tensor

__all__ = [
    "dice_score",
    "cldice_score",
    "precision_recall",
    "segmentation_metrics",
    "SegmentationMeter",
    "binary_auc",
    "multilabel_auc",
    "multiclass_auc",
    "mean_std",
]

SEGMENTATION_KEYS = ("dice", "cldice", "precision", "recall")


# --------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------


def _as_mask_batch(x: Tensor | np.ndarray, name: str) -> np.ndarray:
    """Convert a mask to ``bool [B, H, W]`` (see module docstring for accepted shapes)."""
    if isinstance(x, Tensor):
        # Threshold on the device first: cheaper transfer, and numpy has no bfloat16.
        x = (x.detach() if x.dtype == torch.bool else x.detach() > 0.5).cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[None]
    elif x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}: masks must be single-channel "
                "[B, H, W] or [B, 1, H, W]; reduce multi-channel output to one binary mask first"
            )
        x = x[:, 0]
    elif x.ndim != 3:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected [H, W], [B, H, W] or [B, 1, H, W]")
    if x.dtype != np.bool_:
        x = x > 0.5
    return x


def _pair(pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = _as_mask_batch(pred, "pred")
    t = _as_mask_batch(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} and target shape {t.shape} differ (after squeezing the channel)")
    return p, t


def _overlap_ratio(num: np.ndarray, den: np.ndarray, empty_value: np.ndarray) -> np.ndarray:
    """``num / den`` per image, ``empty_value`` where ``den == 0``."""
    out = np.asarray(empty_value, dtype=np.float64).copy()
    np.divide(num, den, out=out, where=den > 0)
    return out


def _counts(p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    axes = (1, 2)
    inter = np.logical_and(p, t).sum(axis=axes, dtype=np.int64)
    return inter, p.sum(axis=axes, dtype=np.int64), t.sum(axis=axes, dtype=np.int64)


def _dice_from_counts(inter: np.ndarray, ps: np.ndarray, ts: np.ndarray) -> np.ndarray:
    # Both empty -> 1.0; exactly one empty -> 2*0/(n>0) = 0.0 from the formula itself.
    return _overlap_ratio(2.0 * inter, ps + ts, np.ones(inter.shape))


def _pr_from_counts(inter: np.ndarray, ps: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    precision = _overlap_ratio(inter, ps, (ts == 0).astype(np.float64))
    recall = _overlap_ratio(inter, ts, (ps == 0).astype(np.float64))
    return precision, recall


def dice_score(pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> np.ndarray:
    """Dice similarity coefficient ``2|P∩T| / (|P|+|T|)`` per image.

    Args:
        pred, target: masks ``[B, H, W]``, ``[H, W]`` or ``[B, 1, H, W]``; bool, or thresholded
            at ``> 0.5``.

    Returns:
        ``float64 [B]``. Both masks empty -> 1.0; exactly one empty -> 0.0.
    """
    p, t = _pair(pred, target)
    return _dice_from_counts(*_counts(p, t))


def precision_recall(pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel precision ``|P∩T|/|P|`` and recall ``|P∩T|/|T|`` per image.

    Returns:
        ``(precision, recall)``, each ``float64 [B]``. Empty prediction -> precision 1.0 if the
        reference is empty, else 0.0; empty reference -> recall 1.0 if the prediction is
        empty, else 0.0.
    """
    p, t = _pair(pred, target)
    return _pr_from_counts(*_counts(p, t))


def _skeleton(mask: np.ndarray) -> np.ndarray:
    if not mask.any():
        return mask
    skel = skeletonize(mask)
    # skimage reduces any non-empty blob to at least one pixel; guard anyway so that a
    # non-empty mask never counts as "empty" in clDice.
    return skel if skel.any() else mask


def _cldice_one(p: np.ndarray, t: np.ndarray) -> float:
    p_any, t_any = bool(p.any()), bool(t.any())
    if not p_any and not t_any:
        return 1.0
    if p_any != t_any:
        return 0.0
    sp, st = _skeleton(p), _skeleton(t)
    tprec = np.logical_and(sp, t).sum() / sp.sum()
    tsens = np.logical_and(st, p).sum() / st.sum()
    if tprec + tsens == 0:
        return 0.0
    return float(2.0 * tprec * tsens / (tprec + tsens))


def _cldice(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    # Skeletonisation is per image (skimage has no batched version).
    return np.array([_cldice_one(pi, ti) for pi, ti in zip(p, t)], dtype=np.float64)


def cldice_score(pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> np.ndarray:
    """Centerline Dice (Shit et al., CVPR 2021) per image.

    ``Tprec = |S(P) ∩ T| / |S(P)|``, ``Tsens = |S(T) ∩ P| / |S(T)|``,
    ``clDice = 2·Tprec·Tsens / (Tprec + Tsens)`` with ``S`` = ``skimage.morphology.skeletonize``.

    Hand-written rather than taken from MONAI because MONAI's clDice has had argument-order
    (pred/target swapped between Tprec and Tsens) and single-channel bugs.

    Args:
        pred, target: masks ``[B, H, W]``, ``[H, W]`` or ``[B, 1, H, W]``; bool, or thresholded
            at ``> 0.5``.

    Returns:
        ``float64 [B]``. Both masks empty -> 1.0; exactly one empty -> 0.0; ``Tprec + Tsens == 0``
        -> 0.0. A non-empty mask whose skeleton came out empty uses the mask itself as skeleton.
    """
    p, t = _pair(pred, target)
    return _cldice(p, t)


def segmentation_metrics(pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """All segmentation metrics per image.

    Returns:
        ``{"dice", "cldice", "precision", "recall"}`` -> ``float64 [B]`` each (see the
        individual functions for the empty-mask conventions).
    """
    p, t = _pair(pred, target)
    counts = _counts(p, t)
    precision, recall = _pr_from_counts(*counts)
    return {"dice": _dice_from_counts(*counts), "cldice": _cldice(p, t), "precision": precision, "recall": recall}


def _dist_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@dataclass
class SegmentationMeter:
    """Accumulates per-image segmentation metrics over batches (MONAI-style).

    Example::

        meter = SegmentationMeter()
        for batch in loader:
            meter.update(logits.sigmoid(), batch["mask"], names=batch["name"])
        print(meter.summary()["dice"]["mean"])

    Under ``torch.distributed`` every rank calls :meth:`update` on its shard; :meth:`per_image`
    and :meth:`summary` gather the records of all ranks (``all_gather_object``, so every rank
    must call them). ``DistributedSampler`` pads the last shard with repeated samples; a record
    whose name already came from a lower rank is dropped, so pass real image names to get an
    exact evaluation. Without names, images are named ``"<index>"`` (``"r<rank>_<index>"``
    under distributed), counted from 0 since the last :meth:`reset`.
    """

    records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def update(
        self,
        pred: Tensor | np.ndarray,
        target: Tensor | np.ndarray,
        names: list[str] | None = None,
    ) -> None:
        """Add one batch. ``pred``/``target`` as for :func:`segmentation_metrics`; ``names`` has length B."""
        values = segmentation_metrics(pred, target)
        batch = len(values["dice"])
        if names is None:
            rank, world = _dist_world()
            prefix = f"r{rank}_" if world > 1 else ""
            start = len(self.records)
            names = [f"{prefix}{start + i}" for i in range(batch)]
        else:
            names = [str(n) for n in names]
            if len(names) != batch:
                raise ValueError(f"got {len(names)} names for a batch of {batch} masks")
        for i, name in enumerate(names):
            self.records.append({"name": name, **{k: float(values[k][i]) for k in SEGMENTATION_KEYS}})

    def per_image(self) -> list[dict[str, Any]]:
        """``[{"name", "dice", "cldice", "precision", "recall"}, ...]`` in rank order, then update order."""
        _, world = _dist_world()
        if world == 1:
            return [dict(r) for r in self.records]
        gathered: list[list[dict[str, Any]] | None] = [None] * world
        torch.distributed.all_gather_object(gathered, self.records)
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for rank_records in gathered:
            rank_records = rank_records or []
            out.extend(dict(r) for r in rank_records if r["name"] not in seen)
            seen.update(r["name"] for r in rank_records)
        return out

    def summary(self) -> dict[str, dict[str, float]]:
        """``{metric: {"mean", "std", "n"}}`` over all images (sample std, see :func:`mean_std`)."""
        rows = self.per_image()
        out: dict[str, dict[str, float]] = {}
        for key in SEGMENTATION_KEYS:
            mean, std = mean_std([r[key] for r in rows])
            out[key] = {"mean": mean, "std": std, "n": len(rows)}
        return out

    def reset(self) -> None:
        self.records.clear()


# --------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------


def _as_tensor(x: Tensor | np.ndarray | Iterable, *, dtype: torch.dtype) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().cpu().to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _quiet(fn, *args, **kwargs) -> Tensor:
    # torchmetrics warns (and returns 0) for degenerate labels; those are set to NaN by the
    # callers, so the warning is noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args, **kwargs)


def binary_auc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve for a binary task.

    Args:
        scores: ``[N]`` probabilities or logits (only their order matters).
        labels: ``[N]`` in ``{0, 1}``.

    Returns:
        AUC as a float; NaN if ``labels`` holds only one class (AUC undefined).

    Raises:
        ValueError: a score is NaN or infinite.
    """
    from torchmetrics.functional.classification import binary_auroc

    s = _as_tensor(scores, dtype=torch.float32).reshape(-1)
    y = _as_tensor(labels, dtype=torch.long).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores {tuple(s.shape)} and labels {tuple(y.shape)} differ in size")
    if not bool(torch.isfinite(s).all()):
        # NaN scores have no order: any AUC (0.0 from torchmetrics) would be made up.
        raise ValueError(f"{int((~torch.isfinite(s)).sum())} of {s.numel()} scores are NaN or infinite (a diverged model?)")
    if y.numel() == 0 or bool((y == y[0]).all()):
        return math.nan
    return float(_quiet(binary_auroc, s, y))


def multilabel_auc(scores: Tensor, labels: Tensor) -> tuple[float, list[float]]:
    """Per-label AUC and their mean for a multi-label task (e.g. the 14 ChestX-ray14 findings).

    Args:
        scores: ``[N, C]`` probabilities or logits.
        labels: ``[N, C]`` in ``{0, 1}``.

    Returns:
        ``(mean_auc, per_label_auc)``. A label with only one class present among the N samples
        has undefined AUC: it is reported as NaN and left out of the mean. The mean is NaN if
        every label is degenerate.
    """
    from torchmetrics.functional.classification import multilabel_auroc

    s = _as_tensor(scores, dtype=torch.float32)
    y = _as_tensor(labels, dtype=torch.long)
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"scores {tuple(s.shape)} and labels {tuple(y.shape)} must both be [N, C]")
    num_labels = s.shape[1]
    positives = y.sum(dim=0)
    valid = (positives > 0) & (positives < y.shape[0])
    if num_labels == 1:  # torchmetrics needs >= 2 labels
        per_label = [binary_auc(s[:, 0], y[:, 0])]
    else:
        per = _quiet(multilabel_auroc, s, y, num_labels=num_labels, average=None)
        per_label = [float(a) if ok else math.nan for a, ok in zip(per.tolist(), valid.tolist())]
    present = [a for a in per_label if not math.isnan(a)]
    mean = float(np.mean(present)) if present else math.nan
    return mean, per_label


def multiclass_auc(scores: Tensor, labels: Tensor) -> float:
    """Macro one-vs-rest AUC for a single-label task with K >= 2 classes.

    Args:
        scores: ``[N, K]`` probabilities, or logits (torchmetrics applies a softmax when the
            values leave [0, 1]).
        labels: ``[N]`` class indices in ``[0, K)``.

    Returns:
        Mean over classes of the one-vs-rest AUC. Classes absent from ``labels`` (or present
        in every sample) have undefined AUC and are left out of the mean; NaN if none is left.
    """
    from torchmetrics.functional.classification import multiclass_auroc

    s = _as_tensor(scores, dtype=torch.float32)
    y = _as_tensor(labels, dtype=torch.long).reshape(-1)
    if s.ndim != 2 or s.shape[0] != y.shape[0]:
        raise ValueError(f"scores {tuple(s.shape)} must be [N, K] with N = len(labels) = {y.shape[0]}")
    num_classes = s.shape[1]
    if num_classes < 2:
        raise ValueError(f"scores have {num_classes} column; multiclass_auc needs K >= 2 classes")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}); got [{int(y.min())}, {int(y.max())}]")
    counts = torch.bincount(y, minlength=num_classes)
    valid = (counts > 0) & (counts < y.shape[0])
    if not bool(valid.any()):
        return math.nan
    per = _quiet(multiclass_auroc, s, y, num_classes=num_classes, average=None)
    return float(per[valid].mean())


def mean_std(values: Iterable[float] | np.ndarray | Tensor) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) of a sequence of numbers.

    Returns:
        ``(mean, std)``; std is 0.0 for a single value; ``(nan, nan)`` for no values.
    """
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        return math.nan, math.nan
    if arr.size == 1:
        return float(arr[0]), 0.0
    return float(arr.mean()), float(arr.std(ddof=1))
