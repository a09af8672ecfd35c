"""``priormim bench``: pretrain, fine-tune and score every method the same way; one report."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def _budget_override(text: str) -> tuple[str, object]:
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"'{text}' is not FIELD=VALUE (e.g. pretrain_epochs=5)")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


class _OncePerMessage(logging.Filter):
    """Let each distinct log message through once (a real data set's mask warning would
    otherwise repeat for every one of dozens of fine-tuning runs)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = record.getMessage()
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def register(subparsers: argparse._SubParsersAction) -> None:
    from priormim.benchmark.budgets import BUDGETS
    from priormim.benchmark.methods import BASELINES, DEFAULT_RECIPES
    from priormim.benchmark.runner import SUITES

    p = subparsers.add_parser(
        "bench",
        help="benchmark suite: every method pretrained, fine-tuned and scored alike; tables, figures, report.html",
        description="Generates the data, pretrains each recipe once per seed on one pool, fine-tunes every method on "
        "every data set with one split and budget, scores them with the same metric code, and writes results.md, "
        "CSVs, PNGs and a self-contained report.html into --out. Every (method, seed) pretraining and (method, "
        "data set, seed) fine-tuning run is a folder with done.json written last: re-running the command skips "
        "finished cells, redoes unfinished ones and rebuilds the report. Budgets: "
        + "; ".join(f"{k}: {b.notes}" for k, b in BUDGETS.items()) + ".",
    )
    p.add_argument("--suite", default="xca-small", choices=sorted(SUITES), help="benchmark suite (default xca-small)")
    p.add_argument("--out", type=Path, required=True, help="bench folder (created; re-use it to resume)")
    p.add_argument("--budget", default="cpu", choices=sorted(BUDGETS), help="compute budget preset (default cpu)")
    p.add_argument("--set", dest="budget_set", type=_budget_override, action="append", default=[], metavar="FIELD=VALUE",
                   help="change one budget field, e.g. --set pretrain_epochs=5 (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one pretraining + fine-tuning per seed (default 0 1 2)")
    p.add_argument("--methods", nargs="+", metavar="RECIPE",
                   help=f"pretraining recipes to compare (default: all installed of {' '.join(DEFAULT_RECIPES)})")
    p.add_argument("--baselines", nargs="*", metavar="NAME", choices=list(BASELINES),
                   help=f"methods without pretraining (default: {' '.join(BASELINES)}; --baselines alone for none)")
    p.add_argument("--real", type=Path, nargs="+", default=[], metavar="DIR",
                   help="real segmentation folders (images/ + masks/), each split by the fixed split; e.g. ../shared/data/xca_dca1")
    p.add_argument("--unlabelled", type=Path, nargs="+", default=[], metavar="DIR", help="image folders added to the pretraining pool")
    p.add_argument("--no-real-in-pool", action="store_true", help="keep --real train/val images out of the pretraining pool")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data and of the real splits (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default: one core fewer per data-loader worker of the budget; 1 on a busy machine)")
    p.add_argument("--no-estimate", action="store_true", help="do not time a few steps to predict the run time")
    p.add_argument("--dry-run", action="store_true", help="prepare the data, print the plan and the estimate, run nothing")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from what is in --out")
    p.add_argument("-v", "--verbose", action="store_true", help="log every epoch of every run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Filter only for this command's duration, on the handlers that exist now: a filter left on
    # the root handlers would keep swallowing messages in the caller's process afterwards.
    once = _OncePerMessage()
    handlers = [] if args.verbose else list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(once)
    try:
        return _run(args)
    finally:
        for handler in handlers:
            handler.removeFilter(once)


def _run(args: argparse.Namespace) -> int:
    import torch

    from priormim.benchmark import BenchConfig, get_budget, run_bench, write_report

    if args.report_only:
        if args.threads:
            torch.set_num_threads(args.threads)
        print(f"report -> {write_report(args.out)}")
        return 0
    cfg = BenchConfig(
        out=args.out, budget=get_budget(args.budget, **dict(args.budget_set)), seeds=tuple(args.seeds), suite=args.suite,
        real=tuple(args.real), unlabelled=tuple(args.unlabelled), recipes=tuple(args.methods) if args.methods else None,
        baselines=tuple(args.baselines) if args.baselines is not None else None, data_seed=args.data_seed,
        real_in_pool=not args.no_real_in_pool, device=args.device, threads=args.threads, estimate=not args.no_estimate,
        dry_run=args.dry_run,
    )
    summary = run_bench(cfg)
    return 1 if summary.counts["failed"] else 0
