"""Scoring saved segmenters on other data sets, and the training-free vesselness baseline."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from priormim.errors import UserError
from priormim.io import atomic_write_bytes
from priormim.training.distributed import resolve_device
from priormim.training.results import aggregate_runs, prediction_notes, seen_in_training, write_results_table
from priormim.training.seg.data import load_samples
from priormim.training.seg.inference import predict_masks, score_masks
from priormim.training.seg.model_io import _pick_model_dir, load_segmenter

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# Evaluation of saved models and the vesselness baseline


def evaluate_saved_model(model_dir: str | Path, test_dir: str | Path, out_dir: str | Path, *, device: str = "auto",
                         names: Sequence[str] | None = None, progress: bool = False) -> dict[str, Any]:
    """Score a saved segmenter on another data set (cross-data-set transfer).

    ``model_dir``: a seed folder, or a fine-tuning output folder (every ``seed*`` in it is
    scored). Writes ``<out_dir>/<seed>/metrics.json`` (or ``<out_dir>/metrics.json`` for one
    model) and ``results.md``/``.csv``; returns ``{"rows": [...], "run_dirs": [...]}``.
    ``progress``: a tqdm bar over the models scored.
    """
    from priormim.training.loop import progress_bar

    from priormim.data.readers import read_segmentation_folder

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    dev = resolve_device(device)
    if (model_dir / "config.json").is_file():
        model_dirs = [model_dir]
    else:
        model_dirs = sorted(p for p in model_dir.glob("seed*") if (p / "config.json").is_file())
        if not model_dirs:
            _pick_model_dir(model_dir)  # raises the UserError
    pairs = read_segmentation_folder(test_dir, check_binary=False)
    if names is not None:
        pairs = [p for p in pairs if p.name in set(names)]
    samples = load_samples(pairs)
    run_dirs, notes = [], []
    bar = progress_bar(len(model_dirs), f"evaluate ({len(samples)} images)", enabled=progress)
    for md in model_dirs:
        seen = seen_in_training(md, Path(test_dir), {s.name for s in samples})
        if seen:
            notes.append(f"{md.name}: {len(seen)} of {len(samples)} images were this model's training or validation "
                         f"images (its split.json), e.g. {seen[0]}: those scores are optimistic")
        model, mc = load_segmenter(md, device=dev)
        masks = predict_masks(model, [s.image for s in samples], mc, device=dev)
        notes += [f"{md.name}: {n}" for n in prediction_notes(masks, [s.mask for s in samples])]
        summary, per_image = score_masks(masks, samples)
        run_dir = out_dir / md.name if len(model_dirs) > 1 else out_dir
        seed = None
        try:
            seed = json.loads((md / "metrics.json").read_text())["seed"]
        except (OSError, ValueError, KeyError):
            pass
        metrics = {"method": mc.get("method", md.name), "seed": seed, "model_dir": str(md), "test_dir": str(test_dir),
                   "test": {"summary": summary, "per_image": per_image}}
        atomic_write_bytes(run_dir / "metrics.json", json.dumps(metrics, indent=2).encode("utf-8"))
        log.info("%s on %s: DSC %.4f, clDice %.4f", md, test_dir, summary["dice"]["mean"], summary["cldice"]["mean"])
        run_dirs.append(run_dir)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    rows = aggregate_runs(run_dirs)
    md_path, _ = write_results_table(rows, out_dir, title=f"Vessel segmentation on {Path(test_dir).name}")
    for note in notes:
        log.warning("%s", note)
    if notes:
        text = md_path.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + "\n".join(f"**Warning:** {n}." for n in notes)
        atomic_write_bytes(md_path, (text + "\n").encode("utf-8"))
    return {"rows": rows, "run_dirs": run_dirs, "notes": notes}


def baseline_mask(image: np.ndarray, *, method: str = "sato", percentile: float = 92.0, border: int = 20,
                  sigmas: Sequence[float] = (1, 2, 3, 4), keep: str = "all") -> np.ndarray:
    """Thresholded vesselness of one ``[H, W]`` image in [0, 1] -> ``bool [H, W]``.

    ``sato``: :func:`priormim.priors.vessel.vessel_mask`; ``frangi``: ``skimage.filters.frangi``
    (dark ridges) through the same percentile / border / connected-component logic.
    """
    from priormim.priors.vessel import threshold_vesselness, vessel_mask

    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    if method == "sato":
        # The documented Sato baseline (collimator-aware, priormim preset), not the pretraining prior.
        m = vessel_mask(x, percentile=percentile, border=border, keep=keep, sigmas=sigmas, preset="priormim")
    elif method == "frangi":
        from skimage.filters import frangi

        resp = frangi(image.astype(np.float64), sigmas=tuple(sigmas), black_ridges=True)
        resp = torch.from_numpy(np.nan_to_num(resp).astype(np.float32))[None, None]
        m = threshold_vesselness(resp, percentile=percentile, border=border, keep=keep)
    else:
        raise UserError(f"unknown vesselness method {method!r}; use sato or frangi")
    return m[0, 0].numpy()


def run_vesselness_baseline(
    test_dir: str | Path,
    out_dir: str | Path,
    method: str = "sato",
    *,
    percentile: float = 92.0,
    border: int = 20,
    keep: str = "all",
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Score thresholded vesselness (no training) on ``test_dir`` (``images/`` + ``masks/``).

    ``keep`` picks the connected components kept (see
    :func:`priormim.priors.vessel.threshold_vesselness`): ``"all"`` is the default because on
    DCA1's train + val images the ``"seeded"`` tree starts on the circular collimator edge in
    13 of 30 angiograms (Dice 0); with percentile 92: all 0.667, largest 0.623, seeded 0.340.
    ``names`` restricts scoring to those images (e.g. the test part of :func:`fixed_split`).
    Writes ``<out_dir>/metrics.json`` and ``results.md``/``.csv``; returns the metrics dict.
    """
    from priormim.data.readers import read_segmentation_folder
    from priormim.metrics import SegmentationMeter

    out_dir = Path(out_dir)
    pairs = read_segmentation_folder(test_dir, check_binary=False)
    if names is not None:
        wanted = set(names)
        pairs = [p for p in pairs if p.name in wanted]
        if not pairs:
            raise UserError("none of the requested test images is in this folder", test_dir)
    meter = SegmentationMeter()
    t0 = time.time()
    for s in load_samples(pairs):
        pred = baseline_mask(s.image, method=method, percentile=percentile, border=border, keep=keep)
        meter.update(pred[None], s.mask[None], names=[s.name])
    summary = meter.summary()
    label = f"{method.capitalize()} vesselness (p{percentile:g}, {keep})"
    metrics = {
        "method": label,
        "seed": None,
        "model": f"vesselness-{method}",
        "test": {"summary": summary, "per_image": meter.per_image()},
        "config": {"method": method, "percentile": percentile, "border": border, "keep": keep, "test": str(test_dir),
                   "names": list(names) if names is not None else None},
        "time_s": round(time.time() - t0, 1),
    }
    atomic_write_bytes(out_dir / "metrics.json", json.dumps(metrics, indent=2).encode("utf-8"))
    write_results_table(aggregate_runs([out_dir]), out_dir, title=f"Vessel segmentation: {label}")
    log.info("%s on %d images: DSC %.4f ± %.4f, clDice %.4f", label, summary["dice"]["n"], summary["dice"]["mean"],
             summary["dice"]["std"], summary["cldice"]["mean"])
    return metrics


