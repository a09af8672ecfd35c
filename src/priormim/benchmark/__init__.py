"""``priormim bench``: the method comparison, ablation and analyses as one resumable run.

Entry points: :func:`run_bench` with a :class:`BenchConfig` (the CLI builds one), and
:func:`write_report` to rebuild ``results.md`` / CSVs / figures / ``report.html`` from a
bench folder. Budgets are presets in :data:`BUDGETS` (``smoke``, ``cpu``, ``gpu``).
"""

from priormim.benchmark.budgets import BUDGETS, Budget, get_budget
from priormim.benchmark.runner import SUITES, BenchConfig, BenchSummary, run_bench


def write_report(out):  # noqa: ANN001, ANN201 - thin lazy wrapper (matplotlib loads on first use)
    """Rebuild the report of the bench folder ``out``; returns the path of ``report.html``."""
    from priormim.benchmark.report import write_report as _write

    return _write(out)


__all__ = ["BUDGETS", "SUITES", "BenchConfig", "BenchSummary", "Budget", "get_budget", "run_bench", "write_report"]
