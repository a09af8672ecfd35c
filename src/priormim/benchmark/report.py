"""The bench report, rebuilt from what is on disk: ``results.md``, CSVs, PNGs, ``report.html``.

:func:`write_report` needs only the bench folder: it reads ``bench.json``
(:mod:`~priormim.benchmark.record`), gathers every finished cell and computes the analyses
(:mod:`~priormim.benchmark.collect`), draws the figures (:mod:`~priormim.benchmark.figures`)
and writes the text (:mod:`~priormim.benchmark.render`, the HTML from a Jinja2 template).
Nothing here trains. The names of those modules stay importable from here.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from priormim.benchmark import analysis as A
from priormim.benchmark import figures as FIG
from priormim.benchmark.collect import (  # noqa: F401 - re-exported: this module's names before the split
    CLUSTER_KEYS, CONSISTENCY_PAIRS, RANDOM_INIT, BenchResults, ClusterScore, PretrainRun, clustering_analysis,
    collect_failures, collect_pretrain, collect_results, collect_timings, masking_analysis, pca_points,
    prediction_rows, pretrain_histories, qualitative_methods,
)
from priormim.benchmark.methods import ABLATION
from priormim.benchmark.record import budget_from_record  # noqa: F401 - re-exported
from priormim.benchmark.render import (  # noqa: F401 - re-exported
    build_tables, clustering_table, consistency_table, findings, masking_table, paired_difference, render_html,
    render_markdown, timing_table, write_csvs,
)
from priormim.io import atomic_write_bytes

__all__ = ["draw_figures", "write_report"]

log = logging.getLogger(__name__)

_histories = pretrain_histories  # the old private names
_write_csvs = write_csvs


def write_report(out: str | Path) -> Path:
    """Build every table, figure and ``report.html`` in ``out`` from its finished cells."""
    from priormim.training.distributed import resolve_device

    out = Path(out)
    device = resolve_device("auto")
    res, examples = collect_results(out, device)
    timings = build_tables(res, collect_timings(out))
    draw_figures(out, res, examples, device)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    atomic_write_bytes(out / "results.md", render_markdown(res, timings, generated).encode("utf-8"))
    write_csvs(out, res)
    report = out / "report.html"
    atomic_write_bytes(report, render_html(res, timings, generated).encode("utf-8"))
    return report


def draw_figures(out: Path, res: BenchResults, examples: list[tuple[np.ndarray, np.ndarray]], device: torch.device) -> None:
    """Every figure into ``out/figures/`` and ``res.figures`` (PCA and predictions load models)."""
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    f = res.figures
    dsn, recipes = res.dataset_names, res.recipes
    if res.scores:
        f["comparison"] = FIG.comparison_figure(res.stats, res.methods, dsn, fig_dir / "comparison.png")
        if any(r in res.methods for r in ABLATION):
            f["ablation"] = FIG.ablation_figure(res.stats, ABLATION, dsn, fig_dir / "ablation.png")
    curves = A.vessel_share_curves(pretrain_histories(res))
    if curves:
        f["vessel_share"] = FIG.vessel_share_figure(curves, fig_dir / "masked_vessel_share.png",
                                                    random_reference=A.random_masking_reference(pretrain_histories(res)))
    if res.masking:
        e = res.budget.pretrain_epochs
        f["masking"] = FIG.masking_figure(examples, {r: m["maps"] for r, m in res.masking.items()},
                                          ["schedule start", f"schedule end (epoch {e})"], fig_dir / "masking_frequency.png")
    if res.clustering:
        f["clustering"] = FIG.clustering_figure(res.cluster_stats, [RANDOM_INIT] + recipes, dsn, fig_dir / "clustering.png")
        try:
            pts = pca_points(res.pretrain, res.datasets[0], res.budget, device)
            if pts:
                f["pca"] = FIG.pca_figure(pts, fig_dir / "feature_pca.png")
        except Exception as exc:  # noqa: BLE001
            log.warning("feature PCA figure skipped: %s", exc)
    for ds in res.datasets:
        rows = prediction_rows(out, ds, qualitative_methods(res, ds.name))
        if rows and any(r["preds"] for r in rows):
            f[f"predictions_{ds.name}"] = FIG.predictions_figure(rows, [m for m in res.methods if m in rows[0]["preds"]],
                                                                 fig_dir / f"predictions_{ds.name}.png")
