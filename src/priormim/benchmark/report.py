"""The bench report, rebuilt from what is on disk: ``results.md``, CSVs, PNGs, ``report.html``.

:func:`write_report` needs only the bench folder: it reads ``bench.json``, every finished
cell, and computes the analyses (masking-frequency maps; patch-feature clustering, cached per
pretraining run in ``clustering_<dataset>.json``). Nothing here trains.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from priormim.benchmark import analysis as A
from priormim.benchmark import figures as FIG
from priormim.benchmark.budgets import Budget
from priormim.benchmark.cells import DONE, ERROR, _fmt_duration, read_done
from priormim.benchmark.data import SegDataset, vesselness_border
from priormim.benchmark.methods import ABLATION, MASK_FREE, label
from priormim.benchmark.runner import BENCH_FILE, SEGMENTOR, dataset_from_record, read_bench_record
from priormim.benchmark.tables import (
    METRIC_NAMES, RunScore, Stat, Table, aggregate, ablation_table, collect_scores, comparison_table, mark_best,
    method_order, write_csv,
)
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


def budget_from_record(record: dict) -> Budget:
    known = {f.name for f in dataclasses.fields(Budget)}
    return Budget(**{k: v for k, v in record["budget"].items() if k in known})


# ----------------------------------------------------------------------------------------------
# Collecting


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
# Analyses


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
    from priormim.evaluation.metrics import dice_score
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


def paired_difference(values_a: dict[int, float], values_b: dict[int, float]) -> Stat:
    """``b - a`` over the seeds both have."""
    return Stat.of(values_b[s] - values_a[s] for s in sorted(set(values_a) & set(values_b)))


# ----------------------------------------------------------------------------------------------
# Tables beyond comparison / ablation


def clustering_table(cs: dict[tuple[str, str, str], Stat], methods: list[str], datasets: list[str], n_seeds: int) -> Table:
    headers = ["Encoder"] + [f"{ds} {METRIC_NAMES[k]}" for ds in datasets for k in CLUSTER_KEYS]
    rows, columns, lower = [], {}, []
    for method in methods:
        row = [label(method)]
        for ds in datasets:
            for k in CLUSTER_KEYS:
                st = cs.get((method, ds, k), Stat.of([]))
                row.append(st.fmt(digits=3 if k != "calinski_harabasz" else 1, n_expected=n_seeds))
                columns.setdefault(len(row) - 1, []).append(st.mean if st.n else math.nan)
                if k == "davies_bouldin":
                    lower.append(len(row) - 1)
        rows.append(row)
    t = Table("Patch-feature clustering: vessel vs background tokens", headers, rows,
              note=f"Final-layer patch tokens of each exported encoder (no fine-tuning) on the test images; a patch is "
                   f"vessel if ≥ {A.VESSEL_PATCH_FRACTION:.0%} of its pixels are vessel in the ground truth. Silhouette on a "
                   "fixed-seed stratified subsample; mean ± std over seeds. Random init: the same ViT untrained.")
    mark_best(t, columns, lower_is_better=lower)
    return t


def consistency_table(res: BenchResults) -> Table | None:
    """With minus without the consistency loss: feature clustering and DSC, paired by seed."""
    by_seed: dict[tuple[str, str, str], dict[int, float]] = {}
    for c in res.clustering:
        for k in CLUSTER_KEYS:
            by_seed.setdefault((c.method, c.dataset, k), {})[c.seed] = getattr(c.scores, k)
    for s in res.scores:
        if s.seed is not None:
            by_seed.setdefault((s.method, s.dataset, "dice"), {})[s.seed] = s.dice
    rows = []
    for without, with_ in CONSISTENCY_PAIRS:
        for ds in res.dataset_names:
            cells = []
            for k in (*CLUSTER_KEYS, "dice"):
                a, b = by_seed.get((without, ds, k), {}), by_seed.get((with_, ds, k), {})
                d = paired_difference(a, b)
                cells.append(f"{Stat.of(a.values()).fmt(3)} → {Stat.of(b.values()).fmt(3)} (Δ {d.mean:+.3f})" if d.n else "–")
            if any(c != "–" for c in cells):
                rows.append([f"{label(without)} → {label(with_)}", ds, *cells])
    if not rows:
        return None
    return Table("Effect of the consistency loss (without → with, paired by seed)",
                 ["Pair", "Data set", *(METRIC_NAMES[k] for k in CLUSTER_KEYS), "DSC"], rows,
                 note="Δ = mean over seeds of (with − without). Higher silhouette and Calinski-Harabasz and lower "
                      "Davies-Bouldin mean vessel and background tokens are better separated.")


def masking_table(res: BenchResults) -> Table:
    rows = []
    shares: dict[str, np.ndarray] = A.vessel_share_curves(_histories(res))
    for recipe in res.recipes:
        m = res.masking.get(recipe)
        curve = shares.get(recipe)
        rows.append([
            label(recipe),
            f"{m['name']} {m['kwargs'] or ''}".strip() if m else "–",
            f"{m['enrichment'][0]:.2f}" if m else "–",
            f"{m['enrichment'][-1]:.2f}" if m else "–",
            f"{curve[:, 0].mean():.3f}" if curve is not None else "–",
            f"{curve[:, -1].mean():.3f}" if curve is not None else "–",
        ])
    return Table("Where the masks fall", ["Recipe", "Masking", "Vessel enrichment, first epoch",
                                          "Vessel enrichment, last epoch", "Masked patches with vessel, first epoch",
                                          "… last epoch"], rows,
                 note="Enrichment = P(masked | patch holds prior vessel) / P(masked | background patch) from many masks "
                      "drawn on the example images (1 = no preference). The share of masked patches with vessel is "
                      "the pretraining engine's own log (mean over seeds).")


def _fmt_s(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else _fmt_duration(seconds)


def timing_table(timings: dict[str, dict[str, float]], res: BenchResults) -> Table:
    methods = method_order(set(timings.get("pretrain", {})) | set(timings.get("finetune", {})) | set(timings.get("vesselness", {})))
    rows = []
    for m in methods:
        p = timings.get("pretrain", {}).get(m, 0.0)
        f = timings.get("finetune", {}).get(m, 0.0) + timings.get("vesselness", {}).get(m, 0.0)
        rows.append([label(m), _fmt_s(p) if p else "–", _fmt_s(f), _fmt_s(p + f)])
    seg = sum(timings.get("segmentor", {}).values())
    if seg:
        rows.append(["consistency segmentor", _fmt_s(seg), "–", _fmt_s(seg)])
    total = sum(sum(v.values()) for v in timings.values())
    rows.append(["total", "", "", _fmt_s(total)])
    return Table("Compute (sum over seeds and data sets)", ["Method", "Pretraining", "Fine-tuning / scoring", "Total"], rows,
                 note=f"Wall-clock seconds of the finished cells as recorded in their done.json, on device "
                      f"'{res.record.get('last_run', {}).get('device', '?')}'.")


def _histories(res: BenchResults) -> dict[str, list[list[dict]]]:
    """Per recipe, each seed's per-epoch records (recipes that ignore the mask left out)."""
    h: dict[str, list[list[dict]]] = {}
    for r in res.pretrain:
        if r.recipe not in MASK_FREE:
            h.setdefault(r.recipe, []).append(r.history)
    return h


