"""``priormim prior gaze``: cache VP-MIM gaze heatmaps from REFLACX / EGD-CXR fixations.

``cli/prior.py`` calls :func:`register_prior` with its sub-parsers object.
"""

from __future__ import annotations

import argparse
import logging

__all__ = ["register_prior", "run_prior_gaze"]


def run_prior_gaze(args: argparse.Namespace) -> int:
    from priormim.priors.gaze_cache import compute_gaze_priors

    logging.basicConfig(level=logging.WARNING, format="priormim: %(message)s")
    summary = compute_gaze_priors(
        format=args.format,
        root=args.root,
        images=args.images,
        out=args.out,
        sigma_px=args.sigma_px,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    for line in summary.lines():
        print(line)
    return 0


def register_prior(prior_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``gaze`` to the ``prior`` sub-commands and set its ``func``."""
    p = prior_subparsers.add_parser(
        "gaze",
        help="gaze heatmaps (VP-MIM prior) from REFLACX or EGD-CXR fixations",
        description=(
            "Write one gaze heatmap <stem>.npy (float32 [H, W] at the image's size, summing to 1, "
            "or all zero when the image has no valid fixation) per image in --images, matched to "
            "the gaze data by file stem = dicom_id. Resumable: a re-run skips finished files. "
            "Counts of dropped fixations and skipped images go to OUT/manifest.json."
        ),
    )
    p.add_argument("--format", required=True, choices=("reflacx", "egd"), help="gaze dataset format")
    p.add_argument("--root", required=True, help="gaze dataset folder (REFLACX root or main_data/; EGD-CXR root)")
    p.add_argument("--images", required=True, help="folder of images named <dicom_id>.<ext>")
    p.add_argument("--out", required=True, help="output folder for <stem>.npy and manifest.json")
    p.add_argument(
        "--sigma-px",
        type=float,
        default=150.0,
        help="EGD-CXR only: Gaussian sigma in original-image pixels (default 150, about 1 degree)",
    )
    p.add_argument("--overwrite", action="store_true", help="recompute every heatmap")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_prior_gaze)
    return p
