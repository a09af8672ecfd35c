"""``priormim analyze RUN``: the mechanism metrics of one pretraining run on a held-out folder.

Written to ``OUT/`` (see :func:`analyze_run`):

* ``analysis.json``: the summary below, the protocol in words, and where every input came from;
* ``per_image.csv``: one row per image;
* ``reconstructions.png``: originals, fixed masks, reconstructions on the originals' grey scale,
  and the (first) segmentor's vessel map of the original and of the reconstruction.

Metrics (every run is scored on the same hidden patches, see :mod:`priormim.evaluation.mechanism`):

1. **vessel fidelity**: Dice, inside the hidden pixels, between the vessel map of the
   reconstruction and that of the original, for each frozen segmentor (``P > 0.5``) and for
   Sato (both cut at the original's 92nd-percentile response); PSNR of the reconstruction
   inside hidden vessel pixels and inside hidden background pixels.
2. **masking**: the run's own masking strategy (with its vessel prior, and the segmentor blend
   when the recipe has one) drawn ``draws`` times per image at training progress 0 and 1: the
   share of hidden patches that are vessel patches, against the share of vessel patches overall
   (what uniform random masking gives).
3. **token separability**: final-layer patch tokens of the encoder on the *unmasked* image
   (after the last norm, prefix tokens dropped), labelled vessel when >= 10 % of the patch is
   vessel; silhouette (Euclidean, stratified subsample), Calinski-Harabasz, Davies-Bouldin.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from priormim.errors import UserError

log = logging.getLogger(__name__)

PROTOCOL = {
    "fixed_masks": "uniform random patch masks, 75 % hidden, one per image, seeded and stored in the fixed-mask "
                   "file; every run analysed with the same file is scored on the same hidden patches",
    "reconstruction": "the decoder's prediction on hidden patches (norm-pix targets de-normalised with the visible "
                      "patch statistics), visible patches pasted from the original, de-normalised to [0, 1], clipped",
    "vessel_fidelity": "Dice inside the hidden pixels between vessel maps of reconstruction and original: each frozen "
                       "segmentor at P > 0.5 (dice_*) and as soft Dice of the probabilities (softdice_*, defined even when a briefly "
                       "trained segmentor never passes 0.5); Sato (sigmas 1-3, dark ridges) with both maps cut at the original's "
                       "92nd-percentile response",
    "psnr": "PSNR (dB, data range 1) of the reconstruction inside hidden vessel pixels and hidden background pixels; "
            "vessel = the ground-truth mask when --masks is given, else the first segmentor's map of the original, "
            "else Sato's",
    "masking": "the run's own masking strategy, drawn per image at training progress 0 and 1; share of hidden "
               "patches that are vessel patches vs the share of vessel patches (uniform random masking's expectation)",
    "tokens": "final-layer encoder patch tokens of the unmasked image (after the last norm, prefix tokens dropped); "
              "a patch is vessel when >= 10 % of its pixels are vessel (same vessel source as PSNR, pooled at the "
              "mask's resolution); silhouette (Euclidean) on a stratified fixed-seed subsample, Calinski-Harabasz and "
              "Davies-Bouldin on all tokens (scikit-learn)",
}


@dataclass
class AnalyzeResult:
    """What :func:`analyze_run` wrote. summary: the ``analysis.json`` content."""

    out: Path
    summary: dict
    per_image: list[dict]
    figure: Path


def _read_gt_masks(masks: Path, files: list[Path]) -> list[np.ndarray]:
    from priormim.io import list_images, read_mask

    by_stem = {p.stem: p for p in list_images(masks)}
    missing = [f.name for f in files if f.stem not in by_stem]
    if missing:
        raise UserError(f"has no mask for {missing[0]} ({len(missing)} image(s) without one); masks are matched by "
                        "file stem", masks)
    return [read_mask(by_stem[f.stem]) for f in files]


def own_segmentor_path(cfg, run: Path) -> Path | None:
    """The run's frozen segmentor file (consistency loss or segmentor-blended guidance), if on disk."""
    if not (cfg.consistency.enabled or cfg.masking.segmentor_weight > 0):
        return None
    path = Path(cfg.consistency.segmentor) if cfg.consistency.segmentor else run / "segmentor.safetensors"
    return path if path.is_file() else None