# ----------------------------------------------------------------------------------------------
# The report


def findings(res: BenchResults) -> list[str]:
    """A few sentences a reader wants first, computed from the tables (no interpretation)."""
    lines = []
    ranked_methods = [m for m in res.methods]
    for ds in res.dataset_names:
        ranked = sorted((res.stats[(m, ds, "dice")].mean, m) for m in ranked_methods
                        if (m, ds, "dice") in res.stats and res.stats[(m, ds, "dice")].n)
        if ranked:
            best_v, best = ranked[-1]
            lines.append(f"{ds}: best DSC {best_v:.3f} by {label(best)}"
                         + (f"; runner-up {label(ranked[-2][1])} {ranked[-2][0]:.3f}" if len(ranked) > 1 else "") + ".")
        per_seed = {}
        for s in res.scores:
            if s.dataset == ds and s.seed is not None:
                per_seed.setdefault(s.method, {})[s.seed] = s.dice
        if "mae" in per_seed and "vasomim" in per_seed:
            d = paired_difference(per_seed["mae"], per_seed["vasomim"])
            if d.n:
                lines.append(f"{ds}: VasoMIM − MAE = {d.mean:+.3f} DSC" + (f" ± {d.std:.3f} over {d.n} seeds." if d.n > 1 else " (one seed)."))
    shares = A.vessel_share_curves(_histories(res))
    if "mae" in shares and "vasomim" in shares:
        lines.append(f"Masked patches holding vessel at the last epoch: MAE {shares['mae'][:, -1].mean():.1%}, "
                     f"VasoMIM {shares['vasomim'][:, -1].mean():.1%}.")
    for without, with_ in CONSISTENCY_PAIRS[:1]:
        ds = res.dataset_names[0] if res.dataset_names else None
        a = res.cluster_stats.get((without, ds, "silhouette"))
        b = res.cluster_stats.get((with_, ds, "silhouette"))
        if a is not None and b is not None and a.n and b.n:
            lines.append(f"Feature silhouette on {ds}: {label(without)} {a.mean:.3f} → {label(with_)} {b.mean:.3f}.")
    n_fail = len(res.failures)
    if n_fail:
        lines.append(f"{n_fail} cell(s) failed; see 'Failures' below.")
    return lines


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(alt)}</figcaption></figure>'


