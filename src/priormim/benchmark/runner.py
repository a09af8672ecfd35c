"""``priormim bench``: every method pretrained, fine-tuned and scored the same way.

The run, in order (each step a resumable :class:`~priormim.benchmark.cells.Cell`):

1. data: synthetic angiograms (deterministic by the data seed), the fixed split of every
   ``--real`` folder, and the pretraining pool (synthetic unlabelled + real train/val +
   ``--unlabelled``) with its vessel priors;
2. per data set: the vesselness baseline (no training, no seed);
3. per seed: the consistency segmentor (if a recipe needs one), one pretraining run per
   recipe on the pool, then every method fine-tuned on every data set;
4. the report (tables, figures, ``report.html``), rebuilt from whatever is on disk.

Folder layout under ``--out``::

    bench.json                                   what the run was made with (checked on re-run)
    data/                                        see priormim.benchmark.data
    pretrain/<recipe>/seed<k>/                   pretraining runs (encoder.safetensors, history.json)
    pretrain/_segmentor/seed<k>/                 the frozen consistency segmentor
    finetune/<dataset>/<method>/seed<k>/         fine-tuning runs (metrics.json)
    finetune/<dataset>/vesselness/               the training-free baseline
    results.md, *.csv, figures/, report.html     the report
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from priormim.benchmark.budgets import Budget, get_budget
from priormim.benchmark.cells import Cell, CellOutcome, Progress, _fmt_duration, run_cell
from priormim.benchmark.data import BenchData, SegDataset, pool_fingerprint, prepare_data, vesselness_border
from priormim.benchmark.methods import label, select_methods
from priormim.benchmark.record import (  # noqa: F401 - BENCH_FILE, dataset_*, read_bench_record re-exported
    BENCH_FILE, SEGMENTOR, check_same_setup, dataset_from_record, dataset_record, hash_names, read_bench_record,
)
from priormim.errors import UserError
from priormim.io import atomic_write_bytes

log = logging.getLogger(__name__)

SUITES = {
    "xca-small": "synthetic X-ray coronary angiograms (labelled train/val/test and an unlabelled pool), "
    "plus every --real segmentation folder and --unlabelled image folder",
}


@dataclass
class BenchConfig:
    """What to run; ``recipes=None`` means every installed default recipe."""

    out: Path
    budget: Budget = field(default_factory=lambda: get_budget("cpu"))
    seeds: tuple[int, ...] = (0, 1, 2)
    suite: str = "xca-small"
    real: tuple[Path, ...] = ()
    unlabelled: tuple[Path, ...] = ()
    recipes: tuple[str, ...] | None = None
    baselines: tuple[str, ...] | None = None
    data_seed: int = 0
    real_in_pool: bool = True
    device: str = "auto"
    threads: int | None = None  # torch CPU threads; None: leave one core per data-loader worker
    estimate: bool = True  # time a few steps first and print the predicted run time
    dry_run: bool = False  # stop after printing the plan and the estimate


@dataclass
class BenchSummary:
    """What a call to :func:`run_bench` did."""

    out: Path
    outcomes: list[CellOutcome]
    seconds: float
    estimate_s: float | None
    report: Path | None

    @property
    def counts(self) -> dict[str, int]:
        c = Counter(o.status for o in self.outcomes)
        return {k: c.get(k, 0) for k in ("ran", "skipped", "failed", "blocked")}


# ----------------------------------------------------------------------------------------------
# The plan


@dataclass
class Plan:
    """Every cell of the run, in execution order, and how to do each."""

    cells: list[Cell]
    work: dict[int, Callable[[], dict]]  # id(cell) -> its work
    consistency: dict[str, bool]  # recipe -> needs the consistency segmentor


def recipe_config(recipe: str, budget: Budget, data: BenchData, seed: int, segmentor: Path | None, device: str):
    """The recipe's pretraining config at the budget's sizes, on the pool, with ``seed``."""
    from priormim.config import load_config

    cfg = load_config(recipe, {
        "model": {"encoder": budget.encoder, "img_size": budget.img_size, "encoder_kwargs": dict(budget.encoder_kwargs),
                  "decoder_embed_dim": budget.decoder_embed_dim, "decoder_depth": budget.decoder_depth,
                  "decoder_num_heads": budget.decoder_num_heads},
        "data": {"images": str(data.pool_images), "priors": str(data.pool_priors), "num_workers": budget.num_workers},
        "optim": {"epochs": budget.pretrain_epochs, "warmup_epochs": budget.pretrain_warmup,
                  "batch_size": budget.pretrain_batch},
        "consistency": {"segmentor": str(segmentor) if segmentor else None},
        "train": {"device": device, "seed": seed, "save_every": 10**6, "progress": False},
    })
    cfg.optim.blr *= budget.blr_scale
    if cfg.optim.lr is not None:
        cfg.optim.lr *= budget.blr_scale
    return cfg


def _needs_consistency(recipe: str) -> bool:
    from priormim.config import load_config

    try:
        return bool(load_config(recipe).consistency.enabled)
    except Exception as exc:  # noqa: BLE001 - a broken recipe fails in its own cell, with its message
        log.warning("recipe %s does not load (%s); its cells will fail", recipe, exc)
        return False


# -- the four kinds of work (each returns extra fields for the cell's done.json) -------------------


def vesselness_work(ds: SegDataset, folder: Path) -> dict:
    """Score thresholded Sato vesselness on the data set's test images (no training)."""
    from priormim.training.finetune_seg import run_vesselness_baseline

    test, names = ds.test_folder_and_names()
    m = run_vesselness_baseline(test, folder, "sato", border=vesselness_border(ds.image_size), names=names)
    return {"dice": m["test"]["summary"]["dice"]["mean"], "cldice": m["test"]["summary"]["cldice"]["mean"]}


