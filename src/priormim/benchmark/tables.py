"""Results on disk -> typed records -> tables (Markdown, HTML and CSV from one definition).

:func:`collect_scores` reads every finished fine-tuning / vesselness cell; :func:`aggregate`
gives mean ± sample std over seeds per (method, data set, metric). A :class:`Table` renders
the same rows as Markdown (``results.md``) and HTML (``report.html``, rendered by the
Jinja2 template ``benchmark/templates/report.html.j2`` from the same rows, bold and shade).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from priormim.benchmark.cells import read_done
from priormim.benchmark.methods import BASELINES, DEFAULT_RECIPES, label
from priormim.metrics import mean_std

SEG_METRICS = ("dice", "cldice", "precision", "recall")
METRIC_NAMES = {"dice": "DSC", "cldice": "clDice", "precision": "Precision", "recall": "Recall",
                "silhouette": "Silhouette ↑", "calinski_harabasz": "Calinski-Harabasz ↑", "davies_bouldin": "Davies-Bouldin ↓"}


@dataclass(frozen=True)
class RunScore:
    """Test scores of one finished fine-tuning cell (``seed`` None for the vesselness baseline)."""

    method: str
    dataset: str
    seed: int | None
    dice: float
    cldice: float
    precision: float
    recall: float
    n_images: int
    seconds: float

    def metric(self, key: str) -> float:
        return float(getattr(self, key))


@dataclass(frozen=True)
class Stat:
    """Mean ± sample std of ``n`` values (``values`` kept for plots and paired differences)."""

    mean: float
    std: float
    n: int
    values: tuple[float, ...] = ()

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        vals = tuple(float(v) for v in values if v is not None and not math.isnan(float(v)))
        m, s = mean_std(vals)
        return cls(m, s, len(vals), vals)

    def fmt(self, digits: int = 3, n_expected: int | None = None) -> str:
        if self.n == 0 or math.isnan(self.mean):
            return "–"
        text = f"{self.mean:.{digits}f}" if self.n == 1 else f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"
        if n_expected is not None and 1 < n_expected != self.n and self.n > 1:
            text += f" (n={self.n})"
        elif n_expected is not None and n_expected > 1 and self.n == 1:
            text += " (n=1)"
        return text


def method_order(methods: Iterable[str]) -> list[str]:
    """Baselines first, then the default recipes in table order, then any other recipe."""
    known = list(BASELINES) + list(DEFAULT_RECIPES)
    ms = set(methods)
    return [m for m in known if m in ms] + sorted(ms - set(known))


def _seed_of(folder: Path) -> int | None:
    name = folder.name
    return int(name[4:]) if name.startswith("seed") and name[4:].isdigit() else None


def collect_scores(out: Path) -> list[RunScore]:
    """Every finished cell under ``<out>/finetune/<dataset>/<method>/[seed<k>/]``."""
    scores = []
    root = Path(out) / "finetune"
    if not root.is_dir():
        return scores
    for ds_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for method_dir in sorted(p for p in ds_dir.iterdir() if p.is_dir()):
            cells = [method_dir] if (method_dir / "done.json").is_file() else sorted(method_dir.glob("seed*"))
            for cell in cells:
                done = read_done(cell)
                if done is None:
                    continue
                try:
                    summary = json.loads((cell / "metrics.json").read_text(encoding="utf-8"))["test"]["summary"]
                except (OSError, ValueError, KeyError):
                    continue
                get = lambda k: float(summary.get(k, {}).get("mean", math.nan))  # noqa: E731
                scores.append(RunScore(method=method_dir.name, dataset=ds_dir.name, seed=_seed_of(cell),
                                       dice=get("dice"), cldice=get("cldice"), precision=get("precision"),
                                       recall=get("recall"), n_images=int(summary.get("dice", {}).get("n", 0)),
                                       seconds=float(done.get("seconds", math.nan))))
    return scores


def aggregate(scores: Sequence[RunScore], metrics: Sequence[str] = SEG_METRICS) -> dict[tuple[str, str, str], Stat]:
    """``{(method, dataset, metric): Stat over seeds}``."""
    groups: dict[tuple[str, str], list[RunScore]] = {}
    for s in scores:
        groups.setdefault((s.method, s.dataset), []).append(s)
    out = {}
    for (method, ds), runs in groups.items():
        runs = sorted(runs, key=lambda r: -1 if r.seed is None else r.seed)
        for m in metrics:
            out[(method, ds, m)] = Stat.of(r.metric(m) for r in runs)
    return out


# ----------------------------------------------------------------------------------------------
# One table, two renderings


@dataclass
class Table:
    """Rows of strings; ``bold`` cells are the best of their column."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    bold: set[tuple[int, int]] = field(default_factory=set)  # (row, column)
    shade: dict[tuple[int, int], float] = field(default_factory=dict)  # (row, column) -> 0..1 (HTML heat)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.headers) + " |", "|" + "---|" * len(self.headers)]
        for r, row in enumerate(self.rows):
            cells = [f"**{c}**" if (r, j) in self.bold and c != "–" else c for j, c in enumerate(row)]
            lines.append("| " + " | ".join(cells) + " |")
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines) + "\n"