_CSS = """
body{font:15px/1.5 -apple-system,Segoe UI,Helvetica,Arial,sans-serif;color:#222;max-width:1180px;margin:2em auto;padding:0 1.2em}
h1{margin-bottom:.1em} h2{border-bottom:2px solid #2e86de;padding-bottom:.2em;margin-top:2em} h3{margin:1.3em 0 .4em;font-size:1.02em}
.sub{color:#666;margin-top:0} .cards{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}
.card{background:#f4f8fc;border-left:4px solid #2e86de;padding:.6em .9em;flex:1 1 320px}
table{border-collapse:collapse;font-size:13px;margin:.4em 0;display:block;overflow-x:auto}
th,td{border:1px solid #d8dee6;padding:3px 8px;text-align:right;white-space:nowrap} th{background:#eef2f7}
td:first-child,th:first-child{text-align:left} .note{color:#555;font-size:12.5px;max-width:60em}
figure{margin:.8em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{color:#666;font-size:12.5px}
code{background:#f3f3f3;padding:0 .3em} .fail{color:#b00} details{margin:.5em 0}
"""


def render_html(res: BenchResults, timings_table: Table, generated: str) -> str:
    b = res.budget
    rec = res.record
    pool = rec.get("pool", {})
    fig = res.figures
    t = res.tables
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>priormim bench: {html.escape(rec['suite'])}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>priormim bench: {html.escape(rec['suite'])}</h1>",
             f"<p class='sub'>budget <b>{b.name}</b> · seeds {', '.join(map(str, res.seeds)) or '–'} · data sets "
             f"{', '.join(res.dataset_names)} · pretraining pool {pool.get('n', '?')} images · generated {generated}</p>"]
    parts.append("<div class='cards'>" + "".join(f"<div class='card'>{html.escape(s)}</div>" for s in findings(res)) + "</div>")
    parts.append("<h2>Vessel segmentation</h2>")
    parts.append(t["comparison"].html())
    if "comparison" in fig:
        parts.append(_img_tag(fig["comparison"], "Test DSC and clDice per method; bars = mean over seeds, dots = seeds."))
    parts.append("<h2>Ablation</h2>" + t["ablation"].html())
    if "ablation" in fig:
        parts.append(_img_tag(fig["ablation"], "Mean test DSC of the four recipes of the 2 × 2 ablation."))
    parts.append("<h2>Where the masks fall</h2>")
    if "vessel_share" in fig:
        parts.append(_img_tag(fig["vessel_share"], "(a) Share of masked patches containing vessel during pretraining "
                                                  "(line = mean over seeds, band = range)."))
    if "masking" in fig:
        parts.append(_img_tag(fig["masking"], f"(b) How often each patch is masked ({b.mask_draws} masks per map) by each "
                                             "recipe's strategy given the image's vessel prior (yellow), at the first and last epoch."))
    parts.append(t["masking"].html())
    parts.append("<h2>What the encoders learned: patch-feature clustering</h2>" + t["clustering"].html())
    if "consistency" in t:
        parts.append(t["consistency"].html())
    for key, caption in (("clustering", "(c) Silhouette of vessel vs background patch tokens per encoder; dots = seeds."),
                         ("pca", "Patch tokens projected on their first two principal components (test images, lowest seed).")):
        if key in fig:
            parts.append(_img_tag(fig[key], caption))
    preds = [k for k in fig if k.startswith("predictions_")]
    if preds:
        parts.append("<h2>Predictions</h2>")
        for k in preds:
            parts.append(_img_tag(fig[k], f"{k[len('predictions_'):]}: white = correct vessel, red = false positive, "
                                          "blue = missed vessel; number = DSC of that image (lowest seed). Shown: the baselines, MAE, VasoMIM and "
                                          "the best other recipes; every method's scores are in the tables."))
    parts.append("<h2>Set-up</h2>")
    budget_rows = [[k, json.dumps(v) if isinstance(v, dict) else str(v)] for k, v in b.to_dict().items()]
    parts.append(Table("Budget", ["Field", "Value"], budget_rows).html())
    ds_rows = []
    for d in res.datasets:
        if d.kind == "real":
            ds_rows.append([d.name, "real", str(d.root), f"{len(d.split.get('train', []))} / {len(d.split.get('val', []))} / "
                            f"{len(d.split.get('test', []))}", f"fixed_split, seed {d.split_seed}"])
        else:
            ds_rows.append([d.name, "synthetic", str(d.train.parent if d.train else ""), f"{b.n_train} / {b.n_val} / {b.n_test}",
                            f"generated at {b.synth_size} px, data seed {rec.get('data_seed')}"])
    parts.append(Table("Data sets (train / val / test)", ["Name", "Kind", "Where", "Images", "Split"], ds_rows,
                       note="The best epoch is chosen on val, scores are on test; real test images never enter the "
                            f"pretraining pool. Pool: {json.dumps(pool.get('sources', {}))}.").html())
    parts.append(timings_table.html())
    if res.failures:
        parts.append("<h2 class='fail'>Failures</h2><ul>" + "".join(
            f"<li><code>{html.escape(f)}</code>: {html.escape(e)}</li>" for f, e in res.failures) + "</ul>"
                     "<p class='note'>Re-run the same command to retry them; finished cells are kept.</p>")
    parts.append("<h2>Files</h2><p class='note'><code>results.md</code>, <code>comparison.csv</code>, "
                 "<code>scores.csv</code> (every run), <code>ablation.csv</code>, <code>clustering.csv</code>, "
                 "<code>masking.csv</code>, <code>figures/*.png</code>; runs under <code>pretrain/</code> and "
                 "<code>finetune/</code>.</p></body></html>")
    return "\n".join(parts)


