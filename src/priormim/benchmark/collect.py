"""What the bench report shows, gathered from a bench folder: finished runs and analyses.

:func:`collect_pretrain` / :func:`collect_failures` / :func:`collect_timings` read the cells'
``done.json`` markers; the analyses load what the cells left (exported encoders, fine-tuned
segmenters, recipe configs) to compute masking-frequency maps, patch-feature clustering
(cached per pretraining run in ``clustering_<dataset>.json``) and example predictions.
Nothing here trains and nothing here renders (:mod:`priormim.benchmark.render`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from priormim.benchmark import analysis as A
from priormim.benchmark.budgets import Budget
from priormim.benchmark.cells import DONE, ERROR, read_done
from priormim.benchmark.data import SegDataset, vesselness_border
from priormim.benchmark.methods import ABLATION, MASK_FREE, label
from priormim.benchmark.record import BENCH_FILE, SEGMENTOR, budget_from_record, dataset_from_record, read_bench_record
from priormim.benchmark.tables import RunScore, Stat, Table, aggregate, collect_scores, method_order
from priormim.errors import UserError
from priormim.io import atomic_write_bytes

log = logging.getLogger(__name__)

CLUSTER_KEYS = ("silhouette", "calinski_harabasz", "davies_bouldin")
RANDOM_INIT = "random_init"
_CLUSTER_CACHE_VERSION = 1
# (without, with) the consistency loss, guided masking on and off.
CONSISTENCY_PAIRS = (("vasomim_guidance_only", "vasomim"), ("mae", "vasomim_consistency_only"))


@dataclass
class PretrainRun:
    """One finished pretraining cell."""

    recipe: str
    seed: int
    folder: Path
    history: list[dict]
    seconds: float

    @property
    def encoder(self) -> Path:
        return self.folder / "encoder.safetensors"


@dataclass
class ClusterScore:
    method: str  # a recipe or "random_init"
    dataset: str
    seed: int
    scores: A.ClusteringScores


@dataclass
class BenchResults:
    """Everything the report shows."""

    record: dict
    budget: Budget
    datasets: list[SegDataset]
    scores: list[RunScore]
    stats: dict[tuple[str, str, str], Stat]
    pretrain: list[PretrainRun]
    clustering: list[ClusterScore]
    cluster_stats: dict[tuple[str, str, str], Stat]
    masking: dict[str, dict]  # recipe -> {"name", "maps" [n_img, 2, gh, gw], "enrichment": [early, late]}
    failures: list[tuple[str, str]]  # (cell folder, first error line)
    figures: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, Table] = field(default_factory=dict)

    @property
    def dataset_names(self) -> list[str]:
        return [d.name for d in self.datasets]

    @property
    def seeds(self) -> list[int]:
        return sorted({s.seed for s in self.scores if s.seed is not None} | {r.seed for r in self.pretrain})

    @property
    def recipes(self) -> list[str]:
        return method_order({r.recipe for r in self.pretrain})

    @property
    def methods(self) -> list[str]:
        return method_order({s.method for s in self.scores})


# ----------------------------------------------------------------------------------------------
# Finished cells


def collect_results(out: Path, device: torch.device) -> tuple[BenchResults, list[tuple[np.ndarray, np.ndarray]]]:
    """Everything the report shows of the bench folder ``out`` (tables and figures still empty),
    and the example (image, prior) pairs of the masking maps."""
    record = read_bench_record(out)
    if record is None:
        raise UserError(f"no {BENCH_FILE}; this is not a bench folder (run `priormim bench --out {out}` first)", out)
    budget = budget_from_record(record)
    datasets = [dataset_from_record(d) for d in record["datasets"]]
    scores = collect_scores(out)
    runs = collect_pretrain(out)
    recipes = method_order({r.recipe for r in runs})
    clustering = clustering_analysis(out, runs, datasets, budget, device)
    cluster_values: dict[tuple[str, str, str], list[float]] = {}
    for c in clustering:
        for k in CLUSTER_KEYS:
            cluster_values.setdefault((c.method, c.dataset, k), []).append(getattr(c.scores, k))
    masking, examples = masking_analysis(recipes, runs, record, budget)
    res = BenchResults(record=record, budget=budget, datasets=datasets, scores=scores, stats=aggregate(scores),
                       pretrain=runs, clustering=clustering, cluster_stats={k: Stat.of(v) for k, v in cluster_values.items()},
                       masking=masking, failures=collect_failures(out))
    return res, examples


def collect_pretrain(out: Path) -> list[PretrainRun]:
    runs = []
    root = out / "pretrain"
    for folder in sorted(root.glob("*/seed*")) if root.is_dir() else []:
        recipe = folder.parent.name
        done = read_done(folder)
        if recipe == SEGMENTOR or done is None or not folder.name[4:].isdigit():
            continue
        runs.append(PretrainRun(recipe, int(folder.name[4:]), folder, A.read_history(folder), float(done.get("seconds", math.nan))))
    return runs


def collect_failures(out: Path) -> list[tuple[str, str]]:
    """Cells that failed in their latest attempt (an error.log and no done.json)."""
    failures = []
    for err in sorted(out.glob(f"*/**/{ERROR}")):
        if not (err.parent / DONE).is_file():
            lines = [ln for ln in err.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
            failures.append((str(err.parent.relative_to(out)), lines[-1][:300] if lines else "unknown error"))
    return failures


def collect_timings(out: Path) -> dict[str, dict[str, float]]:
    """``{kind: {method: total seconds}}`` of every finished cell."""
    table: dict[str, dict[str, float]] = {}
    for marker in out.glob(f"*/**/{DONE}"):
        done = read_done(marker.parent) or {}
        kind, method = done.get("kind"), done.get("method")
        if kind and method:
            table.setdefault(kind, {}).setdefault(method, 0.0)
            table[kind][method] += float(done.get("seconds", 0.0))
    return table


# ----------------------------------------------------------------------------------------------
# Analyses (they load encoders, segmenters and recipe configs)


def _run_config(recipe: str, runs: list[PretrainRun]):
    """The config a recipe's first finished run used (else the packaged recipe)."""
    from priormim.config import load_config

    for r in runs:
        if r.recipe == recipe and (r.folder / "config.yaml").is_file():
            return load_config(r.folder / "config.yaml")
    return load_config(recipe)