def evaluate_seed_ensemble(seed_dirs: Sequence[str | Path], val: Sequence[Any], test: Sequence[Any], *,
                           device: str = "auto") -> dict[str, Any]:
    """Score the ensemble of several saved segmenters (e.g. the 3 seeds of one run).

    Each model predicts as its ``config.json`` says (size, window, flip or dihedral TTA); the ensemble
    probability is the mean of the models' probabilities
    (:func:`~priormim.training.seg.recipe.ensemble_probabilities`). Its post-processing (field
    of view of the first model, threshold and, when the first model used it, hysteresis) is
    picked anew on ``val`` (:class:`~priormim.training.seg.data.SegSample` list), then ``test``
    is scored once. Returns ``{"postprocess", "val_dice_by_threshold", "test": {"summary",
    "per_image"}, "models"}``.
    """
    from priormim.models.seg import NormStats
    from priormim.training.seg.inference import PostProcess, choose_postprocess, predict_logits, tta_settings
    from priormim.training.seg.recipe import ensemble_probabilities

    if not seed_dirs:
        raise UserError("no seed models to ensemble; pass at least one finished seed folder")
    dev = resolve_device(device)
    probs: dict[str, list[list[np.ndarray]]] = {"val": [], "test": []}
    first = None
    for d in seed_dirs:
        model, mc = load_segmenter(d, device=dev)
        first = first or mc
        size = mc.get("img_size")
        for part, samples in (("val", val), ("test", test)):
            probs[part].append(predict_logits(model, [s.image for s in samples], img_size=None if size is None else int(size),
                                              norm=NormStats(**mc["norm"]), device=dev, window=mc.get("window"),
                                              **tta_settings(mc)))
    logits = {}
    for part in ("val", "test"):
        p = [np.clip(ensemble_probabilities([m[i] for m in probs[part]]), 1e-6, 1 - 1e-6) for i in range(len(probs[part][0]))]
        logits[part] = [np.log(q / (1 - q)) for q in p]
    post0 = PostProcess.from_config(first)
    post, scores = choose_postprocess(logits["val"], val, post=replace(post0, low=None), hysteresis=post0.low is not None
                                      or bool(first.get("hysteresis")))
    summary, per_image = score_masks([post.apply(lg, s.image) for lg, s in zip(logits["test"], test)], test)
    return {"postprocess": post.to_dict(), "val_dice_by_threshold": scores, "test": {"summary": summary, "per_image": per_image},
            "models": [str(d) for d in seed_dirs]}
