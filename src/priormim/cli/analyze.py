"""``priormim analyze``: mechanism metrics of a pretraining run on held-out images."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="score a pretraining run's reconstructions (vessel fidelity under fixed masks), masking and tokens",
        description="Rebuilds the run's model, hides the same fixed random patches of every held-out image for every "
        "run (--fixed-masks, drawn once and saved), and writes OUT/analysis.json, OUT/per_image.csv and "
        "OUT/reconstructions.png: Dice between the segmentors' (and Sato's) vessel maps of reconstruction and "
        "original inside the hidden pixels, PSNR inside vessel vs background, the share of hidden patches on vessel "
        "under the run's own masking, and the silhouette / Calinski-Harabasz / Davies-Bouldin of vessel vs "
        "background patch tokens. Compare runs by passing them the same --fixed-masks and --segmentor files.",
    )
    p.add_argument("run", type=Path, help="folder of `priormim pretrain --out`")
    p.add_argument("--images", type=Path, required=True, help="held-out images (not the pretraining pool)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--masks", type=Path, help="ground-truth vessel masks, matched by file stem (optional)")
    p.add_argument("--segmentor", type=Path, action="append", default=None,
                   help="frozen segmentor file scoring the reconstructions (repeatable; default: the run's own)")
    p.add_argument("--fixed-masks", type=Path, help="shared mask file, drawn when absent (default OUT/fixed_masks.npz)")
    p.add_argument("--n", type=int, default=None, help="use the first N images (default all)")
    p.add_argument("--seed", type=int, default=0, help="seed of new fixed masks and of the subsampling (default 0)")
    p.add_argument("--draws", type=int, default=64, help="masks drawn per image for the masking statistics")
    p.add_argument("--priors", type=Path, help="vessel prior folder (default: the run's cache, else computed now)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from priormim.errors import UserError
    from priormim.evaluation.analyze import analyze_run

    if args.n is not None and args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    if args.draws < 1:
        raise UserError(f"--draws must be at least 1, got {args.draws}")
    res = analyze_run(args.run, args.images, args.out, masks=args.masks, segmentors=args.segmentor,
                      fixed_masks_path=args.fixed_masks, n=args.n, seed=args.seed, draws=args.draws,
                      priors=args.priors)
    s = res.summary
    fid = ", ".join(f"{k} {v:.3f}" for k, v in s["fidelity"].items())
    m, t = s["masking"], s["tokens"]
    print(f"{s['method']} epoch {s['epoch']}, {s['n_images']} image(s): {fid}")
    print(f"masked vessel share {m['masked_vessel_share_start']:.3f} -> {m['masked_vessel_share_end']:.3f} "
          f"(random {m['vessel_patch_share']:.3f}); tokens: silhouette {t['silhouette']:.4f}, "
          f"CH {t['calinski_harabasz']:.1f}, DB {t['davies_bouldin']:.2f}")
    print(f"-> {res.out / 'analysis.json'}, {res.figure}")
    return 0