def mark_best(table: Table, columns: dict[int, list[float]], *, lower_is_better: Sequence[int] = ()) -> None:
    """Bold the best value of each column and shade every cell by its rank in the column."""
    for j, values in columns.items():
        finite = [(v, r) for r, v in enumerate(values) if v is not None and not math.isnan(v)]
        if not finite:
            continue
        lo, hi = min(v for v, _ in finite), max(v for v, _ in finite)
        for v, r in finite:
            t = 0.5 if hi == lo else (v - lo) / (hi - lo)
            table.shade[(r, j)] = 1.0 - t if j in lower_is_better else t
        best = min(finite)[1] if j in lower_is_better else max(finite)[1]
        table.bold.add((best, j))


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> Path:
    from priormim.io import atomic_write_bytes

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow(["" if v is None else f"{v:.6g}" if isinstance(v, float) else v for v in row])
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
    return Path(path)


# ----------------------------------------------------------------------------------------------
# The bench's tables


def comparison_table(stats: dict[tuple[str, str, str], Stat], methods: Sequence[str], datasets: Sequence[str],
                     n_seeds: int) -> Table:
    """Rows = methods; per data set a DSC and a clDice column (mean ± std over seeds)."""
    headers = ["Method"] + [f"{ds} {METRIC_NAMES[m]}" for ds in datasets for m in ("dice", "cldice")]
    rows, columns = [], {}
    for r, method in enumerate(methods):
        row = [label(method)]
        for ds in datasets:
            for m in ("dice", "cldice"):
                st = stats.get((method, ds, m), Stat.of([]))
                row.append(st.fmt(n_expected=None if method == "vesselness" else n_seeds))
                columns.setdefault(len(row) - 1, []).append(st.mean if st.n else math.nan)
        rows.append(row)
    t = Table("Vessel segmentation: every method, same split and budget", headers, rows,
              note=f"Test-set DSC and clDice at the images' original resolution; mean ± sample std over {n_seeds} seed(s) "
                   "(each seed pretrains and fine-tunes anew). Vesselness has no training and no seed. Best per column in bold.")
    mark_best(t, columns)
    return t


def ablation_table(stats: dict[tuple[str, str, str], Stat], ablation: dict[str, tuple[bool, bool]],
                   datasets: Sequence[str], n_seeds: int, silhouette: dict[str, Stat] | None = None) -> Table:
    """The 2 x 2 ablation: anatomy-guided masking x consistency loss (``silhouette``: the
    features' silhouette on the first data set, per recipe)."""
    headers = ["Recipe", "Guided masking", "Consistency loss"] + [f"{ds} {METRIC_NAMES[m]}" for ds in datasets for m in ("dice", "cldice")]
    if silhouette is not None:
        headers.append(f"{datasets[0]} feature silhouette")
    rows, columns = [], {}
    for recipe, (guidance, consistency) in ablation.items():
        row = [label(recipe), "✓" if guidance else "✗", "✓" if consistency else "✗"]
        for ds in datasets:
            for m in ("dice", "cldice"):
                st = stats.get((recipe, ds, m), Stat.of([]))
                row.append(st.fmt(n_expected=n_seeds))
                columns.setdefault(len(row) - 1, []).append(st.mean if st.n else math.nan)
        if silhouette is not None:
            st = silhouette.get(recipe, Stat.of([]))
            row.append(st.fmt(n_expected=n_seeds))
            columns.setdefault(len(row) - 1, []).append(st.mean if st.n else math.nan)
        rows.append(row)
    t = Table("Ablation: guided masking × consistency loss", headers, rows,
              note="MAE = neither; VasoMIM = both. Same pool, budget and seeds as the comparison. "
                   "A dash: the recipe was not run (pass it to --methods).")
    mark_best(t, columns)
    return t