def segmentor_work(cfg: BenchConfig, data: BenchData, seed: int, path: Path) -> dict:
    """Train the frozen consistency segmentor on the pool's vessel priors."""
    from priormim.io import list_images
    from priormim.priors.cache import load_prior, prior_path
    from priormim.training.segmentor import SegmentorTrainConfig, train_segmentor

    paths = [p for p in list_images(data.pool_images) if prior_path(data.pool_priors, p).is_file()]
    train_segmentor(SegmentorTrainConfig(epochs=cfg.budget.segmentor_epochs, img_size=cfg.budget.img_size, seed=seed,
                                         num_workers=cfg.budget.num_workers, progress=False),
                    paths=paths, prior_loader=lambda p: load_prior(data.pool_priors, p), out=path, device=_device(cfg))
    return {"images": len(paths)}


def pretrain_work(cfg: BenchConfig, data: BenchData, recipe: str, seed: int, folder: Path, segmentor: Path | None) -> dict:
    """Pretrain ``recipe`` on the pool (resuming from ``last.ckpt`` if an earlier try stopped)."""
    from priormim.training.pretrain import pretrain

    for stale in folder.glob("clustering_*.json"):  # analysis caches of an earlier encoder
        stale.unlink()
    pcfg = recipe_config(recipe, cfg.budget, data, seed, segmentor, cfg.device)
    res = pretrain(pcfg, folder, resume=(folder / "last.ckpt").is_file())
    if res.encoder_path is None or not Path(res.encoder_path).is_file():
        raise RuntimeError("pretraining finished without an exported encoder")
    for numbered in folder.glob("checkpoint-*.ckpt"):  # the final one duplicates last.ckpt
        numbered.unlink()
    last = res.history[-1] if res.history else {}
    return {"epochs": len(res.history),
            "final": {k: v for k, v in last.items() if k.startswith("loss") or k == "masked_vessel_share"}}


def finetune_work(cfg: BenchConfig, ds: SegDataset, method: str, seed: int, method_dir: Path, encoder: Path | None) -> dict:
    """Fine-tune one method on one data set with one seed (``<method_dir>/seed<k>/``)."""
    from priormim.training.finetune_seg import SegFinetuneConfig, finetune_segmentation
    from priormim.training.results import aggregate_runs, write_results_table

    b = cfg.budget
    res = finetune_segmentation(SegFinetuneConfig(
        out=method_dir, model="unet" if method == "unet" else "vit", encoder=encoder, backbone=b.encoder,
        model_kwargs=dict(b.encoder_kwargs), img_size=b.img_size, seeds=(seed,), epochs=b.finetune_epochs,
        warmup_epochs=b.finetune_warmup, batch_size=b.finetune_batch, unet_base_channels=b.unet_base_channels,
        device=cfg.device, label=label(method), **ds.finetune_kwargs(),
    ))
    # The method folder's own table covers every finished seed, not only this one.
    seeds_done = sorted(p for p in method_dir.glob("seed*") if (p / "metrics.json").is_file())
    write_results_table(aggregate_runs(seeds_done), method_dir, title=f"{label(method)} on {ds.name}")
    s = res.summaries[seed]
    return {"dice": s["dice"]["mean"], "cldice": s["cldice"]["mean"]}


