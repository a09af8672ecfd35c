"""Two different segmenters averaged, under the DCA1 5-fold protocol (issue 15).

    python benchmarks/dca1_model_ensemble.py --models /tmp/dca1cv/unet /tmp/dca1cv/vit_vasomim \
        --folds-dir /tmp/dca1cv/folds --out /tmp/dca1cv/ens_unet_vasomim [--seed 0]

For each fold k, the finished ``<model>/fold<k>/seed<s>`` runs are averaged in probability and
the post-processing is re-picked on the fold's validation images, then the 8 test images are
scored once (:func:`priormim.training.finetune_seg.evaluate_seed_ensemble`, the same path as
``finetune seg --ensemble``). Writes ``<out>/fold<k>/ensemble/metrics.json`` (what ``dca1_cv.py``
reads as a table row when ``<out>`` sits in its ``--out`` folder) and prints val and test Dice
per fold next to each model's own.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=Path, nargs="+", required=True, help="dca1_cv.py method folders (holding fold<k>/seed<s>)")
    ap.add_argument("--folds-dir", type=Path, required=True, help="dca1_cv.py's <out>/folds")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from dca1_cv import fold_samples
    from priormim.io import atomic_write_bytes
    from priormim.training.finetune_seg import evaluate_seed_ensemble

    rows = []
    for k in range(5):
        runs = [m / f"fold{k}" / f"seed{args.seed}" for m in args.models]
        missing = [r for r in runs if not (r / "metrics.json").is_file()]
        if missing:
            sys.exit(f"{missing[0]}: not finished; run dca1_cv.py for it first")
        target = args.out / f"fold{k}" / "ensemble" / "metrics.json"
        if not target.is_file():
            res = evaluate_seed_ensemble(runs, fold_samples(args.folds_dir, k, "val"), fold_samples(args.folds_dir, k, "test"),
                                         device="cpu")
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, json.dumps(res, indent=2).encode("utf-8"))
        res = json.loads(target.read_text())
        own = [json.loads((r / "metrics.json").read_text()) for r in runs]
        rows.append([max(res["val_dice_by_threshold"].values()), res["test"]["summary"]["dice"]["mean"],
                     *[x for m in own for x in (max(m["val_dice_by_threshold"].values()), m["test"]["summary"]["dice"]["mean"])]])
        print(f"fold {k}: ensemble val {rows[-1][0]:.4f} test {rows[-1][1]:.4f}; "
              + "; ".join(f"{m.name} val {rows[-1][2 + 2 * i]:.4f} test {rows[-1][3 + 2 * i]:.4f}" for i, m in enumerate(args.models)))
    mean = np.mean(rows, axis=0)
    print(f"mean over folds: ensemble val {mean[0]:.4f} test {mean[1]:.4f}; "
          + "; ".join(f"{m.name} val {mean[2 + 2 * i]:.4f} test {mean[3 + 2 * i]:.4f}" for i, m in enumerate(args.models)))


if __name__ == "__main__":
    main()
