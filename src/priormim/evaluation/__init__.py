"""Downstream evaluation: segmentation (Dice, clDice) and classification (AUC) metrics."""

from priormim.evaluation.metrics import (
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
    "SegmentationMeter",
    "binary_auc",
    "cldice_score",
    "dice_score",
    "mean_std",
    "multiclass_auc",
    "multilabel_auc",
    "precision_recall",
    "segmentation_metrics",
]