def make_plan(cfg: BenchConfig, data: BenchData, recipes: tuple[str, ...], baselines: tuple[str, ...]) -> Plan:
    """Cells in execution order: vesselness per data set, then per seed the segmentor,
    pretraining per recipe and fine-tuning per (method, data set)."""
    out = cfg.out
    plan = Plan(cells=[], work={}, consistency={r: _needs_consistency(r) for r in recipes})

    def add(cell: Cell, work: Callable[[], dict]) -> None:
        plan.cells.append(cell)
        plan.work[id(cell)] = work

    if "vesselness" in baselines:
        for ds in data.datasets:
            folder = out / "finetune" / ds.name / "vesselness"
            add(Cell("vesselness", "vesselness", folder, dataset=ds.name), partial(vesselness_work, ds, folder))

    finetuned = [b for b in baselines if b != "vesselness"] + list(recipes)
    for seed in cfg.seeds:
        seg_folder = out / "pretrain" / SEGMENTOR / f"seed{seed}"
        seg_path = seg_folder / "segmentor.safetensors"
        if any(plan.consistency.values()):
            add(Cell("segmentor", "consistency segmentor", seg_folder, seed=seed),
                partial(segmentor_work, cfg, data, seed, seg_path))
        for recipe in recipes:
            folder = out / "pretrain" / recipe / f"seed{seed}"
            uses_segmentor = plan.consistency[recipe]
            add(Cell("pretrain", recipe, folder, seed=seed, needs=(seg_folder,) if uses_segmentor else ()),
                partial(pretrain_work, cfg, data, recipe, seed, folder, seg_path if uses_segmentor else None))
        for ds in data.datasets:
            for method in finetuned:
                method_dir = out / "finetune" / ds.name / method
                encoder = None if method in baselines else out / "pretrain" / method / f"seed{seed}" / "encoder.safetensors"
                add(Cell("finetune", method, method_dir / f"seed{seed}", seed=seed, dataset=ds.name,
                         needs=(encoder.parent,) if encoder is not None else ()),
                    partial(finetune_work, cfg, ds, method, seed, method_dir, encoder))
    return plan


def _set_threads(cfg: BenchConfig) -> None:
    """``cfg.threads``, else on a CPU one core fewer per data-loader worker (on 2 cores with
    one worker: 1 thread; two threads plus a decoding worker oversubscribe and run slower)."""
    import os

    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif cfg.budget.num_workers and _device(cfg).type == "cpu":
        torch.set_num_threads(min(torch.get_num_threads(), max(1, (os.cpu_count() or 1) - cfg.budget.num_workers)))


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _device(cfg: BenchConfig):
    from priormim.training.distributed import resolve_device

    return resolve_device(cfg.device)


# ----------------------------------------------------------------------------------------------
# bench.json: what the folder holds


def _setup_record(cfg: BenchConfig) -> dict:
    """The settings that decide the data and the budget (must match on a re-run)."""
    return {
        "suite": cfg.suite,
        "budget": cfg.budget.to_dict(),
        "data_seed": cfg.data_seed,
        "real": [str(Path(p).resolve()) for p in cfg.real],
        "unlabelled": [str(Path(p).resolve()) for p in cfg.unlabelled],
        "real_in_pool": cfg.real_in_pool,
    }


def _bench_record(cfg: BenchConfig, data: BenchData, recipes: tuple[str, ...], baselines: tuple[str, ...]) -> dict:
    return {
        **_setup_record(cfg),
        "pool": {"sources": data.pool_sources, "n": data.pool_size,
                 "fingerprint": hash_names(pool_fingerprint(data.pool_images))},
        "datasets": [dataset_record(ds) for ds in data.datasets],
        "pool_images": str(data.pool_images),
        "pool_priors": str(data.pool_priors),
        "example_images": [str(p) for p in data.example_images],
        "last_run": {"seeds": list(cfg.seeds), "recipes": list(recipes), "baselines": list(baselines),
                     "device": str(_device(cfg)), "torch_threads": _threads()},
    }


# ----------------------------------------------------------------------------------------------
# The run


