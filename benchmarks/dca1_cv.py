"""DCA1 vessel segmentation under 5-fold cross-validation (issue 15): every image tested once.

The 40 shared DCA1 angiograms are split into the 5 fixed folds of ``dca1_cv_folds.json``.
For fold k, the model trains on the other 32 images, of which 6 are carved for validation
(``carve_validation``, seed 0: best epoch and post-processing are picked there, never on the
test fold); the 8 images of fold k are scored once. Sato vesselness (no training, fixed
preset) is scored on all 40. Per method and seed the 40 per-image scores are written to
``<out>/per_image.csv``; ``<out>/cv_results.md`` gives

* mean +- std over the 40 images (seed-averaged per image), and mean +- std over seeds;
* each learned model minus Sato (and the other pairs): mean paired per-image difference with
  a 95 % bootstrap confidence interval (10,000 resamples of the 40 images);
* DSC, clDice, precision, recall; wall time per fold.

Methods (``--methods``): ``sato``, ``unet`` (``--recipe strong`` U-Net), ``unet_default``
(the historical U-Net recipe: 288 px resize, 128-px windows, 200 epochs), ``vit_scratch``,
``vit_mae`` / ``vit_vasomim`` (``--encoder-mae`` / ``--encoder-vasomim``: exported encoders
pretrained on images outside the test folds; without one the script pretrains its own, see
below).

Pretraining (``vit_mae`` / ``vit_vasomim`` without an encoder): once per method, on a pool of
``--pretrain-pool`` synthetic angiograms with the rich anatomy (ribs, diaphragm, motion blur,
catheters; ``synthesize_angiogram(rich=True)``, 300 px, fixed seeds), so no DCA1 image, test
or otherwise, is seen before fine-tuning. The ViT is the fine-tuning one (``VIT_KWARGS``) at
128 px with crops of 15-60 % of the image (the fine-tuning windows are 18 % of a 300-px image
at native resolution), the methods' own recipes otherwise (VasoMIM: official defaults, its
UNeXt-S consistency segmentor trained by pretraining on the pool's vessel priors for
``--segmentor-epochs``); ``--pretrain-epochs`` epochs, batch 64, blr 1.5e-3. Resumable like the rest.
``--labels N`` trains on a fixed subset of N of each fold's training images (label-efficiency
curve; the subset is the first N of the fold's training names shuffled with seed 0, so the
subsets are nested) with the same number of optimisation steps as the full 26 (more random
windows per image per epoch); validation and test images are the fold's usual ones.

Everything is resumable: finished seeds (``metrics.json``) are skipped, an interrupted seed
continues from its ``last.ckpt``. Run it again with the same arguments to continue.

    python benchmarks/dca1_cv.py --out /tmp/dca1cv --methods sato unet --seeds 0
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from priormim.training.finetune_seg import (carve_validation, finetune_segmentation, recipe_config, recipe_overrides,
                                           run_vesselness_baseline)

HERE = Path(__file__).resolve().parent
FOLDS = HERE / "dca1_cv_folds.json"
METRICS = ("dice", "cldice", "precision", "recall")
LABELS = {"unet_ensemble": "U-Net (strong, seed ensemble: mean probability)", "sato": "Sato vesselness (p92, no training)", "unet": "U-Net (strong recipe)", "unet_default": "U-Net (default recipe)",
          "unet_e30": "U-Net (strong recipe at 30 epochs, before 2026-12-02)",
          "unet_d8": "U-Net (strong recipe, 8-view dihedral TTA)",
          "unet_vit_ensemble": "U-Net (dihedral TTA) + ViT (VasoMIM): mean probability",
          "vit_scratch": "ViT (scratch, strong)", "vit_mae": "ViT (MAE, strong)", "vit_vasomim": "ViT (VasoMIM, strong)"}
# What --methods can train; the other LABELS name table rows (ensembles, older or rescored runs).
TRAINABLE = ("sato", "unet", "unet_default", "vit_scratch", "vit_mae", "vit_vasomim")
# The ViT of the issue-3 benchmark: 6 blocks of ViT-tiny width, patch 16, built for 128-px windows.
VIT_KWARGS = {"patch_size": 16, "depth": 6, "embed_dim": 192, "num_heads": 3}
FULL_TRAIN = 26  # training images per fold (32 - 6 carved for validation)


def load_folds() -> list[list[str]]:
    return json.loads(FOLDS.read_text())["folds"]


def fold_names(k: int, labels: int | None = None) -> dict[str, list[str]]:
    """Train / val / test names of fold ``k``: test = the fold, val = 6 of the other 32 carved
    with seed 0, train = the remaining 26 (or, with ``labels``, the first ``labels`` of them in
    a seed-0 permutation: nested subsets, so 2 is inside 4 is inside 8 ...)."""
    folds = load_folds()
    rest = sorted(n for j, f in enumerate(folds) if j != k for n in f)
    train, val = carve_validation(rest, fraction=0.2, seed=0)
    if labels:
        order = np.random.default_rng(0).permutation(len(train))
        train = sorted(train[i] for i in order[:labels])
    return {"train": train, "val": val, "test": sorted(folds[k])}


def fold_folder(args: argparse.Namespace, k: int) -> tuple[Path, Path, Path]:
    """``<out>/folds/fold<k>[_n<N>]/{train,val,test}/{images,masks}``: symlinks into the data folder."""
    names = fold_names(k, args.labels)
    root = args.out / "folds" / (f"fold{k}" if not args.labels else f"fold{k}_n{args.labels}")
    for part in ("train", "val", "test"):
        for sub in ("images", "masks"):
            d = root / part / sub
            d.mkdir(parents=True, exist_ok=True)
            for n in names[part]:
                link = d / n
                if not link.exists():
                    link.symlink_to((args.data / sub / n).resolve())
    return root / "train", root / "val", root / "test"


def fold_samples(folds_dir: Path, k: int, part: str) -> list:
    """The decoded ``SegSample`` list of ``<folds_dir>/fold<k>/<part>`` (``part``: train, val or test)."""
    from priormim.data.readers import read_segmentation_folder
    from priormim.training.seg.data import load_samples

    return load_samples(read_segmentation_folder(folds_dir / f"fold{k}" / part, check_sizes=False, check_binary=False))


def pretrain_encoder(method: str, args: argparse.Namespace, seed: int = 0, extra: tuple[str, ...] = ()) -> Path:
    """``<out>/pretrain/<method>_e<epochs>[_s<seed>]/encoder.safetensors``, pretrained on the
    synthetic pool (resumable). The pool is the same for every seed; ``seed`` sets the
    initialisation, masks and crops (and VasoMIM's consistency segmentor). ``method``: a config
    name (``mae``, ``vasomim``, ``vasomim_guidance_only`` ...); ``extra``: more overrides."""
    from priormim.config import load_config
    from priormim.data.synth_xca import write_synthetic_xca
    from priormim.training.pretrain import pretrain

    work = args.out / "pretrain"
    pool = work / f"pool{args.pretrain_pool}"
    if not (pool / "done").is_file():
        write_synthetic_xca(pool, n=args.pretrain_pool, size=300, seed=15, rich=True)
        (pool / "done").write_text("ok\n")
    images = pool / "images"  # write_synthetic_xca writes images/ and masks/
    run = work / (f"{method}_e{args.pretrain_epochs}" + (f"_s{seed}" if seed else ""))
    encoder = run / "encoder.safetensors"
    if encoder.is_file():
        return encoder
    o = ["model.img_size=128", "model.encoder=vit_tiny_patch16_224", f"model.encoder_kwargs={{depth: {VIT_KWARGS['depth']}}}",
         f"optim.epochs={args.pretrain_epochs}", f"optim.warmup_epochs={max(1, args.pretrain_epochs // 20)}", "optim.batch_size=64",
         "optim.blr=1.5e-3", "data.crop_scale=[0.15, 0.6]", "data.num_workers=0", "train.progress=false", f"train.seed={seed}",
         f"data.images={images}", f"data.priors={work / 'priors'}", "train.save_every=100000"]
    if method.startswith("vasomim"):
        o.append(f"consistency.segmentor_epochs={args.segmentor_epochs}")
    o += list(extra)
    t = time.perf_counter()
    print(f"[cv] pretraining {method} (seed {seed}) on {args.pretrain_pool} synthetic angiograms, {args.pretrain_epochs} epochs", file=sys.stderr, flush=True)
    pretrain(load_config(method, o), run, resume=(run / "last.ckpt").is_file())
    record_time(args, "pretrain", run.name, time.perf_counter() - t)
    return encoder


def record_time(args: argparse.Namespace, group: str, key: str, seconds: float) -> None:
    """Add one wall time to ``<out>/timing.json`` (read, update, write: stages record in turn)."""
    path = args.out / "timing.json"
    timing = json.loads(path.read_text()) if path.exists() else {}
    timing.setdefault(group, {})[key] = round(seconds, 1)
    path.write_text(json.dumps(timing, indent=1))


def method_config(method: str, args: argparse.Namespace, train: Path, val: Path, test: Path, out: Path):
    common = dict(out=out, train=train, val=val, test=test, seeds=tuple(args.seeds), ensemble=getattr(args, "ensemble", False))
    if getattr(args, "tta_dihedral", False):
        common["tta_dihedral"] = True
    if args.labels:
        # Same optimisation budget at every label count: more random windows per image per
        # epoch, so an epoch is as many steps as with all 26 training images.
        model = "unet" if method.startswith("unet") else "vit"
        per_image = recipe_overrides("strong", model).get("crops_per_image", 4)
        common["crops_per_image"] = per_image * math.ceil(FULL_TRAIN / args.labels)
    if method == "unet":
        return recipe_config("strong", model="unet", label=LABELS[method], epochs=args.unet_epochs, **common)
    if method == "unet_default":
        return recipe_config("default", model="unet", label=LABELS[method], img_size=288, train_crop=128, epochs=200,
                             unet_base_channels=16, **common)
    encoder = {"vit_scratch": None, "vit_mae": args.encoder_mae, "vit_vasomim": args.encoder_vasomim}[method]
    if method != "vit_scratch" and encoder is None:
        encoder = pretrain_encoder(method.split("_")[1], args, seed=getattr(args, "pretrain_seed", 0))
    return recipe_config("strong", model="vit", label=LABELS[method], encoder=encoder, epochs=args.vit_epochs,
                         model_kwargs=dict(VIT_KWARGS) if encoder is None else {}, **common)


def run_method(method: str, args: argparse.Namespace) -> None:
    if method == "sato":
        if not (args.out / "sato" / "metrics.json").exists():
            t = time.perf_counter()
            run_vesselness_baseline(args.data, args.out / "sato", "sato", keep="all")
            record_time(args, "sato", "all", time.perf_counter() - t)
        return
    if method in ("vit_mae", "vit_vasomim") and getattr(args, f"encoder_{method[4:]}") is None:
        pretrain_encoder(method[4:], args, seed=getattr(args, "pretrain_seed", 0))  # before the clock: fold times are fine-tuning alone
    for k in args.folds:
        train, val, test = fold_folder(args, k)
        out = args.out / method_dir(method, args) / f"fold{k}"
        t = time.perf_counter()
        res = finetune_segmentation(method_config(method, args, train, val, test, out), resume=True, rescore=args.rescore)
        if len(res.skipped_seeds) < len(args.seeds) and not args.rescore:  # something trained in this call
            record_time(args, method_dir(method, args), f"fold{k}", time.perf_counter() - t)
        print(f"[cv] {method} fold {k}: {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)


def method_dir(method: str, args: argparse.Namespace) -> str:
    return method if not args.labels else f"{method}_n{args.labels}"


def collect(args: argparse.Namespace) -> dict[str, dict[int, dict[str, dict[str, float]]]]:
    """``{method: {seed: {image: {metric: value}}}}`` for every finished (method, seed) over all 5 folds."""
    out: dict[str, dict[int, dict[str, dict[str, float]]]] = {}
    sato = args.out / "sato" / "metrics.json"
    if sato.exists():
        rows = json.loads(sato.read_text())["test"]["per_image"]
        out["sato"] = {0: {r["name"]: {m: float(r[m]) for m in METRICS} for r in rows}}
    for d in sorted(p for p in args.out.iterdir() if p.is_dir() and p.name not in ("sato", "folds")):
        by_seed: dict[int, dict[str, dict[str, float]]] = {}
        for mfile in sorted(d.glob("fold*/seed*/metrics.json")):
            seed = int(mfile.parent.name[4:])
            for r in json.loads(mfile.read_text())["test"]["per_image"]:
                by_seed.setdefault(seed, {})[r["name"]] = {m: float(r[m]) for m in METRICS}
        if by_seed:
            # A seed still running (fewer folds than the others) is left out rather than shrinking
            # every seed to its images; while all are partial, the images all of them scored.
            most = max(len(v) for v in by_seed.values())
            partial = sorted(s for s, v in by_seed.items() if len(v) < most)
            if partial:
                print(f"[cv] {d.name}: seed(s) {partial} not finished on every fold; left out of the table", file=sys.stderr)
            by_seed = {s: v for s, v in by_seed.items() if s not in partial}
            common = set.intersection(*(set(v) for v in by_seed.values()))
            out[d.name] = {s: {n: v[n] for n in common} for s, v in by_seed.items()}
        # `finetune seg --ensemble` (the --ensemble flag here) writes fold<k>/ensemble/metrics.json.
        ens = {r["name"]: {m: float(r[m]) for m in METRICS} for f in sorted(d.glob("fold*/ensemble/metrics.json"))
               for r in json.loads(f.read_text())["test"]["per_image"]}
        if ens:
            out[f"{d.name}_ensemble"] = {0: ens}
    return out


def bootstrap_ci(diff: np.ndarray, *, n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of ``diff`` (resampling images)."""
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n, len(diff)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def table(args: argparse.Namespace) -> str:
    res = collect(args)
    timing = json.loads((args.out / "timing.json").read_text()) if (args.out / "timing.json").exists() else {}
    lines = ["| Method | images | seeds | DSC | clDice | Precision | Recall | DSC, std over seeds | time per fold and seed |",
             "|---|---|---|---|---|---|---|---|---|"]
    per_image_mean: dict[str, dict[str, dict[str, float]]] = {}  # method -> metric -> image -> seed-mean
    with open(args.out / "per_image.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "seed", "image", "fold", *METRICS])
        fold_of = {Path(n).stem: k for k, fold in enumerate(load_folds()) for n in fold}
        for method, by_seed in res.items():
            images = sorted(next(iter(by_seed.values())))
            for seed, rows in sorted(by_seed.items()):
                for n in images:
                    w.writerow([method, seed, n, fold_of.get(Path(n).stem), *(f"{rows[n][m]:.4f}" for m in METRICS)])
            pm = {m: np.mean([[by_seed[s][n][m] for n in images] for s in by_seed], axis=0) for m in METRICS}
            per_image_mean[method] = {m: dict(zip(images, pm[m])) for m in METRICS}
            seed_means = [np.mean([by_seed[s][n]["dice"] for n in images]) for s in by_seed]
            # Training time per fold and seed (metrics.json, summed over resumed sessions), and the
            # whole call's wall time per fold (timing.json: + data, validation, TTA scoring) when uninterrupted.
            train_t = [json.loads(m.read_text()).get("train_time_s") for m in (args.out / method).glob("fold*/seed*/metrics.json")
                       if int(m.parent.name[4:]) in by_seed]  # the seeds in the row, not one still running
            train_t = [t for t in train_t if t]
            fold_t = [v for k, v in timing.get(method, {}).items() if k.startswith("fold")]
            wall = (f"train {np.mean(train_t) / 60:.0f} min" if train_t else "")
            wall += (f"; call {np.mean(fold_t) / 60:.0f} min" if fold_t else "")
            if method == "sato" and "sato" in timing:
                wall = f"{timing['sato']['all']:.0f} s for all 40"
            wall = wall or "-"
            cells = " | ".join(f"{pm[m].mean():.3f} ± {pm[m].std(ddof=1):.3f}" if m in ("dice", "cldice") else f"{pm[m].mean():.3f}"
                               for m in METRICS)
            spread = f"± {np.std(seed_means, ddof=1):.3f}" if len(seed_means) > 1 else "(1 seed)"
            lines.append(f"| {LABELS.get(method, method)} | {len(images)} | {len(by_seed)} | {cells} | {spread} | {wall} |")
    lines += ["", "Paired differences (mean over the images both have scored of A − B, seed-averaged per image; "
              "95 % bootstrap CI over images):", "", "| A − B | images | ΔDSC [95 % CI] | ΔclDice [95 % CI] |", "|---|---|---|---|"]
    methods = list(per_image_mean)
    for i, a in enumerate(methods):
        for b in methods[:i]:
            shared = sorted(set(per_image_mean[a]["dice"]) & set(per_image_mean[b]["dice"]))
            cells = []
            for m in ("dice", "cldice"):
                d = np.array([per_image_mean[a][m][n] - per_image_mean[b][m][n] for n in shared])
                lo, hi = bootstrap_ci(d)
                cells.append(f"{d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]")
            lines.append(f"| {LABELS.get(a, a)} − {LABELS.get(b, b)} | {len(shared)} | {cells[0]} | {cells[1]} |")
    text = "\n".join(lines) + "\n"
    (args.out / "cv_results.md").write_text(text)
    return text


def prediction_figure(args: argparse.Namespace, *, per_fold: int = 1) -> Path | None:
    """``<out>/cv_predictions.png``: the first ``per_fold`` test angiogram(s) of every fold, ground
    truth, Sato and each finished method's seed-0 model of that fold, coloured by outcome, DSC
    under each panel (DCA1 is BSD-3-Clause, so the images may be shown)."""
    from priormim.benchmark.figures import predictions_figure
    from priormim.data.readers import read_segmentation_folder
    from priormim.evaluation.metrics import dice_score
    from priormim.training.finetune_seg import baseline_mask, load_samples, load_segmenter, predict_masks

    methods = [m for m in LABELS if m != "sato" and (args.out / m / "fold0" / "seed0" / "model.safetensors").is_file()]
    if "unet_d8" in methods and "unet" in methods:
        methods.remove("unet")  # the same weights scored with four views instead of eight: near-identical panels
    rows = []
    for k in args.folds:
        _, _, test = fold_folder(args, k)
        for smp in load_samples(read_segmentation_folder(test, check_binary=False))[:per_fold]:
            row = {"image": smp.image, "mask": smp.mask, "preds": {"vesselness": baseline_mask(smp.image, keep="all")}, "dice": {}}
            for m in methods:
                run = args.out / m / f"fold{k}" / "seed0"
                if (run / "model.safetensors").is_file():
                    model, mc = load_segmenter(run)
                    row["preds"][m] = predict_masks(model, [smp.image], mc)[0]
            row["dice"] = {m: float(dice_score(p, smp.mask)[0]) for m, p in row["preds"].items()}
            rows.append(row)
    if not rows:
        return None
    short = {"vesselness": "Sato (no training)", "unet": "U-Net (strong)", "unet_d8": "U-Net (strong, 8-view TTA)",
             "unet_e30": "U-Net (30 epochs)",
             "unet_default": "U-Net (default)", "vit_scratch": "ViT (scratch)", "vit_mae": "ViT (MAE)", "vit_vasomim": "ViT (VasoMIM)"}
    return predictions_figure(rows, ["vesselness", *methods], args.out / "cv_predictions.png", labels=short,
                              title="DCA1, one test angiogram per fold (seed 0): white hit, red false positive, blue missed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/xca_dca1"))
    ap.add_argument("--methods", nargs="+", default=["sato", "unet"], choices=TRAINABLE)
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--labels", type=int, default=None, help="train on this many labelled images per fold (label-efficiency curve)")
    ap.add_argument("--unet-epochs", type=int, default=None, help="override the strong recipe's epochs")
    ap.add_argument("--vit-epochs", type=int, default=None)
    ap.add_argument("--encoder-mae", type=Path)
    ap.add_argument("--encoder-vasomim", type=Path)
    ap.add_argument("--pretrain-pool", type=int, default=256, help="synthetic angiograms to pretrain vit_mae / vit_vasomim on")
    ap.add_argument("--pretrain-epochs", type=int, default=100)
    ap.add_argument("--pretrain-seed", type=int, default=0,
                    help="seed of the pretraining run vit_mae / vit_vasomim start from (the label curve pairs it with the fine-tuning seed)")
    ap.add_argument("--segmentor-epochs", type=int, default=10, help="VasoMIM's consistency segmentor (official: 200)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ensemble", action="store_true", help="also score each fold's seed ensemble (finetune seg --ensemble)")
    ap.add_argument("--tta-dihedral", action="store_true",
                    help="average the logits over the eight dihedral views instead of the four flips (with --rescore: on finished seeds)")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--rescore", action="store_true", help="re-pick post-processing on val and re-score finished seeds (saved weights)")
    ap.add_argument("--figure", action="store_true", help="also draw <out>/cv_predictions.png (one test image per fold)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for method in args.methods:
            run_method(method, args)
    if args.figure:
        print(f"[cv] wrote {prediction_figure(args)}", file=sys.stderr)
    print(table(args))


if __name__ == "__main__":
    main()
