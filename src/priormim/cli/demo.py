"""``priormim demo``: the main job end to end on built-in synthetic data."""

from __future__ import annotations

import argparse
import logging


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="synthesise data, pretrain MAE and VasoMIM, fine-tune, and write figures and a table",
        description="Runs on a fresh machine with no data in a few minutes on a 2-core CPU "
        "(uses a GPU when there is one). Re-running skips finished steps.",
    )
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--real", help="also score on a real segmentation folder (images/ + masks/), e.g. DATA/xca_dca1")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds), for smoke tests")
    p.add_argument("--no-finetune", action="store_true", help="skip the segmentation fine-tuning table")
    p.add_argument("--cxr", action="store_true",
                   help="add the chest X-ray part: MAE vs VP-MIM on synthetic CXRs with gaze, linear-probe AUC")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from priormim.demo import run_demo

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run_demo(args.out, real=args.real, device=args.device, seed=args.seed, quick=args.quick,
             finetune=not args.no_finetune, cxr=args.cxr)
    return 0
