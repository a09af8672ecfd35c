"""Real-angiogram acceptance run (issue 3): DCA1 vessel segmentation, every model, 3 seeds.

One fixed split of the 40 DCA1 angiograms (``fixed_split``, split seed 0: 24 train / 6 val /
10 test; the best epoch is picked on val, the test images are scored once at the end).
Models, all scored by the same metric code at the images' original 300x300 size:

* Sato vesselness thresholded at percentile 92 (no training),
* U-Net from scratch,
* ViT from scratch, ViT initialised from MAE, ViT initialised from VasoMIM (same encoder
  size, same fine-tuning recipe).

Every learned model works on the image resized to 288 px and trains on random 128-px windows
of it; the ViT (built for 128-px input) predicts window by window (half-window overlap,
averaged logits), the U-Net the whole image at once. Windows keep thin vessels at nearly
their original scale at a fifth of the cost of whole images, which is what makes the budget
fit a CPU.

MAE and VasoMIM pretrain once (seed 0) on the same pool with the same budget: the DCA1 train
+ val images (never the test images) plus synthetic angiograms from ``priormim synth xca``,
as random 128-px crops covering 10-50 % of an image (about the scale of a 128-px window of
the 288-px image). Fine-tuning seeds 0, 1, 2 start from that one encoder. Each stage can run
in its own process (``--stages``); finished runs and seeds are skipped on a re-run.

    python benchmarks/dca1_segmentation.py --out /tmp/dca1 --data ../shared/data/xca_dca1
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from priormim.config import load_config
from priormim.data.readers import read_segmentation_folder
from priormim.data.synth_xca import write_synthetic_xca
from priormim.training.finetune_seg import SegFinetuneConfig, finetune_segmentation, fixed_split, run_vesselness_baseline
from priormim.training.pretrain import pretrain
from priormim.training.results import aggregate_runs, write_results_table

# A 6-block ViT-tiny: the CPU budget of this machine; patch 16 as in the papers.
ENCODER = {"patch_size": 16, "depth": 6, "embed_dim": 192, "num_heads": 3}
IMG_SIZE, WINDOW = 288, 128  # fine-tuning resolution and training / inference window
STAGES = ("baseline", "unet", "vit_scratch", "pretrain", "vit_mae", "vit_vasomim", "table", "figure")
# Fine-tuning folder -> the bench's method key (for its labels and colours).
FIGURE_METHODS = {"unet": "unet", "vit_scratch": "vit_scratch", "vit_mae": "mae", "vit_vasomim": "vasomim"}


def split_names(data: Path) -> dict[str, list[str]]:
    names = [p.name for p in read_segmentation_folder(data, check_binary=False)]
    return fixed_split(names, seed=0)


def pretraining_pool(args: argparse.Namespace) -> Path:
    """``<out>/pool/images``: symlinks to DCA1 train + val images and synthetic angiograms."""
    pool = args.out / "pool" / "images"
    if pool.is_dir() and len(list(pool.iterdir())) >= args.n_synthetic:
        return pool
    synth = args.out / "synthetic"
    if not (synth / "images").is_dir():
        write_synthetic_xca(synth, n=args.n_synthetic, size=300, seed=123)
    pool.mkdir(parents=True, exist_ok=True)
    split = split_names(args.data)
    real = [args.data / "images" / n for n in split["train"] + split["val"]]
    for src in real + sorted((synth / "images").iterdir()):
        link = pool / src.name
        if not link.exists():
            link.symlink_to(src.resolve())
    return pool


def pretrain_method(recipe: str, args: argparse.Namespace) -> Path:
    run = args.out / "pretrain" / recipe
    if (run / "encoder.safetensors").exists():
        return run / "encoder.safetensors"
    pool = pretraining_pool(args)
    cfg = load_config(recipe, {
        "model": {"img_size": WINDOW, "encoder_kwargs": ENCODER, "decoder_embed_dim": 128, "decoder_depth": 2, "decoder_num_heads": 4},
        "data": {"images": str(pool), "num_workers": 1, "crop_scale": [0.1, 0.5]},
        "optim": {"epochs": args.pretrain_epochs, "warmup_epochs": max(1, args.pretrain_epochs // 20), "batch_size": 32,
                  "lr": args.pretrain_lr},
        "consistency": {"segmentor_epochs": 40},
        "train": {"seed": 0, "save_every": 10_000, "progress": False},
    })
    t = time.perf_counter()
    res = pretrain(cfg, run, resume=(run / "last.ckpt").exists())
    print(f"[dca1] pretrained {recipe} in {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
    return res.encoder_path


def finetune(name: str, args: argparse.Namespace, **kw) -> Path:
    out = args.out / "finetune" / name
    finetune_segmentation(SegFinetuneConfig(out=out, data=args.data, seeds=tuple(args.seeds), **kw), rescore=args.rescore)
    return out


def prediction_figure(args: argparse.Namespace, n: int = 3) -> Path:
    """``<out>/dca1_predictions.png``: the first ``n`` test angiograms, ground truth, and each
    model's prediction (seed 0) coloured by outcome, with its DSC."""
    from priormim.benchmark.figures import predictions_figure
    from priormim.evaluation.metrics import dice_score
    from priormim.training.finetune_seg import baseline_mask, load_samples, load_segmenter, predict_masks

    test = set(split_names(args.data)["test"])
    samples = load_samples([p for p in read_segmentation_folder(args.data, check_binary=False) if p.name in test])[:n]
    rows = [{"image": s.image, "mask": s.mask, "preds": {}, "dice": {}} for s in samples]
    preds = {"vesselness": [baseline_mask(s.image, keep="all") for s in samples]}
    for folder, key in FIGURE_METHODS.items():
        run = args.out / "finetune" / folder / "seed0"
        if (run / "model.safetensors").is_file():
            model, mc = load_segmenter(run)
            preds[key] = predict_masks(model, [s.image for s in samples], mc)
    for key, masks in preds.items():
        for row, pred, s in zip(rows, masks, samples):
            row["preds"][key], row["dice"][key] = pred, float(dice_score(pred, s.mask)[0])
    args.out.mkdir(parents=True, exist_ok=True)
    return predictions_figure(rows, list(preds), args.out / "dca1_predictions.png",
                              title="DCA1 test angiograms (seed 0): white hit, red false positive, blue missed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/xca_dca1"))
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-synthetic", type=int, default=100)
    ap.add_argument("--pretrain-epochs", type=int, default=400)
    ap.add_argument("--pretrain-lr", type=float, default=5e-4)
    ap.add_argument("--vit-epochs", type=int, default=120)
    ap.add_argument("--unet-epochs", type=int, default=200)
    ap.add_argument("--rescore", action="store_true",
                    help="finished fine-tuning seeds are re-scored with their saved weights (post-processing re-picked on val)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # Windowed validation of 6 images costs about an epoch of training: validate every 4th epoch.
    vit = dict(model="vit", img_size=IMG_SIZE, train_crop=WINDOW, epochs=args.vit_epochs, batch_size=4, val_every=4,
               model_kwargs=dict(ENCODER))
    for stage in args.stages:
        t = time.perf_counter()
        if stage == "baseline":
            test = split_names(args.data)["test"]
            run_vesselness_baseline(args.data, args.out / "finetune" / "vesselness", "sato", keep="all", names=test)
        elif stage == "unet":
            finetune("unet", args, model="unet", img_size=IMG_SIZE, train_crop=WINDOW, epochs=args.unet_epochs, batch_size=4,
                     unet_base_channels=16)
        elif stage == "vit_scratch":
            finetune("vit_scratch", args, **vit)
        elif stage == "pretrain":
            for recipe in ("mae", "vasomim"):
                pretrain_method(recipe, args)
        elif stage in ("vit_mae", "vit_vasomim"):
            recipe = stage.split("_")[1]
            finetune(stage, args, encoder=pretrain_method(recipe, args), label=f"ViT ({'MAE' if recipe == 'mae' else 'VasoMIM'})", **vit)
        elif stage == "table":
            runs = [args.out / "finetune" / "vesselness"] + [
                d for name in ("unet", "vit_scratch", "vit_mae", "vit_vasomim")
                for d in sorted((args.out / "finetune" / name).glob("seed*")) if (d / "metrics.json").exists()]
            md, _ = write_results_table(aggregate_runs(runs), args.out, title="DCA1 vessel segmentation (10 test angiograms)")
            print(Path(md).read_text() if Path(md).exists() else md)
        elif stage == "figure":
            print(f"[dca1] wrote {prediction_figure(args)}", file=sys.stderr, flush=True)
        print(f"[dca1] stage {stage} done in {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
    (args.out / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))


if __name__ == "__main__":
    main()
