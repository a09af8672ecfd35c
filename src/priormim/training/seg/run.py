"""Fine-tuning every seed of a config, skipping finished ones, and writing the results tables."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from priormim.errors import UserError
from priormim.io import atomic_write_bytes
from priormim.training.distributed import resolve_device
from priormim.training.results import ResultRow, aggregate_runs, read_metrics, write_results_table
from priormim.training.seg.config import SegFinetuneConfig
from priormim.training.seg.data import prepare_data
from priormim.training.seg.loop import _check_finished_seed, rescore_seed, train_one_seed

log = logging.getLogger(__name__)

@dataclass
class SegRunResult:
    """Outcome of :func:`finetune_segmentation`."""

    out_dir: Path
    method: str
    run_dirs: list[Path]
    summaries: dict[int, dict[str, dict[str, float]]]  # seed -> test summary
    skipped_seeds: list[int]
    rows: list[ResultRow]
    results_md: Path
    results_csv: Path
    ensemble: dict[str, Any] | None = None  # with cfg.ensemble and >= 2 seeds: see evaluate_seed_ensemble

def _check_split_file(out: Path, split: dict[str, Any]) -> None:
    path = out / "split.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = None
        if old is not None and any(old.get(k) != split[k] for k in ("train", "val", "test")):
            raise UserError("this output folder holds runs made with a different train/val/test split; use a new --out", path)
    atomic_write_bytes(path, json.dumps(split, indent=2).encode("utf-8"))


def finetune_segmentation(cfg: SegFinetuneConfig, *, resume: bool = False, rescore: bool = False,
                          overwrite: bool = False) -> SegRunResult:
    """Fine-tune one model per seed, skipping seeds already finished, and write the tables.

    ``resume``: continue an interrupted seed from its ``last.ckpt`` (see :func:`train_one_seed`).
    ``rescore``: finished seeds are not skipped but re-scored with their saved weights, the
    post-processing re-picked on the validation split (see :func:`rescore_seed`).
    ``overwrite``: the seeds, split and tables already in ``cfg.out`` are removed first; without
    it a finished seed trained with other options is a UserError naming them.

    Under ``torchrun`` the seeds are shared out over the processes (seed ``k``-th of the list
    on rank ``k % world_size``, each on its own GPU); every process trains whole seeds, so the
    results are identical to a single-process run. Rank 0 writes ``split.json`` and, once all
    seeds are done, the results tables; each rank writes only its own ``seed<k>/`` folders.
    """
    from priormim.training import distributed as D

    cfg = cfg.resolved()
    dist = D.dist_info_from_env()
    device = resolve_device(cfg.device, dist.local_rank)
    if device.type == "cuda" and dist.enabled:
        torch.cuda.set_device(device)
    # Seeds are independent jobs: the ranks coordinate through torchrun's store and never form
    # a process group, so evaluation code stays local to each rank.
    group = D.StoreGroup(dist, "finetune-seg") if dist.enabled else None
    try:
        return _finetune_seeds(cfg, dist, group, device, resume, rescore, overwrite)
    finally:
        if group is not None:
            group.close()


def _finetune_seeds(cfg: SegFinetuneConfig, dist: Any, group: Any, device: torch.device, resume: bool, rescore: bool,
                    overwrite: bool = False) -> SegRunResult:
    from priormim.outputs import claim_output, refuse_input_overlap

    data = prepare_data(cfg)

    def setup() -> list[int]:
        refuse_input_overlap(cfg.out, [("--train", cfg.train), ("--test", cfg.test), ("--val", cfg.val), ("--data", cfg.data),
                                       ("--encoder", cfg.encoder)], around=False)
        if overwrite:
            claim_output(cfg.out, markers=("seed*/metrics.json", "seed*/last.ckpt", "results.md"),
                         owned=("seed*", "results.csv", "split.json"), overwrite=True)
        try:
            cfg.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the output folder ({exc.strerror or exc}); choose another --out", cfg.out) from exc
        _check_split_file(cfg.out, data.split)
        done = [s for s in cfg.seeds if (cfg.out / f"seed{s}" / "metrics.json").is_file()]
        for s in done:
            _check_finished_seed(cfg, s, rescore)
        return done

    skipped = group.run_on_main(setup, "setup") if group is not None else setup()
    if dist.is_main:
        for seed in skipped:
            log.info("seed %d already finished (%s); %s", seed, cfg.out / f"seed{seed}" / "metrics.json",
                     "re-scoring it" if rescore else "skipped")
        log.info("%s: %d train / %d val / %d test images, img_size %s, %d epoch(s), seeds %s%s",
                 cfg.label, len(data.train), len(data.val), len(data.test), cfg.img_size, cfg.epochs, list(cfg.seeds),
                 f" over {dist.world_size} processes" if dist.enabled else "")
    mine = [s for k, s in enumerate(cfg.seeds) if k % dist.world_size == dist.rank]
    failure: BaseException | None = None
    for seed in mine:
        run_dir = cfg.out / f"seed{seed}"
        if seed in skipped and not rescore:
            continue
        try:
            if seed in skipped:
                rescore_seed(cfg, seed, data, run_dir, device=device)
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            train_one_seed(cfg, seed, data, run_dir, resume=resume, device=device)
        except (UserError, OSError) as exc:
            if group is None:
                raise
            failure = exc  # tell the others below instead of leaving them waiting
            break
    if group is not None:
        failed = [r for r, f in enumerate(group.all_gather("seeds-done", None if failure is None else str(failure))) if f]
        if failure is not None:
            raise failure
        if failed:
            raise UserError(f"rank {dist.rank}: stopping because rank(s) {', '.join(map(str, failed))} failed (see their message)")

    run_dirs, summaries = [], {}
    for seed in cfg.seeds:
        run_dir = cfg.out / f"seed{seed}"
        metrics = read_metrics(run_dir / "metrics.json")
        run_dirs.append(run_dir)
        summaries[seed] = metrics["test"]["summary"]
    md, csv_path = cfg.out / "results.md", cfg.out / "results.csv"
    rows = aggregate_runs(run_dirs)
    if dist.is_main:
        md, csv_path = write_results_table(rows, cfg.out, title=f"Vessel segmentation: {cfg.label}")
    ensemble = None
    if cfg.ensemble and len(run_dirs) > 1 and dist.is_main:
        ensemble = write_seed_ensemble(run_dirs, data, cfg.out, device=device)
    if group is not None:
        group.all_gather("tables-written", True)
    return SegRunResult(out_dir=cfg.out, method=cfg.label, run_dirs=run_dirs, summaries=summaries, skipped_seeds=skipped,
                        rows=rows, results_md=md, results_csv=csv_path, ensemble=ensemble)


def write_seed_ensemble(run_dirs: list[Path], data: Any, out: Path, *, device: torch.device) -> dict[str, Any]:
    """Score the mean probability of the seeds (post-processing picked on val, test scored once),
    write ``<out>/ensemble/metrics.json`` and add its line to ``<out>/results.md``."""
    from priormim.training.seg.baseline import evaluate_seed_ensemble

    res = evaluate_seed_ensemble(run_dirs, data.val, data.test, device=str(device))
    atomic_write_bytes(out / "ensemble" / "metrics.json", json.dumps(res, indent=2).encode("utf-8"))
    s = res["test"]["summary"]
    post = res["postprocess"]
    cut = f"hysteresis {post['low']:.2f}/{post['threshold']:.2f}" if post.get("low") is not None else f"threshold {post['threshold']:.2f}"
    line = (f"\nSeed ensemble (mean probability of {len(run_dirs)} seeds; {cut} picked on val): test DSC {s['dice']['mean']:.4f} "
            f"± {s['dice']['std']:.4f}, clDice {s['cldice']['mean']:.4f} ({s['dice']['n']} images; ± over images). "
            f"Per image: {out / 'ensemble' / 'metrics.json'}\n")
    md = out / "results.md"
    atomic_write_bytes(md, (md.read_text(encoding="utf-8").rstrip("\n") + "\n" + line).encode("utf-8"))
    log.info("seed ensemble of %d: test DSC %.4f, clDice %.4f", len(run_dirs), s["dice"]["mean"], s["cldice"]["mean"])
    return res
