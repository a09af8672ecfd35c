"""Linear-probe AUC of VP-MIM vs MAE at equal budget, over seeds (issue 4's measurement).

Two parts, each: pretrain MAE and VP-MIM once per seed with the same model, data, epochs and
batch, then a linear probe (frozen features, BatchNorm without affine + linear layer) per
encoder, plus a random-init encoder as the floor. Mean +/- std over seeds of the test AUC.

* ``synthetic``: `priormim synth cxr` images with simulated REFLACX-format gaze; VP-MIM uses the
  gaze (masking + recalibrated weighting + pyramid heads). Lesion vs none.
* ``kermany``: pretraining on real unlabelled chest X-rays (``cxr_mhh`` + the Kermany images
  that are not in the probe's test split), which have no gaze: VP-MIM runs with random masking
  and the gaze weighting off, so it differs from MAE only by the pyramid reconstruction. The
  probe: NORMAL vs PNEUMONIA on ``cxr_kermany`` (fixed 20 % stratified test split, 10 % val).

    python benchmarks/cxr_linear_probe.py --out /tmp/cxr_probe --data-root ../shared/data

Nothing from ``--data-root`` is copied: the pretraining pool is a folder of symlinks under
``--out``. Re-running skips finished pretraining runs and probe seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from priormim.config import load_config
from priormim.data.synth_cxr import write_synthetic_cxr
from priormim.io import list_images
from priormim.training.finetune_cls import ClsFinetuneConfig, finetune_classification, patient_groups, read_split, split_indices
from priormim.training.pretrain import pretrain
from priormim.training.results import aggregate_runs

ENCODER = {"patch_size": 8, "depth": 4, "embed_dim": 96, "num_heads": 3}


def pretrain_once(recipe: str, images: Path, run_dir: Path, *, img_size: int, epochs: int, seed: int, gaze: bool) -> Path:
    enc = run_dir / "encoder.safetensors"
    if enc.exists():
        return enc
    model = {"img_size": img_size, "encoder_kwargs": ENCODER, "decoder_embed_dim": 64, "decoder_depth": 3, "decoder_num_heads": 4}
    data = {"images": str(images), "num_workers": 0, "hflip": False, "crop_scale": [0.35, 1.0]}
    over: dict = {"model": model, "data": data,
                  "optim": {"epochs": epochs, "warmup_epochs": max(1, epochs // 10), "batch_size": 32, "blr": 1.5e-3},
                  "train": {"seed": seed, "save_every": 10_000, "progress": False}}
    if recipe == "vpmim":
        model.update(pyramid_scales=[1, 2, 4], pyramid_weights=[1.0, 0.5, 0.25])
        if not gaze:  # real images without eye tracking: the configurable no-gaze variant
            data["prior"] = "none"
            over["masking"] = {"name": "random", "kwargs": {}}
            over["gaze_weighting"] = {"enabled": False}
    else:
        data["prior"] = "none"
    t = time.perf_counter()
    pretrain(load_config(recipe, over), run_dir, resume=(run_dir / "last.ckpt").exists())
    print(f"  pretrained {recipe} seed {seed} in {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
    return enc


def probe(name: str, encoder: Path | None, train: Path, test: Path, out: Path, *, img_size: int, seed: int, epochs: int) -> Path:
    res = finetune_classification(ClsFinetuneConfig(
        train=train, test=test, out=out, encoder=encoder, mode="linear", seeds=[seed], img_size=img_size,
        epochs=epochs, model_kwargs=None if encoder is not None else dict(ENCODER), num_workers=0,
        label=f"linear probe ({name})",
    ))
    return res.out_dir / f"seed{seed}"


def kermany_pool(data_root: Path, out: Path) -> Path:
    """Symlinks to cxr_mhh + the Kermany images outside the probe's test split."""
    pool = out / "pool" / "images"
    if pool.is_dir() and any(pool.iterdir()):
        return pool
    pool.mkdir(parents=True, exist_ok=True)
    kermany = read_split(data_root / "cxr_kermany", fmt="folders")
    # Same hold-out as finetune_classification with test == train (fraction 0.2, split_seed 0).
    keep, _ = split_indices(kermany.labels, fraction=0.2, seed=0, groups=patient_groups(kermany.paths))
    sources = [kermany.paths[i] for i in keep] + list_images(data_root / "cxr_mhh" / "png")
    for i, src in enumerate(sources):
        (pool / f"{i:05d}_{src.name}").symlink_to(src.resolve())
    return pool


def run_part(part: str, args: argparse.Namespace) -> str:
    out = args.out / part
    if part == "synthetic":
        train, test = out / "data" / "train", out / "data" / "test"
        for folder, n, s in ((train, args.n_synth_train, 0), (test, args.n_synth_test, 1000)):
            if not (folder / "labels.csv").exists():
                write_synthetic_cxr(folder, n=n, size=96, seed=s)
        pool, img_size, gaze = train / "images", 64, True
    else:
        train = test = args.data_root / "cxr_kermany"
        pool, img_size, gaze = kermany_pool(args.data_root, out), 96, False
    run_dirs: list[Path] = []
    for seed in args.seeds:
        encoders: dict[str, Path | None] = {"random init": None}
        for name, recipe in (("MAE", "mae"), ("VP-MIM", "vpmim")):
            encoders[name] = pretrain_once(recipe, pool, out / "pretrain" / f"{recipe}_seed{seed}",
                                           img_size=img_size, epochs=args.epochs, seed=seed, gaze=gaze)
        for name, enc in encoders.items():
            slug = name.lower().replace(" ", "_").replace("-", "")
            run_dirs.append(probe(name, enc, train, test, out / "probe" / f"{slug}_seed{seed}",
                                  img_size=img_size, seed=seed, epochs=args.probe_epochs))
    rows = aggregate_runs(run_dirs, metrics=("auc",))
    lines = [f"### {part}", "", "| encoder | test AUC (mean ± std) | seeds | per seed |", "|---|---|---|---|"]
    for r in rows:
        per_seed = ", ".join(f"{m['test_auc']:.3f}" for m in map(_metrics, run_dirs) if m["method"] == r.method)
        lines.append(f"| {r.method} | {r.mean['auc']:.3f} ± {r.std['auc']:.3f} | {r.n_runs} | {per_seed} |")
    return "\n".join(lines)


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    ap.add_argument("--parts", nargs="+", default=["synthetic", "kermany"], choices=["synthetic", "kermany"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=40, help="pretraining epochs (both methods)")
    ap.add_argument("--probe-epochs", type=int, default=60)
    ap.add_argument("--n-synth-train", type=int, default=320)
    ap.add_argument("--n-synth-test", type=int, default=160)
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    t = time.perf_counter()
    tables = [run_part(p, args) for p in args.parts]
    text = "\n\n".join(tables) + f"\n\nTotal wall time {time.perf_counter() - t:.0f} s.\n"
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
