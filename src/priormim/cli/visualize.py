"""``priormim visualize``: a pretraining run's masks, priors, reconstructions and segmentor maps."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "visualize",
        help="draw a pretraining run's masks, priors, reconstructions (original's grey scale) and segmentor maps",
        description="Rebuilds the run's model from RUN/config.yaml + RUN/last.ckpt, masks the first --n images of "
        "--images the way the recipe does at the end of training, and writes <out>/reconstructions.png: original, "
        "vessel prior, masked input and reconstruction on the original's grey scale, plus the consistency "
        "segmentor's vessel probability on the original and the reconstruction when the run has one.",
    )
    p.add_argument("--run", type=Path, required=True, help="folder of `priormim pretrain --out`")
    p.add_argument("--images", type=Path, required=True, help="folder of images (the first --n, sorted by name)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--n", type=int, default=4, help="number of images (default 4)")
    p.add_argument("--priors", type=Path, help="vessel prior folder (default: the run's cache, else computed now)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random part of the masking (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from priormim.errors import UserError
    from priormim.evaluation.visualize import visualize_run

    if args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    path, visuals = visualize_run(args.run, args.images, args.out, n=args.n, seed=args.seed, priors=args.priors)
    for note in visuals.notes:
        print(f"priormim: note: {note}")
    seg = "with segmentor maps" if visuals.seg_image is not None else "no segmentor in this run"
    print(f"{len(visuals.names)} image(s), priors {visuals.prior_source}, {seg} -> {path}")
    return 0