def _segmentors(cfg, run: Path, paths: list[Path]) -> list[tuple[str, torch.nn.Module]]:
    from priormim.models.segmentor import load_segmentor

    if not paths:
        own = own_segmentor_path(cfg, run)
        paths = [own] if own is not None else []
    out, used = [], set()
    for p in paths:
        name = p.stem if p.stem not in used else f"{p.stem}_{len(used)}"
        used.add(name)
        out.append((name, load_segmentor(p).eval()))
    return out


def _labels_from_map(vessel: Tensor, grid: tuple[int, int], threshold: float) -> np.ndarray:
    """bool ``[N * L]``: patch vessel fraction >= threshold, from ``[N, 1, H, W]`` maps."""
    import torch.nn.functional as F

    frac = F.adaptive_avg_pool2d(vessel.float(), grid)
    return (frac >= threshold).flatten().numpy()


@torch.no_grad()
def _masking_stats(cfg, model, prior: Tensor, guide_seg: Tensor | None, vessel_patch: Tensor, *, draws: int,
                   seed: int) -> dict[str, float]:
    """Hidden-vessel share of the run's own masking at progress 0 and 1 (``vessel_patch`` bool ``[N, L]``)."""
    from priormim.masking import MaskingContext, blend_guidance, build_masking, patch_prob_from_prior

    strategy = build_masking(cfg.masking.name, mask_ratio=cfg.masking.mask_ratio, **cfg.masking.kwargs)
    guide = prior
    if guide_seg is not None and cfg.masking.segmentor_weight > 0:
        guide = blend_guidance(prior, guide_seg, cfg.masking.segmentor_weight)
    pp = patch_prob_from_prior(guide, model.patch_size)  # [N, L]
    n, length = pp.shape
    gen = torch.Generator().manual_seed(seed)
    vp = vessel_patch.float().repeat_interleave(draws, dim=0)
    stats = {"vessel_patch_share": float(vessel_patch.float().mean())}
    for tag, progress in (("start", 0.0), ("end", 1.0)):
        ctx = MaskingContext(batch_size=n * draws, grid_size=model.grid_size,
                             patch_prior=pp.repeat_interleave(draws, dim=0), progress=progress, generator=gen)
        m = strategy(ctx).float()
        stats[f"masked_vessel_share_{tag}"] = float((m * vp).sum() / m.sum().clamp_min(1))
    ref = stats["vessel_patch_share"]
    for tag in ("start", "end"):
        stats[f"masking_enrichment_{tag}"] = stats[f"masked_vessel_share_{tag}"] / ref if ref > 0 else math.nan
    return stats


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else math.nan


