"""``results.md`` / ``results.csv`` of a classification experiment (mean ± std over seeds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from priormim.io import atomic_write_bytes
from priormim.training.results import aggregate_runs, write_results_table

def _summary_keys(metrics: dict[str, Any]) -> list[str]:
    labels = list(metrics["per_label_auc"])
    return ["auc"] + ([f"auc_{name}" for name in labels] if len(labels) > 1 else [])


def write_results(out: Path, seed_dirs: list[Path], *, title: str) -> None:
    """``results.md`` and ``results.csv``: test AUC (and per-label AUCs), mean ± std over seeds.

    Aggregation and the CSV are ``priormim.training.results``' (the same table as the other
    ``finetune`` commands); the Markdown is written here because that module's footer
    describes segmentation metrics.
    """
    metrics = [json.loads((d / "metrics.json").read_text()) for d in seed_dirs]
    keys = _summary_keys(metrics[0])
    rows = aggregate_runs(seed_dirs, metrics=keys)
    write_results_table(rows, out, title, metrics=keys)
    m0 = metrics[0]
    heads = ["test AUC", *(f"AUC {k[len('auc_'):]}" for k in keys[1:])]
    md = [f"# {title}", "", "| method | " + " | ".join(heads) + " | seeds |",
          "|" + "---|" * (len(keys) + 2)]
    for r in rows:
        cells = [f"{r.mean[k]:.4f} ± {r.std[k]:.4f}" if r.n_runs > 1 else f"{r.mean[k]:.4f}" for k in keys]
        md.append(f"| {r.method} | " + " | ".join(cells) + f" | {', '.join(map(str, r.seeds))} |")
    md += [
        "",
        f"Test AUC: mean ± sample std over seeds. Task {m0['task']}"
        + (f", score = probability of '{m0['positive_class']}'" if m0.get("positive_class") else "")
        + (", AUC = mean over labels" if m0["task"] == "multilabel" else ", macro one-vs-rest AUC" if m0["task"] == "multiclass" else "")
        + f". Images: {m0['n_train']} train, {m0['n_val']} val, {m0['n_test']} test"
        + (f"; {len(m0['skipped_files'])} unreadable files skipped" if m0["skipped_files"] else "") + ".",
    ]
    md += [f"{note[0].upper()}{note[1:]}." for note in m0.get("splits", [])]
    atomic_write_bytes(out / "results.md", ("\n".join(md) + "\n").encode())