def run_bench(cfg: BenchConfig, echo=print) -> BenchSummary:
    """Run (or resume) a bench into ``cfg.out`` and write the report; see the module doc."""
    import torch

    if cfg.suite not in SUITES:
        raise UserError(f"unknown suite {cfg.suite!r}; available: {', '.join(SUITES)}")
    if not cfg.seeds:
        raise UserError("pass at least one seed")
    t_start = time.perf_counter()
    _set_threads(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = cfg.budget
    methods = select_methods(list(cfg.recipes) if cfg.recipes is not None else None,
                             list(cfg.baselines) if cfg.baselines is not None else None)
    if methods.missing:
        echo(f"skipping recipes that are not installed: {', '.join(methods.missing)}")
    old = read_bench_record(out)
    check_same_setup(old, _setup_record(cfg), out)  # before any data is generated

    echo(f"bench {cfg.suite}, budget {budget.name}: seeds {list(cfg.seeds)}; baselines {', '.join(methods.baselines) or 'none'}; "
         f"recipes {', '.join(methods.recipes) or 'none'}")
    t = time.perf_counter()
    data = prepare_data(
        out / "data", synth_size=budget.synth_size, data_seed=cfg.data_seed, real=list(cfg.real), unlabelled=list(cfg.unlabelled),
        counts={"unlabelled": budget.n_unlabelled, "train": budget.n_train, "val": budget.n_val, "test": budget.n_test},
        real_in_pool=cfg.real_in_pool, n_examples=budget.n_example_images, prior_device=str(_device(cfg)),
    )
    record = _bench_record(cfg, data, methods.recipes, methods.baselines)
    check_same_setup(old, record, out)
    atomic_write_bytes(out / BENCH_FILE, json.dumps(record, indent=1).encode("utf-8"))
    echo(f"data ready in {time.perf_counter() - t:.1f} s: data sets {', '.join(d.name for d in data.datasets)}; "
         f"pretraining pool {data.pool_size} images ({', '.join(f'{k} {v}' for k, v in data.pool_sources.items())})")

    plan = make_plan(cfg, data, methods.recipes, methods.baselines)
    todo = [c for c in plan.cells if not c.is_done()]
    estimate_s = None
    if cfg.estimate and todo:
        estimate_s = _estimate(cfg, data, plan, todo, echo)
    if cfg.dry_run:
        for c in plan.cells:
            echo(f"  {'done ' if c.is_done() else 'to do'}  {c.title():<52} ~{c.estimate_s:.0f} s")
        return BenchSummary(out=out, outcomes=[], seconds=time.perf_counter() - t_start, estimate_s=estimate_s, report=None)

    progress = Progress(plan.cells, echo=echo)
    outcomes = []
    for cell in plan.cells:
        outcome = run_cell(cell, plan.work[id(cell)])
        outcomes.append(outcome)
        progress.report(outcome)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    t = time.perf_counter()
    from priormim.benchmark.report import write_report

    report = write_report(out)
    summary = BenchSummary(out=out, outcomes=outcomes, seconds=time.perf_counter() - t_start, estimate_s=estimate_s, report=report)
    c = summary.counts
    echo(f"report written in {time.perf_counter() - t:.1f} s: {report}")
    echo(f"cells: {c['ran']} ran, {c['skipped']} already done, {c['failed']} failed, {c['blocked']} blocked; "
         f"total time {_fmt_duration(summary.seconds)}" + (f" (estimated {_fmt_duration(estimate_s)})" if estimate_s else ""))
    return summary


def _estimate(cfg: BenchConfig, data: BenchData, plan: Plan, todo: list[Cell], echo) -> float:
    """Time a few steps, set every cell's estimate and print the total for the cells to do."""
    from priormim.benchmark.estimate import DatasetSize, estimate_cell, measure_engine_step, measure_step_times

    t = time.perf_counter()
    device = _device(cfg)
    try:
        engine_step = measure_engine_step(cfg.budget, data.pool_images, data.pool_priors, device, cfg.out / ".estimate")
    except Exception as exc:  # noqa: BLE001 - the estimate falls back to a bare step; the run itself is unaffected
        log.warning("could not time the pretraining engine (%s); estimating from a bare model step", exc)
        engine_step = None
    times = measure_step_times(cfg.budget, device, sample_image=data.example_images[0] if data.example_images else None,
                               engine_step=engine_step)
    sizes = {}
    for ds in data.datasets:
        if ds.kind == "real":
            sizes[ds.name] = DatasetSize(len(ds.split["train"]), len(ds.split["val"]), len(ds.split["test"]), ds.image_size)
        else:
            sizes[ds.name] = DatasetSize(cfg.budget.n_train, cfg.budget.n_val, cfg.budget.n_test, ds.image_size)
    for cell in plan.cells:
        cell.estimate_s = estimate_cell(cell, cfg.budget, times, pool_size=data.pool_size, sizes=sizes,
                                        consistency=plan.consistency)
    total = sum(c.estimate_s for c in todo) + 10.0 + 2.0 * len(plan.consistency)  # + the report
    by_kind = Counter(c.kind for c in todo)
    echo(f"estimate: ~{_fmt_duration(total)} for {len(todo)} cell(s) to do ({', '.join(f'{n} {k}' for k, n in by_kind.items())}); "
         f"measured in {time.perf_counter() - t:.1f} s: MAE step {times.pretrain_step * 1e3:.0f} ms, consistency loss "
         f"+{times.consistency_extra * 1e3:.0f} ms, ViT fine-tuning step {times.vit_step * 1e3:.0f} ms, U-Net step "
         f"{times.unet_step * 1e3:.0f} ms")
    return total