def write_report(out: str | Path) -> Path:
    """Build every table, figure and ``report.html`` in ``out`` from its finished cells."""
    from priormim.training.distributed import resolve_device

    out = Path(out)
    record = read_bench_record(out)
    if record is None:
        raise UserError(f"no {BENCH_FILE}; this is not a bench folder (run `priormim bench --out {out}` first)", out)
    budget = budget_from_record(record)
    datasets = [dataset_from_record(d) for d in record["datasets"]]
    device = resolve_device("auto")
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
    n_seeds = max(1, len(res.seeds))
    dsn = res.dataset_names

    # Tables
    sil = {r: res.cluster_stats.get((r, dsn[0], "silhouette"), Stat.of([])) for r in ABLATION} if dsn else None
    res.tables["comparison"] = comparison_table(res.stats, res.methods, dsn, n_seeds)
    res.tables["ablation"] = ablation_table(res.stats, ABLATION, dsn, n_seeds, silhouette=sil)
    res.tables["clustering"] = clustering_table(res.cluster_stats, [RANDOM_INIT] + recipes, dsn, n_seeds)
    cons = consistency_table(res)
    if cons is not None:
        res.tables["consistency"] = cons
    res.tables["masking"] = masking_table(res)
    timings = timing_table(collect_timings(out), res)

    # Figures
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    f = res.figures
    if res.scores:
        f["comparison"] = FIG.comparison_figure(res.stats, res.methods, dsn, fig_dir / "comparison.png")
        if any(r in res.methods for r in ABLATION):
            f["ablation"] = FIG.ablation_figure(res.stats, ABLATION, dsn, fig_dir / "ablation.png")
    curves = A.vessel_share_curves(_histories(res))
    if curves:
        f["vessel_share"] = FIG.vessel_share_figure(curves, fig_dir / "masked_vessel_share.png",
                                                    random_reference=A.random_masking_reference(_histories(res)))
    if masking:
        e = budget.pretrain_epochs
        f["masking"] = FIG.masking_figure(examples, {r: m["maps"] for r, m in masking.items()}, ["schedule start", f"schedule end (epoch {e})"],
                                          fig_dir / "masking_frequency.png")
    if clustering:
        f["clustering"] = FIG.clustering_figure(res.cluster_stats, [RANDOM_INIT] + recipes, dsn, fig_dir / "clustering.png")
        try:
            pts = pca_points(runs, datasets[0], budget, device)
            if pts:
                f["pca"] = FIG.pca_figure(pts, fig_dir / "feature_pca.png")
        except Exception as exc:  # noqa: BLE001
            log.warning("feature PCA figure skipped: %s", exc)
    for ds in datasets:
        rows = prediction_rows(out, ds, qualitative_methods(res, ds.name))
        if rows and any(r["preds"] for r in rows):
            f[f"predictions_{ds.name}"] = FIG.predictions_figure(rows, [m for m in res.methods if m in rows[0]["preds"]],
                                                                 fig_dir / f"predictions_{ds.name}.png")

    # Markdown + CSV
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = [f"# priormim bench: {record['suite']}, budget {budget.name}", "",
          f"Seeds {', '.join(map(str, res.seeds)) or '–'}; data sets {', '.join(dsn)}; pretraining pool "
          f"{record.get('pool', {}).get('n', '?')} images; generated {generated}. The full report is `report.html`.", ""]
    md += [f"- {s}" for s in findings(res)] + [""]
    for key in ("comparison", "ablation", "clustering", "consistency", "masking"):
        if key in res.tables:
            md.append(res.tables[key].markdown())
    md.append(timings.markdown())
    if res.failures:
        md += ["### Failures", ""] + [f"- `{fo}`: {e}" for fo, e in res.failures] + [""]
    md += ["### Figures", ""] + [f"- `figures/{p.name}`" for p in f.values()] + [""]
    atomic_write_bytes(out / "results.md", "\n".join(md).encode("utf-8"))
    _write_csvs(out, res)
    report = out / "report.html"
    atomic_write_bytes(report, render_html(res, timings, generated).encode("utf-8"))
    return report