def _masks_from_own_scores(method: str) -> bool:
    """True when the engine feeds the strategy the model's own scores (AMT, HPM) instead of
    the vessel prior, so maps drawn from the prior would not show what training did."""
    try:
        from priormim.models.zoo import ZOO_MODELS
    except ImportError:
        return False
    cls = ZOO_MODELS.get(method)
    return cls is not None and hasattr(cls, "mask_scores")


def masking_analysis(recipes: list[str], runs: list[PretrainRun], record: dict, budget: Budget
                     ) -> tuple[dict[str, dict], list[tuple[np.ndarray, np.ndarray]]]:
    """Masking-frequency maps (early, late) of each recipe's strategy on the example images."""
    from priormim.training.pretrain import build_masking_strategy

    prior_dir = Path(record["pool_priors"])
    examples = []
    for p in record.get("example_images", []):
        try:
            examples.append(A.load_example(Path(p), prior_dir, budget.img_size))
        except (OSError, UserError) as exc:
            log.warning("example image %s skipped: %s", p, exc)
    out: dict[str, dict] = {}
    if not examples:
        return out, []
    for recipe in recipes:
        if recipe in MASK_FREE:
            continue
        try:
            cfg = _run_config(recipe, runs)
            if _masks_from_own_scores(cfg.method):
                log.info("masking maps of %s skipped: its masks follow the model's own scores", recipe)
                continue
            strategy = build_masking_strategy(cfg)
        except Exception as exc:  # noqa: BLE001 - a recipe the analysis cannot rebuild is skipped, not fatal
            log.warning("masking maps of %s skipped: %s", recipe, exc)
            continue
        maps, enrich = [], []
        for i, (_, prior) in enumerate(examples):
            m = A.masking_frequency_maps(strategy, prior, patch_size=budget.patch_size, draws=budget.mask_draws, seed=i)
            vessel = A.vessel_patches(prior, budget.patch_size)
            maps.append(m)
            enrich.append([A.masking_enrichment(m[s], vessel) for s in range(m.shape[0])])
        out[recipe] = {"name": cfg.masking.name, "kwargs": dict(cfg.masking.kwargs), "maps": np.stack(maps),
                       "enrichment": np.nanmean(np.array(enrich, dtype=float), axis=0).tolist()}
    return out, [(img, prior.numpy()) for img, prior in examples]


