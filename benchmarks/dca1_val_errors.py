"""Where the DCA1 segmenter's errors are, on the validation images only (issue 15).

    python benchmarks/dca1_val_errors.py --cv-out /tmp/dca1cv --results benchmarks/results/dca1-cv [--method unet] [--seed 0]

For each of the 5 folds of ``dca1_cv.py`` it loads the finished ``<cv-out>/<method>/fold<k>/seed<s>``
model, predicts the fold's 6 validation images as the model's ``config.json`` prescribes (TTA,
threshold / hysteresis, collimator rule) and splits every wrong pixel into

* **rim**: within 2 px of the other mask (a false positive next to an annotated vessel, a miss
  next to a predicted one): the two masks disagree on a vessel's width;
* **detached false positive**: a false structure farther than 2 px from any annotated vessel;
  among them the **catheter signature**: a detached blob that is thick (some pixel at least
  3 px inside the prediction) and reaches the image border (10 px), as a catheter entering
  the field does;
* **detached miss**: an annotated vessel farther than 2 px from the prediction (a lost branch).

For each kind, the mean validation Dice if exactly those pixels were corrected (an oracle: the
most any rule aimed at that kind could gain), in ``val_errors_<method>.md``; ``val_errors_<method>.png`` shows the
validation images with the most catheter-signature pixels, each kind in its own colour. Test
images are never read, so the result may steer the recipe.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

RIM_PX = 2.0  # a wrong pixel this close to the other mask is a width disagreement
THICK_PX = 3.0  # a catheter is thick: some pixel this deep inside the prediction
BORDER_PX = 10  # ... and enters from the image border
KINDS = ("rim false positive", "rim miss", "detached false positive", "catheter signature", "detached miss")


def error_kinds(pred: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean ``[H, W]`` masks of each kind of wrong pixel of ``pred`` against ``gt`` (see module doc)."""
    fp, fn = pred & ~gt, gt & ~pred
    near_gt = ndi.distance_transform_edt(~gt) <= RIM_PX
    near_pred = ndi.distance_transform_edt(~pred) <= RIM_PX
    detached_fp = fp & ~near_gt
    labels, n = ndi.label(detached_fp, structure=np.ones((3, 3)))
    edge = np.zeros_like(pred)
    edge[:BORDER_PX], edge[-BORDER_PX:], edge[:, :BORDER_PX], edge[:, -BORDER_PX:] = True, True, True, True
    thick = ndi.distance_transform_edt(pred) >= THICK_PX
    ids = np.intersect1d(np.unique(labels[detached_fp & thick]), np.unique(labels[detached_fp & edge]))
    catheter = np.isin(labels, ids[ids > 0])
    return {"rim false positive": fp & near_gt, "rim miss": fn & near_pred, "detached false positive": detached_fp,
            "catheter signature": catheter, "detached miss": fn & ~near_pred}


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    s = pred.sum() + gt.sum()
    return 1.0 if s == 0 else float(2 * (pred & gt).sum() / s)


def corrected(pred: np.ndarray, gt: np.ndarray, kind: str, mask: np.ndarray) -> np.ndarray:
    """``pred`` with the pixels of one kind set right (false positives removed, misses filled)."""
    return pred | mask if kind.endswith("miss") else pred & ~mask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cv-out", type=Path, required=True, help="a dca1_cv.py --out folder with finished folds")
    ap.add_argument("--results", type=Path, default=HERE / "results" / "dca1-cv")
    ap.add_argument("--method", default="unet")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from dca1_cv import fold_samples
    from priormim.training.seg.inference import predict_masks
    from priormim.training.seg.model_io import load_segmenter

    rows = []
    for k in range(5):
        run = args.cv_out / args.method / f"fold{k}" / f"seed{args.seed}"
        if not (run / "metrics.json").is_file():
            sys.exit(f"{run}: not finished; run dca1_cv.py --methods {args.method} --seeds {args.seed} first")
        model, mc = load_segmenter(run)
        val = fold_samples(args.cv_out / "folds", k, "val")
        for s, pred in zip(val, predict_masks(model, [v.image for v in val], mc)):
            gt = s.mask.astype(bool)
            kinds = error_kinds(pred, gt)
            rows.append({"fold": k, "name": s.name, "image": s.image, "pred": pred, "gt": gt, "kinds": kinds, "dice": dice(pred, gt),
                         "oracle": {kd: dice(corrected(pred, gt, kd, m), gt) for kd, m in kinds.items()}})
        print(f"[val-errors] fold {k}: {len(val)} validation images", file=sys.stderr, flush=True)
    base = np.mean([r["dice"] for r in rows])
    wrong = np.mean([(r["pred"] ^ r["gt"]).sum() for r in rows])
    lines = [f"Validation images of the 5 folds ({len(rows)}), `{args.method}` seed {args.seed}: mean Dice {base:.4f}, "
             f"{wrong:.0f} wrong pixels per image.", "",
             "| kind of wrong pixel | pixels per image | share of wrong pixels | val Dice if corrected (oracle) | gain |", "|---|---|---|---|---|"]
    for kd in KINDS:
        px = np.mean([r["kinds"][kd].sum() for r in rows])
        orc = np.mean([r["oracle"][kd] for r in rows])
        lines.append(f"| {kd} | {px:.0f} | {px / wrong:.1%} | {orc:.4f} | {orc - base:+.4f} |")
    lines += ["", f"Rim: within {RIM_PX:g} px of the other mask. Catheter signature: detached false-positive blobs with a pixel "
              f"{THICK_PX:g} px deep in the prediction that reach the {BORDER_PX}-px image border (a subset of the detached ones)."]
    text = "\n".join(lines) + "\n"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"val_errors_{args.method}.md").write_text(text)
    # An image is a validation image of several folds (carved per fold): show each once.
    ranked = {r["name"]: r for r in sorted(rows, key=lambda r: r["kinds"]["catheter signature"].sum())}
    figure(sorted(ranked.values(), key=lambda r: -r["kinds"]["catheter signature"].sum())[:6], args.results / f"val_errors_{args.method}.png", args.method)
    print(text)


def figure(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colors = {"hit": (1, 1, 1), "rim false positive": (1, 0.75, 0.3), "rim miss": (0.55, 0.75, 1),
              "detached false positive": (0.95, 0.15, 0.15), "catheter signature": (1, 0.2, 1), "detached miss": (0.15, 0.3, 1)}
    fig, ax = plt.subplots(2, len(rows), figsize=(2.2 * len(rows), 4.9), squeeze=False, layout="constrained")
    for i, r in enumerate(rows):
        ax[0, i].imshow(r["image"], cmap="gray")
        ax[0, i].set_title(f"fold {r['fold']} val {r['name']}", fontsize=7)
        rgb = np.zeros((*r["gt"].shape, 3))
        rgb[r["pred"] & r["gt"]] = colors["hit"]
        for kd in ("rim false positive", "rim miss", "detached false positive", "catheter signature", "detached miss"):
            rgb[r["kinds"][kd]] = colors[kd]
        ax[1, i].imshow(rgb)
        ax[1, i].set_xlabel(f"Dice {r['dice']:.2f}", fontsize=7)
    for a in ax.ravel():
        a.set_xticks([])
        a.set_yticks([])
    fig.legend(handles=[Patch(facecolor=c, edgecolor="grey", label=k) for k, c in colors.items()], loc="outside lower center",
               ncol=6, fontsize=7, frameon=False)
    fig.suptitle(f"DCA1 validation images with the most catheter-signature pixels: what {title} gets wrong", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
