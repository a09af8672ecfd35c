"""Downstream evaluation metrics (Dice, clDice, precision/recall, AUC): :mod:`priormim.metrics`.

The metrics are pure functions that the training loops use too, so they live below the
training layer; this module keeps their names importable from here.
"""

from priormim.metrics import (  # noqa: F401 - re-exported
    SEGMENTATION_KEYS,
    SegmentationMeter,
    binary_auc,
    cldice_score,
    dice_score,
    mean_std,
    multiclass_auc,
    multilabel_auc,
    precision_recall,
    segmentation_metrics,
)

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
