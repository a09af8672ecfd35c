"""Golden runs (issue 13): the numbers the training code produces today, to compare a refactor against.

For each of the 13 packaged pretraining recipes a 2-epoch tiny run of
:func:`priormim.training.pretrain.pretrain` at a fixed seed (per-step loss terms, lr, beta,
masked vessel share: every number of ``log.jsonl`` but the times), plus one ``finetune seg``
(tiny ViT from the MAE golden run's encoder) and one ``finetune cls`` (linear probe on the same
encoder), 2 epochs each (per-epoch losses and final metrics from ``metrics.json``). The two
paper-scale recipes (``mae_paper``, ``vasomim_paper``: ViT-B at 224 px) are left out: they
are the ``mae`` / ``vasomim`` recipes at another scale, and too big for a run of seconds.

Record (in the commit that changes behaviour, with the reason in its message)::

    python tests/golden/record.py --write        # without --write: compare, exit 1 on a difference

``tests/golden/test_golden.py`` re-runs the same and compares every number to
``golden.json`` (abs / rel tolerance :data:`TOL`). Everything runs on the CPU with one
torch thread: the numbers are those of this CPU code path (torch's CPU kernels), not of a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GOLDEN_PATH = Path(__file__).with_name("golden.json")
RECORD_COMMAND = "python tests/golden/record.py --write"
TOL = 1e-6  # abs and rel

# The packaged recipes under test; mae_paper / vasomim_paper (ViT-B, 224 px) are left out.
RECIPES = (
    "mae", "vasomim", "vasomim_guidance_only", "vasomim_consistency_only", "vpmim",
    "simmim", "amt", "hpm", "deblurmim", "crossmae", "mocov3", "dino", "chexworld",
)
LEFT_OUT = ("mae_paper", "vasomim_paper")
FINETUNES = ("finetune_seg", "finetune_cls")
SEED = 0

# The tiny model of tests/training/conftest.py (TINY_OVERRIDES), copied rather than imported
# so that the golden numbers do not move when that fixture does, shrunk to depth 1. The lr is
# 1e-3 (blr 0.064 x batch 4 / 256) rather than 1.6e-5 so that the updates move the losses
# well above the tolerance, and one warm-up epoch puts both phases of the schedule in the log.
# train.deterministic stays false (the default): on the CPU with one thread the runs repeat
# exactly without it, and the golden runs take the default code path (batched masking rather
# than the per-sample masking of deterministic mode).
TINY = [
    "model.img_size=32",
    "model.encoder_kwargs={patch_size: 4, depth: 1, embed_dim: 32, num_heads: 2}",
    "model.decoder_embed_dim=16",
    "model.decoder_depth=1",
    "model.decoder_num_heads=2",
    "optim.batch_size=4",
    "optim.warmup_epochs=1",
    "optim.blr=0.064",
    "optim.epochs=2",
    "data.num_workers=0",
    "train.progress=false",
    "train.save_every=1",
    "train.log_every=1",
    "train.device=cpu",
    "train.amp=off",
    f"train.seed={SEED}",
    "consistency.segmentor_epochs=1",
    "consistency.segmentor_base_channels=4",
]
# Per recipe: small heads for the joint-embedding methods (their 4096-wide heads would dominate
# the time), VP-MIM's pyramid at two scales of the 8 x 8 grid (as tests/training/test_pretrain_vpmim.py).
RECIPE_OVERRIDES: dict[str, list[str]] = {
    "mocov3": ["model.method_kwargs={hidden_dim: 64, out_dim: 32, temperature: 0.2, momentum: 0.99}"],
    "dino": ["model.method_kwargs={out_dim: 64, hidden_dim: 64, bottleneck_dim: 32, student_temp: 0.1, teacher_temp: 0.04}"],
    "vpmim": ["model.pyramid_scales=[1, 2]", "model.pyramid_weights=[1.0, 0.5]", "model.decoder_depth=2"],
}
XCA = dict(n=8, size=48, seed=0)  # XCA recipes: 2 steps of 4 images per epoch
CXR = dict(n=8, size=48, seed=0, lesion_rate=0.5)  # VP-MIM (images + simulated REFLACX gaze)
SEG_DATA = dict(n=12, size=32, seed=2)  # finetune seg: 12 angiograms + masks, split 7 / 2 / 3
CLS = dict(n=20, size=32, seed=1, lesion_rate=0.5)  # finetune cls: 20 labelled chest X-rays
SEG = dict(model="vit", decoder_base=8, img_size=32, epochs=2, batch_size=2, seeds=(0,), device="cpu",
           warmup_epochs=0)
CLS_FT = dict(mode="linear", seeds=[0], img_size=32, epochs=2, warmup_epochs=0, batch_size=4, num_workers=0,
              device="cpu", save_model=False)

# Not compared: wall-clock times and the like.
IGNORED_KEYS = ("epoch_time_s", "time_s", "train_time_s")


@contextlib.contextmanager
def reproducible_torch() -> Iterator[None]:
    """One intra-op thread (float reductions are summed in a thread-count-dependent order: with
    two threads mocov3's loss moves by 3e-6) and torch's deterministic-algorithms flag off, as
    ``train.deterministic=false`` expects it (a ``train.deterministic=true`` run earlier in the
    process leaves it on; on the CPU it changes none of these numbers today); both restored
    afterwards, so other tests see the state they had."""
    import torch

    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)


@dataclass
class GoldenData:
    """The synthetic data of the golden runs, written once under ``root``."""

    root: Path
    xca: Path = field(init=False)
    cxr: Path = field(init=False)
    seg: Path = field(init=False)
    cls: Path = field(init=False)

    def __post_init__(self) -> None:
        from priormim.data.synth_cxr import write_synthetic_cxr
        from priormim.data.synth_xca import write_synthetic_xca

        self.xca, self.cxr, self.seg, self.cls = (self.root / n for n in ("xca", "cxr", "seg", "cls"))
        write_synthetic_xca(self.xca, **XCA)
        write_synthetic_xca(self.seg, **SEG_DATA)
        write_synthetic_cxr(self.cxr, **CXR)
        write_synthetic_cxr(self.cls, **CLS)


def _numbers(record: dict[str, Any]) -> dict[str, Any]:
    """The record without its times (numbers as JSON stores them)."""
    return {k: v for k, v in record.items() if k not in IGNORED_KEYS}


def pretrain_overrides(recipe: str, data: GoldenData) -> list[str]:
    images = (data.cxr if recipe == "vpmim" else data.xca) / "images"
    return [*TINY, f"data.images={images}", *RECIPE_OVERRIDES.get(recipe, [])]


def run_pretrain(recipe: str, data: GoldenData, out: Path) -> dict[str, Any]:
    """2 epochs of ``recipe``; returns ``{"steps": [...], "epochs": [...]}`` from its ``log.jsonl``."""
    from priormim.config import load_config
    from priormim.training.pretrain import pretrain

    with reproducible_torch():
        pretrain(load_config(recipe, pretrain_overrides(recipe, data)), out)
    steps, epochs = [], []
    for line in (out / "log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        (epochs if "epoch_time_s" in rec else steps).append(_numbers(rec))
    return {"steps": steps, "epochs": epochs}


def run_finetune_seg(encoder: Path, data: GoldenData, out: Path) -> dict[str, Any]:
    """``finetune seg``: tiny ViT + decoder from ``encoder`` on synthetic angiograms and their masks."""
    from priormim.training.finetune_seg import SegFinetuneConfig, finetune_segmentation

    with reproducible_torch():
        res = finetune_segmentation(SegFinetuneConfig(out=out, data=data.seg, encoder=encoder, **SEG))
    m = json.loads((res.run_dirs[0] / "metrics.json").read_text())
    final = {
        "best_epoch": m["best_epoch"], "best_val_dice": m["best_val_dice"], "threshold": m["postprocess"]["threshold"],
        "val_dice_by_threshold": m["val_dice_by_threshold"], "test": m["test"]["summary"],
        "test_per_image": [_numbers({k: v for k, v in r.items() if isinstance(v, (int, float))})
                           for r in m["test"]["per_image"]],
        "norm": m["norm"], "data": {k: v for k, v in m["data"].items() if k != "source"},
    }
    return {"epochs": [_numbers(r) for r in m["val_curve"]], "final": final}


def run_finetune_cls(encoder: Path, data: GoldenData, out: Path) -> dict[str, Any]:
    """``finetune cls``: linear probe of ``encoder`` on the labelled synthetic chest X-rays."""
    from priormim.training.finetune_cls import ClsFinetuneConfig, finetune_classification

    with reproducible_torch():
        res = finetune_classification(ClsFinetuneConfig(train=data.cls, test=data.cls, out=out, encoder=encoder, **CLS_FT))
    m = res.metrics[0]
    final = {k: m[k] for k in ("test_auc", "per_label_auc", "val_auc", "best_epoch", "n_train", "n_val", "n_test")}
    final["norm"] = {k: v for k, v in m["norm"].items() if k != "source"}
    return {"epochs": [_numbers(r) for r in m["history"]], "final": final}


class GoldenRunner:
    """Runs (and caches) the golden runs in one scratch folder; the fine-tunings reuse the MAE
    run's encoder, so asking for them first runs ``mae``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.data = GoldenData(self.root / "data")
        self.results: dict[str, dict[str, Any]] = {}
        self.seconds: dict[str, float] = {}

    def _timed(self, name: str, fn) -> dict[str, Any]:
        if name not in self.results:
            t0 = time.perf_counter()
            self.results[name] = fn()
            self.seconds[name] = time.perf_counter() - t0
        return self.results[name]

    def pretrain(self, recipe: str) -> dict[str, Any]:
        return self._timed(recipe, lambda: run_pretrain(recipe, self.data, self.root / "runs" / recipe))

    def mae_encoder(self) -> Path:
        self.pretrain("mae")
        return self.root / "runs" / "mae" / "encoder.safetensors"

    def finetune(self, name: str) -> dict[str, Any]:
        fn = {"finetune_seg": run_finetune_seg, "finetune_cls": run_finetune_cls}[name]
        return self._timed(name, lambda: fn(self.mae_encoder(), self.data, self.root / "runs" / name))

    def run(self, name: str) -> dict[str, Any]:
        return self.finetune(name) if name in FINETUNES else self.pretrain(name)


def environment() -> dict[str, str]:
    import numpy
    import timm
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "numpy": numpy.__version__, "machine": platform.machine()}