def _write_csvs(out: Path, res: BenchResults) -> None:
    write_csv(out / "scores.csv", ["method", "dataset", "seed", "dice", "cldice", "precision", "recall", "n_test_images", "seconds"],
              [[s.method, s.dataset, s.seed, s.dice, s.cldice, s.precision, s.recall, s.n_images, s.seconds] for s in res.scores])
    write_csv(out / "comparison.csv", ["method", "dataset", "metric", "mean", "std", "n_seeds"],
              [[m, ds, k, st.mean, st.std, st.n] for (m, ds, k), st in sorted(res.stats.items())])
    write_csv(out / "ablation.csv", ["recipe", "guided_masking", "consistency_loss", "dataset", "metric", "mean", "std", "n_seeds"],
              [[r, int(g), int(c), ds, k, st.mean, st.std, st.n] for r, (g, c) in ABLATION.items() for ds in res.dataset_names
               for k in ("dice", "cldice") if (st := res.stats.get((r, ds, k))) is not None])
    write_csv(out / "clustering.csv", ["encoder", "dataset", "seed", *CLUSTER_KEYS, "n_patches", "n_vessel", "n_silhouette"],
              [[c.method, c.dataset, c.seed, *(getattr(c.scores, k) for k in CLUSTER_KEYS), c.scores.n_patches,
                c.scores.n_vessel, c.scores.n_silhouette] for c in res.clustering])
    write_csv(out / "masking.csv", ["recipe", "masking", "enrichment_first_epoch", "enrichment_last_epoch"],
              [[r, m["name"], m["enrichment"][0], m["enrichment"][-1]] for r, m in res.masking.items()])