@torch.no_grad()
def analyze_run(
    run: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    masks: str | Path | None = None,
    segmentors: list[str | Path] | None = None,
    fixed_masks_path: str | Path | None = None,
    n: int | None = None,
    seed: int = 0,
    figure_images: int = 4,
    draws: int = 64,
    max_silhouette: int = 2000,
    batch_size: int = 16,
    priors: str | Path | None = None,
) -> AnalyzeResult:
    """Score one run's reconstructions, masking and tokens on the images of ``images``.

    Args:
        run: a ``priormim pretrain --out`` folder (MAE-family model: MAE, VasoMIM and its
            ablations, VP-MIM).
        images: held-out images (never the pretraining pool); the first ``n`` (sorted) are used.
        masks: ground-truth vessel masks (same stems); without them the vessel regions come from
            the first segmentor's (else Sato's) map of the original.
        segmentors: frozen segmentor files scoring the reconstructions; default: the run's own
            consistency segmentor when it has one. Pass the *same* files for every run compared.
        fixed_masks_path: the shared mask file (drawn and saved when absent); default
            ``OUT/fixed_masks.npz``. Pass the same file for every run compared.
        draws: masks drawn per image and training stage for the masking statistics.
    """
    from priormim.evaluation.separability import VESSEL_PATCH_FRACTION, clustering_scores, patch_labels
    from priormim.evaluation.figures import mask_to_image, reconstruct
    from priormim.evaluation.mechanism import (fixed_masks, patch_mask_to_pixels, region_dice, region_psnr,
                                               region_soft_dice, sato_maps)
    from priormim.evaluation.visualize import RunVisuals, _load_priors, _resize, visuals_figure
    from priormim.io import list_images, read_gray
    from priormim.models.mae import MaskedAutoencoder, encode_tokens
    from priormim.outputs import check_writable_dir

    t0 = time.time()
    run, images, out = Path(run), Path(images), Path(out)
    model = MaskedAutoencoder.from_run(run)
    cfg = model.run_config
    if cfg.data.norm_mean is None or cfg.data.norm_std is None:
        raise UserError("config.yaml has no data.norm_mean/norm_std; the run has not started training", run / "config.yaml")
    if model.in_chans != 1:
        raise UserError(f"analyze scores grey images; this run has in_chans={model.in_chans}", run / "config.yaml")
    files = list_images(images)
    if not files:
        raise UserError("holds no images", images)
    files = files[: n] if n else files
    check_writable_dir(out)
    names = [f.name for f in files]
    originals = [read_gray(f) for f in files]
    gt = _read_gt_masks(Path(masks), files) if masks is not None else None
    size, p, grid = cfg.model.img_size, model.patch_size, model.grid_size
    mean, std = float(cfg.data.norm_mean), float(cfg.data.norm_std)
    image01 = _resize(originals, size).clamp(0, 1)
    fm_path = Path(fixed_masks_path) if fixed_masks_path is not None else out / "fixed_masks.npz"
    hidden = fixed_masks(fm_path, names, grid=grid, seed=seed)  # [N, L]
    hidden_px = patch_mask_to_pixels(hidden, grid, p)

    recon, tokens = [], []
    for s in range(0, len(files), batch_size):
        x = (image01[s : s + batch_size] - mean) / std
        recon.append((reconstruct(model, x, hidden[s : s + batch_size]) * std + mean).clamp(0, 1))
        tok = encode_tokens(model.encoder, x)[:, model.num_prefix_tokens :]
        tokens.append(tok.float().reshape(-1, tok.shape[-1]))
    recon = torch.cat(recon)
    features = torch.cat(tokens).numpy()

    segs = _segmentors(cfg, run, [Path(s) for s in (segmentors or [])])
    seg_maps: dict[str, tuple[Tensor, Tensor]] = {}
    for name, seg in segs:
        seg_maps[name] = (torch.sigmoid(seg(image01)), torch.sigmoid(seg(recon)))
    sato_orig, sato_rec = sato_maps(image01, recon)

    if gt is not None:
        vessel = _resize([g.astype(np.float32) for g in gt], size) >= 0.5
        vessel_source = f"ground truth ({masks})"
        labels = np.concatenate([patch_labels(g, grid) for g in gt])
    else:
        if seg_maps:
            first = next(iter(seg_maps))
            vessel, vessel_source = seg_maps[first][0] > 0.5, f"segmentor {first} on the original"
        else:
            vessel, vessel_source = sato_orig, "Sato on the original"
        labels = _labels_from_map(vessel, grid, VESSEL_PATCH_FRACTION)

    per_image: dict[str, np.ndarray] = {}
    for name, (po, pr) in seg_maps.items():
        per_image[f"dice_{name}"] = region_dice(po > 0.5, pr > 0.5, hidden_px).numpy()
        per_image[f"softdice_{name}"] = region_soft_dice(po, pr, hidden_px).numpy()
    per_image["dice_sato"] = region_dice(sato_orig, sato_rec, hidden_px).numpy()
    per_image["psnr_vessel"] = region_psnr(recon, image01, hidden_px & vessel).numpy()
    per_image["psnr_background"] = region_psnr(recon, image01, hidden_px & ~vessel).numpy()
    per_image["psnr_hidden"] = region_psnr(recon, image01, hidden_px).numpy()

    prior_list, prior_source = _load_priors(cfg, run, images, files, originals, None if priors is None else Path(priors))
    prior = (_resize(prior_list, size, nearest=True) > 0.5).float()
    guide_seg = None
    own_path = own_segmentor_path(cfg, run) if cfg.masking.segmentor_weight > 0 else None
    if own_path is not None:
        from priormim.models.segmentor import load_segmentor

        guide_seg = torch.sigmoid(load_segmentor(own_path).eval()(image01))
    vessel_patch = torch.from_numpy(labels.reshape(len(files), -1))
    masking = _masking_stats(cfg, model, prior, guide_seg, vessel_patch, draws=draws, seed=seed)
    if cfg.masking.segmentor_weight > 0 and cfg.data.prior == "vessel" and guide_seg is None:
        masking["note"] = "the recipe blends its segmentor into the guidance, but the run's segmentor was not used: prior only"
    clusters = clustering_scores(features, labels, max_silhouette=max_silhouette, seed=seed).to_dict()

    summary = {
        "run": str(run), "method": cfg.method, "epoch": int(model.run_epoch) + 1, "images": str(images),
        "n_images": len(files), "img_size": size, "patch_size": p,
        "fixed_masks": str(fm_path), "fixed_mask_seed": seed, "segmentors": [str(s) for s in (segmentors or [])]
        or ([f"{name} (the run's own)" for name, _ in segs]), "vessel_source": vessel_source,
        "prior_source": prior_source,
        "fidelity": {k: _nanmean(v) for k, v in per_image.items()},
        "masking": masking, "tokens": clusters, "protocol": PROTOCOL,
    }
    rows = [{"image": nm, **{k: float(v[i]) for k, v in per_image.items()}} for i, nm in enumerate(names)]
    k = max(1, min(figure_images, len(files)))
    first = next(iter(seg_maps.values()), None)
    vis = RunVisuals(names=names[:k], image=image01[:k], prior=prior[:k], mask=mask_to_image(hidden[:k], model),
                     recon=recon[:k], seg_image=None if first is None else first[0][:k],
                     seg_recon=None if first is None else first[1][:k], prior_source=prior_source)
    fig = visuals_figure(vis, out / "reconstructions.png",
                         title=f"{run.name} ({cfg.method}, epoch {summary['epoch']}): fixed masks {fm_path.name}, "
                               f"segmentor {next(iter(seg_maps), 'none')}")
    summary["seconds"] = round(time.time() - t0, 1)
    _write(out, summary, rows)
    return AnalyzeResult(out=out, summary=summary, per_image=rows, figure=fig)


def _write(out: Path, summary: dict, rows: list[dict]) -> None:
    import io

    from priormim.io import atomic_write_bytes

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    atomic_write_bytes(out / "per_image.csv", buf.getvalue().encode())
    atomic_write_bytes(out / "analysis.json", (json.dumps(summary, indent=2, default=float) + "\n").encode())


def read_analysis(out: str | Path) -> tuple[dict, list[dict]]:
    """``(summary, per-image rows)`` of an ``analyze`` output folder."""
    out = Path(out)
    summary = json.loads((out / "analysis.json").read_text(encoding="utf-8"))
    with open(out / "per_image.csv", encoding="utf-8", newline="") as f:
        rows = [{k: (v if k == "image" else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]
    return summary, rows


__all__ = ["AnalyzeResult", "PROTOCOL", "analyze_run", "read_analysis"]