def record_all(root: Path) -> tuple[dict[str, Any], dict[str, float]]:
    """Every golden run in scratch folder ``root``: (the golden.json content, seconds per run)."""
    runner = GoldenRunner(root)
    runs = {name: runner.run(name) for name in (*RECIPES, *FINETUNES)}
    return {
        "about": (f"Golden runs of issue 13; re-record with `{RECORD_COMMAND}` in the commit that changes "
                  "behaviour, with the reason in its message. See tests/golden/record.py."),
        "environment": environment(),
        "tolerance": TOL,
        "left_out": list(LEFT_OUT),
        "runs": runs,
    }, runner.seconds


# -- comparison --------------------------------------------------------------------------------
def _close(expected: Any, actual: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool) or expected is None or actual is None:
        return expected == actual
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        if math.isnan(expected) or math.isnan(actual):
            return math.isnan(expected) and math.isnan(actual)
        return math.isclose(expected, actual, rel_tol=TOL, abs_tol=TOL)
    return expected == actual


def flatten(x: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts / lists as ``{"a.b[2].c": leaf}``."""
    if isinstance(x, dict):
        out: dict[str, Any] = {}
        for k, v in x.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(x, list):
        out = {}
        for i, v in enumerate(x):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: x}


def _compare_flat(expected: dict[str, Any], actual: dict[str, Any], where: str) -> list[str]:
    out = [f"{where}: new term '{k}' = {actual[k]!r} not in golden.json" for k in sorted(set(actual) - set(expected))]
    out += [f"{where}: term '{k}' of golden.json no longer produced" for k in sorted(set(expected) - set(actual))]
    out += [f"{where}: {k} = {actual[k]!r}, golden.json has {expected[k]!r}"
            for k in sorted(set(expected) & set(actual)) if not _close(expected[k], actual[k])]
    return out


def _record_label(run: str, section: str, i: int, rec: dict[str, Any]) -> str:
    ids = ", ".join(f"{k} {rec[k]}" for k in ("epoch", "step") if k in rec)
    kind = "step" if section == "steps" else "epoch"
    return f"{run}, {kind} record {i}" + (f" ({ids})" if ids else "")


def compare(expected: dict[str, Any] | None, actual: dict[str, Any] | None, *, run: str) -> list[str]:
    """Every difference between the golden result of ``run`` and a new one, one line each
    naming the run, the record (step / epoch) and the term; empty when equal within :data:`TOL`.

    A result is ``{"steps": [record, ...], "epochs": [record, ...], "final": {...}}`` (sections
    optional); a term that appears or disappears is a difference too.
    """
    if expected is None:
        return [f"{run}: a new run, not in golden.json"]
    if actual is None:
        return [f"{run}: in golden.json but no longer run"]
    out: list[str] = []
    order = {"steps": 0, "epochs": 1}
    for section in sorted(set(expected) | set(actual), key=lambda s: (order.get(s, 2), s)):
        e, a = expected.get(section), actual.get(section)
        if e is None or a is None:
            out.append(f"{run}: section '{section}' " + ("is new" if e is None else "is no longer produced"))
        elif section in ("steps", "epochs"):
            if len(e) != len(a):
                out.append(f"{run}: {len(a)} {section} records, golden.json has {len(e)}")
            for i, (er, ar) in enumerate(zip(e, a)):
                out += _compare_flat(flatten(er), flatten(ar), _record_label(run, section, i, er))
        else:
            out += _compare_flat(flatten(e), flatten(a), f"{run}, {section}")
    return out


def failure_message(name: str, problems: list[str], recorded_env: dict[str, str] | None = None) -> str:
    lines = [f"golden run '{name}' differs from tests/golden/golden.json ({len(problems)} difference(s)):"]
    lines += [f"  {p}" for p in problems[:30]]
    if len(problems) > 30:
        lines.append(f"  ... and {len(problems) - 30} more")
    env = environment()
    if recorded_env and any(recorded_env.get(k) != env.get(k) for k in ("torch", "timm", "numpy")):
        lines.append(f"note: golden.json was recorded with {recorded_env}, this is {env}")
    lines.append(f"If the change of behaviour is intended, re-record with `{RECORD_COMMAND}` in the commit that "
                 "changes it, and give the reason in the commit message.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help=f"write {GOLDEN_PATH.name} (else compare with it)")
    ap.add_argument("--out", type=Path, default=GOLDEN_PATH, help="where --write writes")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="priormim-golden-") as tmp:
        result, seconds = record_all(Path(tmp))
    print(f"{len(result['runs'])} golden runs in {time.perf_counter() - t0:.1f}s: "
          + ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()), file=sys.stderr)
    if args.write:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)", file=sys.stderr)
        return 0
    golden = json.loads(GOLDEN_PATH.read_text())
    problems = [failure_message(n, p, golden.get("environment")) for n in sorted(set(golden["runs"]) | set(result["runs"]))
                if (p := compare(golden["runs"].get(n), result["runs"].get(n), run=n))]
    print("\n".join(problems) or "all golden runs match", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    # Record this checkout's code, not whatever copy of priormim the environment has installed.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    sys.exit(main())
