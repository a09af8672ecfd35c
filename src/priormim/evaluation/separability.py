"""Token separability of vessel vs background patches (the VasoMIM paper's clustering view).

Pure functions on features and masks, used by ``priormim analyze`` and the bench report (both
import them from here; :mod:`priormim.benchmark.analysis` re-exports them).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["VESSEL_PATCH_FRACTION", "ClusteringScores", "clustering_scores", "patch_labels"]

# A patch is "vessel" when at least this share of its pixels is vessel in the ground truth,
# else "background". 10 % of a patch is about a 1-pixel-wide vessel crossing an 8 x 8 patch.
VESSEL_PATCH_FRACTION = 0.10


@dataclass
class ClusteringScores:
    """Cluster quality of vessel vs background patch tokens (NaN when a class is missing)."""

    silhouette: float  # [-1, 1], higher = better separated
    calinski_harabasz: float  # >= 0, higher = better separated
    davies_bouldin: float  # >= 0, lower = better separated
    n_patches: int
    n_vessel: int
    n_silhouette: int  # patches in the silhouette subsample

    def to_dict(self) -> dict:
        return asdict(self)


def clustering_scores(features: np.ndarray, labels: np.ndarray, *, max_silhouette: int = 2000,
                      seed: int = 0) -> ClusteringScores:
    """Silhouette (on a fixed-seed subsample of at most ``max_silhouette`` points, stratified
    so both classes keep their share), Calinski-Harabasz and Davies-Bouldin (all points).

    Args:
        features: ``[N, D]``.
        labels: ``[N]`` 0/1 (or any two classes).
    """
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).astype(int).reshape(-1)
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"features must be [N, D] with N = len(labels), got {x.shape} and {y.shape}")
    n = len(y)
    if len(np.unique(y)) < 2 or n < 3:
        return ClusteringScores(math.nan, math.nan, math.nan, n, int(y.sum()), 0)
    rng = np.random.default_rng(seed)
    if n > max_silhouette:
        idx = []
        for c in np.unique(y):  # stratified: each class keeps its share (at least 2 points)
            members = np.flatnonzero(y == c)
            k = max(2, round(max_silhouette * len(members) / n))
            idx.append(rng.choice(members, size=min(k, len(members)), replace=False))
        idx = np.sort(np.concatenate(idx))
    else:
        idx = np.arange(n)
    return ClusteringScores(
        silhouette=float(silhouette_score(x[idx], y[idx])),
        calinski_harabasz=float(calinski_harabasz_score(x, y)),
        davies_bouldin=float(davies_bouldin_score(x, y)),
        n_patches=n,
        n_vessel=int(y.sum()),
        n_silhouette=len(idx),
    )


def patch_labels(mask: np.ndarray, grid: tuple[int, int], threshold: float = VESSEL_PATCH_FRACTION) -> np.ndarray:
    """``bool [gh * gw]``: vessel patches of a ground-truth mask at its original resolution.

    Each patch covers ``1 / grid`` of the image; its vessel fraction is the mean of the mask
    over that region (adaptive average pooling).
    """
    m = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    frac = F.adaptive_avg_pool2d(m, grid)[0, 0]
    return (frac >= threshold).flatten().numpy()