def _cached_clustering(cache: Path, compute) -> A.ClusteringScores:
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
        if data.get("version") == _CLUSTER_CACHE_VERSION:
            return A.ClusteringScores(**data["scores"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    scores = compute()
    atomic_write_bytes(cache, json.dumps({"version": _CLUSTER_CACHE_VERSION, "threshold": A.VESSEL_PATCH_FRACTION,
                                          "scores": scores.to_dict()}, indent=1).encode("utf-8"))
    return scores


def clustering_analysis(out: Path, runs: list[PretrainRun], datasets: list[SegDataset], budget: Budget,
                        device: torch.device) -> list[ClusterScore]:
    """Clustering scores of every finished encoder (and a seeded random init) on each test set."""
    results = []
    seeds = sorted({r.seed for r in runs})
    for ds in datasets:
        try:
            samples = ds.test_samples()
        except (OSError, UserError) as exc:
            log.warning("clustering on %s skipped: %s", ds.name, exc)
            continue
        jobs = [(RANDOM_INIT, s, None, out / "analysis" / RANDOM_INIT / f"seed{s}") for s in seeds]
        jobs += [(r.recipe, r.seed, r.encoder, r.folder) for r in runs]
        for method, seed, encoder, folder in jobs:
            def compute(encoder=encoder, seed=seed):
                x, y = A.patch_features(encoder, samples, backbone=budget.encoder, img_size=budget.img_size,
                                        model_kwargs=budget.encoder_kwargs, seed=seed, device=device)
                return A.clustering_scores(x, y, max_silhouette=budget.max_cluster_points, seed=0)
            try:
                scores = _cached_clustering(folder / f"clustering_{ds.name}.json", compute)
            except Exception as exc:  # noqa: BLE001 - an encoder that does not load is reported, not fatal
                log.warning("clustering of %s seed %d on %s failed: %s", method, seed, ds.name, exc)
                continue
            results.append(ClusterScore(method, ds.name, seed, scores))
    return results


def pca_points(runs: list[PretrainRun], ds: SegDataset, budget: Budget, device: torch.device
               ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """2-D PCA of patch tokens for random init and the ablation recipes (lowest seed)."""
    if not runs:
        return {}
    seed = min(r.seed for r in runs)
    chosen = [(label(RANDOM_INIT), None)] + [(label(r.recipe), r.encoder) for r in runs
                                            if r.seed == seed and r.recipe in ABLATION]
    samples = ds.test_samples()[:24]
    out = {}
    for name, encoder in chosen:
        x, y = A.patch_features(encoder, samples, backbone=budget.encoder, img_size=budget.img_size,
                                model_kwargs=budget.encoder_kwargs, seed=seed, device=device)
        out[name] = (A.pca_2d(x), y)
    return out


def qualitative_methods(res: BenchResults, dataset: str, extra: int = 2) -> list[str]:
    """Methods shown in the prediction figure: the baselines, MAE, VasoMIM and the ``extra``
    best other recipes by mean DSC on ``dataset`` (every method would not fit in a row)."""
    def mean_dice(method: str) -> float:
        st = res.stats.get((method, dataset, "dice"))
        return st.mean if st is not None and st.n else -1.0

    core = [m for m in res.methods if m in ("vesselness", "unet", "vit_scratch", "mae", "vasomim")]
    others = sorted((m for m in res.methods if m not in core), key=mean_dice, reverse=True)
    return method_order(core + others[:extra])


def prediction_rows(out: Path, ds: SegDataset, methods: list[str], n: int = 3) -> list[dict]:
    """A few test images with every method's prediction (lowest finished seed)."""
    from priormim.metrics import dice_score
    from priormim.training.finetune_seg import baseline_mask, load_segmenter, predict_masks

    samples = ds.test_samples()[:n]
    rows = [{"image": s.image, "mask": s.mask, "preds": {}, "dice": {}} for s in samples]
    for method in methods:
        try:
            if method == "vesselness":
                preds = [baseline_mask(s.image, border=vesselness_border(ds.image_size)) for s in samples]
            else:
                seed_dirs = sorted((out / "finetune" / ds.name / method).glob("seed*"), key=lambda p: int(p.name[4:]))
                seed_dirs = [p for p in seed_dirs if (p / DONE).is_file()]
                if not seed_dirs:
                    continue
                model, mc = load_segmenter(seed_dirs[0])
                preds = predict_masks(model, [s.image for s in samples], mc)
        except Exception as exc:  # noqa: BLE001
            log.warning("predictions of %s on %s skipped: %s", method, ds.name, exc)
            continue
        for row, pred, s in zip(rows, preds, samples):
            row["preds"][method] = pred
            row["dice"][method] = float(dice_score(pred, s.mask)[0])
    return rows


def pretrain_histories(res: BenchResults) -> dict[str, list[list[dict]]]:
    """Per recipe, each seed's per-epoch records (recipes that ignore the mask left out)."""
    h: dict[str, list[list[dict]]] = {}
    for r in res.pretrain:
        if r.recipe not in MASK_FREE:
            h.setdefault(r.recipe, []).append(r.history)
    return h
