"""Analyses of pretraining runs: masked-vessel share, masking frequency, feature clustering.

* :func:`vessel_share_curves`: the share of masked patches that contain vessel, per epoch,
  from each run's ``history.json`` (logged by the pretraining engine).
* :func:`masking_frequency_maps`: draw many masks with a recipe's masking strategy from one
  image's vessel prior at given training progress values and average them per patch.
* :func:`patch_features` + :func:`clustering_scores`: final-layer patch tokens of an exported
  encoder on test images, labelled vessel / background from the ground-truth mask
  (:data:`VESSEL_PATCH_FRACTION`), scored with silhouette, Calinski-Harabasz and
  Davies-Bouldin (scikit-learn). High silhouette / CH and low DB mean vessel and background
  tokens form separate groups: the encoder "knows" where vessels are without fine-tuning.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

from priormim.evaluation.separability import (  # noqa: F401 - re-exported (bench report, tests)
    VESSEL_PATCH_FRACTION,
    ClusteringScores,
    clustering_scores,
    patch_labels,
)

EARLY, LATE = 0.0, 1.0  # training progress of the "early" and "late" masking-frequency maps


# ----------------------------------------------------------------------------------------------
# (a) masked-vessel share


def read_history(run_dir: Path) -> list[dict]:
    """Per-epoch records of a pretraining run (``history.json``), or [] when absent."""
    path = Path(run_dir) / "history.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []


def vessel_share_curves(histories: dict[str, list[list[dict]]]) -> dict[str, np.ndarray]:
    """``{method: [seeds, epochs]}`` of masked-vessel share; methods or seeds whose history
    lacks the key are dropped; seeds are cut to the shortest history."""
    out = {}
    for method, per_seed in histories.items():
        rows = [[h["masked_vessel_share"] for h in hist] for hist in per_seed
                if hist and all("masked_vessel_share" in h for h in hist)]
        if rows:
            n = min(len(r) for r in rows)
            out[method] = np.array([r[:n] for r in rows], dtype=np.float64)
    return out


def random_masking_reference(histories: dict[str, list[list[dict]]]) -> float | None:
    """Share of vessel patches among all patches of the pretraining batches (``vessel_patch_share``
    in the logs, averaged over methods, seeds and epochs): the masked-vessel share uniform random
    masking gives on average. None when no history logs it or no run had a vessel prior."""
    from priormim.evaluation.figures import random_masking_reference as per_run_reference

    return per_run_reference({f"{m}/{i}": hist for m, per_seed in histories.items() for i, hist in enumerate(per_seed)})


# ----------------------------------------------------------------------------------------------
# (b) masking frequency


@torch.no_grad()
def masking_frequency_maps(
    strategy,
    prior: torch.Tensor,
    *,
    patch_size: int,
    progress_values: Sequence[float] = (EARLY, LATE),
    draws: int = 256,
    seed: int = 0,
) -> np.ndarray:
    """How often each patch is masked, for one image's vessel prior.

    Args:
        strategy: a :class:`priormim.masking.MaskingStrategy`.
        prior: ``[H, W]`` or ``[1, 1, H, W]`` vessel prior (0/1 or soft), ``H, W`` divisible
            by ``patch_size``.
        progress_values: training progress (0 = first epoch, 1 = last) of each map.
        draws: masks averaged per map.

    Returns:
        ``float [len(progress_values), H / patch, W / patch]`` in ``[0, 1]``.
    """
    from priormim.masking import MaskingContext, patch_prob_from_prior

    prior = prior.float().reshape(1, 1, *prior.shape[-2:])
    grid = (prior.shape[-2] // patch_size, prior.shape[-1] // patch_size)
    pp = patch_prob_from_prior(prior, patch_size).expand(draws, -1).contiguous()
    gen = torch.Generator().manual_seed(seed)
    maps = []
    for progress in progress_values:
        ctx = MaskingContext(batch_size=draws, grid_size=grid, patch_prior=pp, progress=float(progress), generator=gen)
        maps.append(strategy(ctx).float().mean(0).reshape(grid).numpy())
    return np.stack(maps)


def vessel_patches(prior: torch.Tensor, patch_size: int) -> np.ndarray:
    """``bool [gh, gw]``: patches holding any prior pixel (the engine's "contains vessel")."""
    prior = prior.float().reshape(1, 1, *prior.shape[-2:])
    return (F.max_pool2d(prior, patch_size) > 0)[0, 0].numpy()


def masking_enrichment(freq: np.ndarray, vessel: np.ndarray) -> float:
    """Mean masking frequency on vessel patches / on background patches (1 = no preference)."""
    if not vessel.any() or vessel.all():
        return math.nan
    return float(freq[vessel].mean() / max(freq[~vessel].mean(), 1e-12))


def load_example(image_path: Path, prior_dir: Path, img_size: int) -> tuple[np.ndarray, torch.Tensor]:
    """An image ``[S, S]`` in [0, 1] and its cached prior ``[S, S]`` resized to the model size."""
    from priormim.io import read_gray
    from priormim.priors.cache import load_prior
    from priormim.training.finetune_seg import resize_image, resize_mask

    img = resize_image(torch.from_numpy(read_gray(image_path))[None, None], img_size)[0, 0]
    prior = resize_mask(torch.from_numpy(load_prior(prior_dir, image_path))[None, None], img_size)[0, 0]
    return img.numpy(), prior.float()


# ----------------------------------------------------------------------------------------------
# (c) clustering of patch features


@torch.no_grad()
def patch_features(
    encoder_path: Path | None,
    samples: Sequence,
    *,
    backbone: str,
    img_size: int,
    model_kwargs: dict,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Final-layer patch tokens (after the encoder's last norm, prefix tokens dropped) of
    every test image, and their vessel labels.

    ``encoder_path=None`` gives a randomly initialised encoder (seeded), the reference a
    pretrained encoder should beat. Images are normalised with the encoder file's grey-level
    statistics (else those of ``samples``).

    Returns ``(features [N * L, D] float32, labels [N * L] bool)``.
    """
    from priormim.models.seg import create_vit_encoder
    from priormim.training.finetune_seg import compute_norm_stats, resize_image

    torch.manual_seed(seed)
    model, norm = create_vit_encoder(backbone, encoder_path=encoder_path, img_size=img_size, drop_path_rate=0.0,
                                     model_kwargs=dict(model_kwargs))
    model.to(device).eval()
    norm = norm or compute_norm_stats([s.image for s in samples])
    grid = tuple(model.patch_embed.grid_size)
    feats, labels = [], []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        x = torch.cat([resize_image(torch.from_numpy(np.ascontiguousarray(s.image, dtype=np.float32))[None, None], img_size)
                       for s in chunk])
        x = ((x - norm.mean) / norm.std).to(device)
        tokens = model.forward_features(x)[:, model.num_prefix_tokens :]
        feats.append(tokens.float().cpu().reshape(-1, tokens.shape[-1]).numpy())
        labels.extend(patch_labels(s.mask, grid) for s in chunk)
    return np.concatenate(feats), np.concatenate(labels)


def pca_2d(features: np.ndarray) -> np.ndarray:
    """First two principal components ``[N, 2]`` (for the feature scatter plot)."""
    x = features - features.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T
