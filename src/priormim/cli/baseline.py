"""``priormim baseline vesselness``: thresholded Sato / Frangi vesselness, no training."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("baseline", help="training-free baselines scored like the fine-tuned models")
    sub = p.add_subparsers(dest="baseline", metavar="BASELINE")
    sub.required = True
    v = sub.add_parser(
        "vesselness",
        help="thresholded vesselness (Sato or Frangi), no training",
        description="Segment vessels by thresholding a vesselness filter at a per-image percentile, clearing a "
        "border frame and optionally keeping only some connected components; scored with the same "
        "metrics and written in the same metrics.json / results.md format as `priormim finetune seg`.",
    )
    v.add_argument("--test", type=Path, help="folder with images/ + masks/")
    v.add_argument("--data", type=Path, help="instead of --test: score only the test part of this folder's fixed split")
    v.add_argument("--split-seed", type=int, default=0, help="seed of the fixed split used with --data (default 0)")
    v.add_argument("--method", choices=("sato", "frangi"), default="sato")
    v.add_argument("--percentile", type=float, default=92.0, help="threshold percentile of the response (default 92)")
    v.add_argument("--border", type=int, default=20, help="border frame cleared, in pixels (default 20)")
    v.add_argument("--keep", choices=("all", "largest", "seeded"), default="all",
                   help="connected components kept (default all; seeded often picks the collimator edge)")
    v.add_argument("--out", type=Path, help="output folder (default: ./baseline_<method>)")
    v.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from priormim.errors import UserError
    from priormim.training.finetune_seg import fixed_split, run_vesselness_baseline

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if (args.test is None) == (args.data is None):
        raise UserError("pass either --test DIR or --data DIR")
    if not 0 <= args.percentile < 100:
        raise UserError(f"--percentile must be in [0, 100), got {args.percentile}")
    out = args.out or Path(f"baseline_{args.method}")
    names = None
    folder = args.test
    if args.data is not None:
        from priormim.data.readers import read_segmentation_folder

        folder = args.data
        names = fixed_split([p.name for p in read_segmentation_folder(folder, check_binary=False)], seed=args.split_seed)["test"]
    metrics = run_vesselness_baseline(folder, out, args.method, percentile=args.percentile, border=args.border,
                                      keep=args.keep, names=names)
    s = metrics["test"]["summary"]
    print(f"{metrics['method']}: DSC {s['dice']['mean']:.4f} ± {s['dice']['std']:.4f}, clDice {s['cldice']['mean']:.4f} "
          f"± {s['cldice']['std']:.4f} on {s['dice']['n']} images -> {out / 'metrics.json'}")
    return 0
