"""Aggregate ``metrics.json`` files of segmentation runs into mean ± std tables.

Every run (one fine-tuning seed, or one baseline) writes ``<run>/metrics.json`` with at least::

    {"method": "U-Net (scratch)", "seed": 0,
     "test": {"summary": {"dice": {"mean": .., "std": .., "n": ..}, ...}, "per_image": [...]}}

:func:`aggregate_runs` groups runs by ``method`` (first-seen order) and averages the per-run
test means; the std is over seeds when a method has several runs, and over test images when it
has a single run (e.g. a deterministic baseline). :func:`write_results_table` writes the rows as
``results.md`` and ``results.csv``; the same code makes the per-run table of ``priormim finetune
seg`` and the cross-method comparison table of the demo.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from priormim.errors import UserError
from priormim.metrics import mean_std
from priormim.io import atomic_write_bytes

METRIC_KEYS = ("dice", "cldice", "precision", "recall")
METRIC_TITLES = {"dice": "DSC", "cldice": "clDice", "precision": "Precision", "recall": "Recall"}


@dataclass
class ResultRow:
    """One method's aggregate: ``mean[metric]`` ± ``std[metric]`` over ``std_over``."""

    method: str
    n_runs: int
    std_over: str  # "seeds" or "images"
    n_images: int
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    seeds: list[int | None] = field(default_factory=list)


def read_metrics(run_dir: str | Path) -> dict:
    """Load ``<run_dir>/metrics.json`` (``run_dir`` may also be the JSON file itself)."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise UserError("no metrics.json; the run has not finished (re-run it, finished seeds are kept)", path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["test"]["summary"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"is not a priormim metrics.json ({type(exc).__name__}: {exc}); delete it and re-run", path) from exc
    return data


def aggregate_runs(run_dirs: Iterable[str | Path], *, metrics: Sequence[str] = METRIC_KEYS) -> list[ResultRow]:
    """Group runs by their ``method`` and compute mean ± std of each metric.

    Args:
        run_dirs: run folders (or ``metrics.json`` paths).
        metrics: summary keys to aggregate.

    Returns:
        One :class:`ResultRow` per method, in the order methods first appear.
    """
    groups: dict[str, list[dict]] = {}
    for run in run_dirs:
        data = read_metrics(run)
        groups.setdefault(str(data.get("method", Path(run).name)), []).append(data)
    rows = []
    for method, runs in groups.items():
        row = ResultRow(
            method=method,
            n_runs=len(runs),
            std_over="seeds" if len(runs) > 1 else "images",
            n_images=int(runs[0]["test"]["summary"].get(metrics[0], {}).get("n", 0)) if metrics else 0,
            seeds=[r.get("seed") for r in runs],
        )
        for key in metrics:
            summaries = [r["test"]["summary"].get(key) for r in runs]
            if any(s is None for s in summaries):
                row.mean[key], row.std[key] = math.nan, math.nan
            elif len(runs) > 1:
                row.mean[key], row.std[key] = mean_std([s["mean"] for s in summaries])
            else:
                row.mean[key], row.std[key] = float(summaries[0]["mean"]), float(summaries[0]["std"])
        rows.append(row)
    return rows


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}"


def format_results_markdown(rows: Sequence[ResultRow], *, title: str, metrics: Sequence[str] = METRIC_KEYS) -> str:
    """The rows as a Markdown table with a heading and a note on what the ± means."""
    head = ["Method", *(METRIC_TITLES.get(k, k) for k in metrics), "runs", "± over"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.method, *(_fmt(r.mean[k], r.std[k]) for k in metrics), str(r.n_runs), r.std_over]
        lines.append("| " + " | ".join(cells) + " |")
    n_images = sorted({r.n_images for r in rows})
    lines += [
        "",
        f"Test images: {', '.join(map(str, n_images))}. Mean ± sample std over seeds (of each seed's mean over "
        "test images), or over test images for a single run. Metrics at the images' original resolution.",
        "",
    ]
    return "\n".join(lines)


def write_results_table(
    rows: Sequence[ResultRow],
    out_dir: str | Path,
    title: str = "Vessel segmentation",
    *,
    metrics: Sequence[str] = METRIC_KEYS,
) -> tuple[Path, Path]:
    """Write ``<out_dir>/results.md`` and ``<out_dir>/results.csv`` (atomically).

    Returns ``(md_path, csv_path)``.
    """
    out_dir = Path(out_dir)
    md_path, csv_path = out_dir / "results.md", out_dir / "results.csv"
    atomic_write_bytes(md_path, format_results_markdown(rows, title=title, metrics=metrics).encode("utf-8"))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "n_runs", "std_over", "n_images", *(f"{k}_{s}" for k in metrics for s in ("mean", "std"))])
    for r in rows:
        writer.writerow(
            [r.method, r.n_runs, r.std_over, r.n_images, *(f"{v:.6f}" for k in metrics for v in (r.mean[k], r.std[k]))]
        )
    atomic_write_bytes(csv_path, buf.getvalue().encode("utf-8"))
    return md_path, csv_path


def seen_in_training(model_dir: Path, test_dir: Path, names: set[str]) -> list[str]:
    """Names of ``names`` that the model at ``model_dir`` trained or was selected on, per its
    ``split.json`` (in the seed folder or the fine-tuning folder above it), when ``test_dir`` is
    one of that split's train / val / data folders."""
    for path in (model_dir / "split.json", model_dir.parent / "split.json"):
        if path.is_file():
            try:
                split = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                return []
            source = split.get("source") or {}
            folders = {Path(str(source[k])).resolve() for k in ("data", "train", "val") if isinstance(source.get(k), str)}
            if Path(test_dir).resolve() not in folders:
                return []
            return sorted(names & (set(split.get("train", [])) | set(split.get("val", []))))
    return []


def prediction_notes(masks: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> list[str]:
    """Warnings about degenerate predictions: (almost) every pixel vessel, or (almost) none."""
    if not masks:
        return []
    fg = float(np.mean([m.mean() for m in masks]))
    gt = float(np.mean([t.mean() for t in truths]))
    if fg >= 0.9:
        return [f"the model predicts {fg:.0%} of the pixels as vessel (ground truth {gt:.1%}): it has not learnt to "
                "segment; its scores say nothing about vessels"]
    if fg <= 0.001 < gt:
        return [f"the model predicts almost no vessel ({fg:.2%} of the pixels, ground truth {gt:.1%})"]
    return []
