"""The bench report's text: tables, findings, ``results.md``, CSVs and ``report.html``.

Everything here turns :class:`~priormim.benchmark.collect.BenchResults` into text; the HTML
page comes from the Jinja2 template ``templates/report.html.j2`` (package data), which also
renders every :class:`~priormim.benchmark.tables.Table`. Nothing here loads a model.
"""

from __future__ import annotations

import base64
import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from priormim.benchmark import analysis as A
from priormim.benchmark.cells import _fmt_duration
from priormim.benchmark.collect import CLUSTER_KEYS, CONSISTENCY_PAIRS, RANDOM_INIT, BenchResults, pretrain_histories
from priormim.benchmark.methods import ABLATION, label
from priormim.benchmark.tables import (
    METRIC_NAMES, Stat, Table, ablation_table, comparison_table, mark_best, method_order, write_csv,
)

__all__ = ["build_tables", "clustering_table", "consistency_table", "findings", "masking_table", "paired_difference", "render_html",
           "render_markdown", "setup_tables", "timing_table", "write_csvs"]


def paired_difference(values_a: dict[int, float], values_b: dict[int, float]) -> Stat:
    """``b - a`` over the seeds both have."""
    return Stat.of(values_b[s] - values_a[s] for s in sorted(set(values_a) & set(values_b)))


def build_tables(res: BenchResults, timings: dict[str, dict[str, float]]) -> Table:
    """Fill ``res.tables`` (comparison, ablation, clustering, consistency if any, masking);
    returns the compute table of ``timings`` (:func:`~priormim.benchmark.collect.collect_timings`)."""
    n_seeds = max(1, len(res.seeds))
    dsn = res.dataset_names
    sil = {r: res.cluster_stats.get((r, dsn[0], "silhouette"), Stat.of([])) for r in ABLATION} if dsn else None
    res.tables["comparison"] = comparison_table(res.stats, res.methods, dsn, n_seeds)
    res.tables["ablation"] = ablation_table(res.stats, ABLATION, dsn, n_seeds, silhouette=sil)
    res.tables["clustering"] = clustering_table(res.cluster_stats, [RANDOM_INIT] + res.recipes, dsn, n_seeds)
    cons = consistency_table(res)
    if cons is not None:
        res.tables["consistency"] = cons
    res.tables["masking"] = masking_table(res)
    return timing_table(timings, res)


# ----------------------------------------------------------------------------------------------
# Tables beyond comparison / ablation (tables.py)


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
    shares: dict[str, np.ndarray] = A.vessel_share_curves(pretrain_histories(res))
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
    shares = A.vessel_share_curves(pretrain_histories(res))
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


def setup_tables(res: BenchResults) -> list[Table]:
    """The set-up section's tables: the budget's fields and the data sets with their splits."""
    b, rec = res.budget, res.record
    pool = rec.get("pool", {})
    budget_rows = [[k, json.dumps(v) if isinstance(v, dict) else str(v)] for k, v in b.to_dict().items()]
    ds_rows = []
    for d in res.datasets:
        if d.kind == "real":
            ds_rows.append([d.name, "real", str(d.root), f"{len(d.split.get('train', []))} / {len(d.split.get('val', []))} / "
                            f"{len(d.split.get('test', []))}", f"fixed_split, seed {d.split_seed}"])
        else:
            ds_rows.append([d.name, "synthetic", str(d.train.parent if d.train else ""), f"{b.n_train} / {b.n_val} / {b.n_test}",
                            f"generated at {b.synth_size} px, data seed {rec.get('data_seed')}"])
    return [Table("Budget", ["Field", "Value"], budget_rows),
            Table("Data sets (train / val / test)", ["Name", "Kind", "Where", "Images", "Split"], ds_rows,
                  note="The best epoch is chosen on val, scores are on test; real test images never enter the "
                       f"pretraining pool. Pool: {json.dumps(pool.get('sources', {}))}.")]


def render_markdown(res: BenchResults, timings: Table, generated: str) -> str:
    """``results.md``: the findings, every table and the figure files."""
    rec, dsn = res.record, res.dataset_names
    md = [f"# priormim bench: {rec['suite']}, budget {res.budget.name}", "",
          f"Seeds {', '.join(map(str, res.seeds)) or '–'}; data sets {', '.join(dsn)}; pretraining pool "
          f"{rec.get('pool', {}).get('n', '?')} images; generated {generated}. The full report is `report.html`.", ""]
    md += [f"- {s}" for s in findings(res)] + [""]
    for key in ("comparison", "ablation", "clustering", "consistency", "masking"):
        if key in res.tables:
            md.append(res.tables[key].markdown())
    md.append(timings.markdown())
    if res.failures:
        md += ["### Failures", ""] + [f"- `{fo}`: {e}" for fo, e in res.failures] + [""]
    md += ["### Figures", ""] + [f"- `figures/{p.name}`" for p in res.figures.values()] + [""]
    return "\n".join(md)


@lru_cache(maxsize=1)
def _environment():
    """The Jinja2 environment of the packaged templates (HTML-escaping every value)."""
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("priormim.benchmark", "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _png_base64(path: Path) -> str:
    """A figure's bytes for a ``data:`` URI: the report is one self-contained file."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render_html(res: BenchResults, timings_table: Table, generated: str) -> str:
    """``report.html``: the tables of ``res``, its figures inlined, the set-up and failures."""
    figures = {key: _png_base64(path) for key, path in res.figures.items()}
    return _environment().get_template("report.html.j2").render(
        res=res, budget=res.budget, record=res.record, pool=res.record.get("pool", {}), tables=res.tables,
        figures=figures, prediction_sets=[k[len("predictions_"):] for k in figures if k.startswith("predictions_")],
        findings=findings(res), setup=setup_tables(res), timings=timings_table, generated=generated)


def write_csvs(out: Path, res: BenchResults) -> None:
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
