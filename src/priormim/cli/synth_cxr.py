"""``priormim synth cxr``: synthetic chest X-rays with lesions and REFLACX-format gaze.

``cli/synth.py`` calls :func:`register_synth` with its sub-parsers object.
"""

from __future__ import annotations

import argparse

__all__ = ["register_synth", "run_synth_cxr"]


def run_synth_cxr(args: argparse.Namespace) -> int:
    from pathlib import Path

    from priormim.data.synth_cxr import write_synthetic_cxr

    paths = write_synthetic_cxr(args.out, n=args.n, size=args.size, seed=args.seed, lesion_rate=args.lesion_rate)
    out = Path(args.out)
    print(f"wrote {len(paths)} synthetic chest X-rays to {out / 'images'}, labels to {out / 'labels.csv'}")
    print(
        f"gaze (REFLACX format) in {out / 'gaze'}; heatmaps: priormim prior gaze --format reflacx "
        f"--root {out / 'gaze'} --images {out / 'images'} --out {out / 'gaze_priors'}"
    )
    return 0


def register_synth(synth_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``cxr`` to the ``synth`` sub-commands and set its ``func``."""
    p = synth_subparsers.add_parser(
        "cxr",
        help="synthetic chest X-rays with lesions and simulated radiologist gaze (VP-MIM)",
        description=(
            "Write OUT/images/cxr_00000.png (8-bit grey), OUT/labels.csv (image, label, lesion_type) and "
            "simulated scan paths of 1-2 readers per image in REFLACX format under OUT/gaze/main_data/. "
            "Deterministic for a given --seed."
        ),
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument(
        "--lesion-rate", type=float, default=0.5, help="fraction of images with a lesion (default 0.5)"
    )
    p.set_defaults(func=run_synth_cxr)
    return p
