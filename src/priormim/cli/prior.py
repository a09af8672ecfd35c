"""``priormim prior``: compute guidance priors for a folder of images.

``priormim prior vessel --images DIR --out DIR`` writes one binary vessel mask per angiogram
(see :func:`priormim.priors.compute_vessel_priors`); ``priormim prior gaze`` comes from
``priormim.cli.prior_gaze`` when that module is present.
"""

from __future__ import annotations

import argparse
import sys

# Kept here, not imported from priormim.priors.vessel: that module imports torch and scipy, and
# building the parser (``priormim --help``) must stay fast. tests/cli/test_lazy_imports.py checks
# that the tuples agree.
KEEP_MODES = ("strongest", "seeded", "largest", "all")
PRESETS = ("official", "priormim")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prior",
        help="compute guidance priors (vessel masks, gaze maps) for a folder of images",
        description="Compute guidance priors for a folder of images.",
    )
    prior_subparsers = parser.add_subparsers(dest="prior_command", metavar="PRIOR")
    prior_subparsers.required = True
    _register_vessel(prior_subparsers)
    _register_merge(prior_subparsers)
    _register_verify(prior_subparsers)
    try:
        from priormim.cli import prior_gaze
    except ModuleNotFoundError as exc:
        if exc.name != "priormim.cli.prior_gaze":
            raise
    else:
        prior_gaze.register_prior(prior_subparsers)


def _register_vessel(prior_subparsers: argparse._SubParsersAction) -> None:
    p = prior_subparsers.add_parser(
        "vessel",
        help="vessel masks of angiograms (Sato vesselness, percentile threshold, connected component)",
        description=(
            "Write <out>/<image stem>.png (0/255 vessel mask) for every image in --images, "
            "plus <out>/manifest.json. Re-running skips files that are already up to date "
            "(other options, --preset included, recompute them all); unreadable images are "
            "reported and skipped."
        ),
    )
    p.add_argument(
        "--preset",
        choices=PRESETS,
        default="official",
        help="recipe: official (default; the official VasoMIM code: 8-bit Sato response, border cleared, "
        ">= the percentile, 4-connected component of the strongest pixel) or priormim (collimator regions "
        "dropped, > the percentile, 8-connected component with the largest summed response)",
    )
    p.add_argument("--images", required=True, metavar="DIR", help="folder of angiograms, or a data manifest "
                   "(.csv/.parquet, e.g. the one `priormim ingest` writes)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the prior masks")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--percentile", type=float, default=92.0,
                   help="threshold at this percentile of the response (default 92; official keeps >=, priormim >)")
    p.add_argument("--border", type=int, default=20, help="clear a frame this many pixels wide (default 20)")
    p.add_argument(
        "--keep",
        choices=KEEP_MODES,
        default=None,
        help="connected components to keep: strongest (largest summed response; priormim's default), "
        "seeded (holds the strongest pixel; official's default), largest (most pixels), all",
    )
    p.add_argument("--sigmas", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0], metavar="S", help="Sato scales in pixels (default 1 2 3 4)")
    p.add_argument("--bright-vessels", action="store_true", help="vessels are brighter than the background (default: darker)")
    p.add_argument(
        "--collimator",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="drop responses next to flat regions touching the image edge (collimator blades, round field "
        "of view); default: on for --preset priormim, off for official",
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="compute only shard I of N (0-based; every N-th image of the sorted list), e.g. one SLURM array "
        "task each: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT. Shards share --out; each keeps "
        "manifest.shard-I-of-N.json/.csv and the last one to finish merges them into manifest.json/.csv",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_vessel)


def _register_merge(prior_subparsers: argparse._SubParsersAction) -> None:
    p = prior_subparsers.add_parser(
        "merge",
        help="merge the per-shard manifests of `prior vessel --shard I/N` into manifest.json/.csv",
        description="Merge manifest.shard-I-of-N.json of every shard in --out into manifest.json and the data "
        "manifest manifest.csv (for `priormim pretrain --manifest`). Fails naming the missing shards. The last "
        "shard to finish does this by itself; run it by hand after re-running a shard.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="the prior folder the shards wrote to")
    p.add_argument("--count", type=int, help="N of --shard I/N (default: from the file names)")
    p.set_defaults(func=run_merge)


def _register_verify(prior_subparsers: argparse._SubParsersAction) -> None:
    p = prior_subparsers.add_parser(
        "verify",
        help="check a data manifest: files present, sizes and (with --checksums) SHA-256 unchanged",
        description="Check every row of a data manifest (CSV/Parquet: image, prior, label, bytes, sha256, "
        "prior_sha256). Exit 0 when all rows are fine, 1 when some files are missing or changed (listed).",
    )
    p.add_argument("--manifest", required=True, metavar="FILE", help="manifest.csv (or .parquet)")
    p.add_argument("--checksums", action="store_true", help="also re-hash every file (reads all bytes)")
    p.set_defaults(func=run_verify)


def run_merge(args: argparse.Namespace) -> int:
    from priormim.priors.cache import merge_vessel_shards

    path, n = merge_vessel_shards(args.out, count=args.count)
    print(f"merged shards: {n} priors -> {path}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from priormim.data.manifest import read_manifest, verify_manifest

    entries = read_manifest(args.manifest)
    bad = verify_manifest(entries, checksums=args.checksums)
    for e, reason in bad[:20]:
        print(f"priormim: {e.image}: {reason}", file=sys.stderr)
    if len(bad) > 20:
        print(f"priormim: ... and {len(bad) - 20} more", file=sys.stderr)
    print(f"{args.manifest}: {len(entries) - len(bad)} of {len(entries)} rows ok, {len(bad)} missing or changed")
    return 1 if bad else 0


def run_vessel(args: argparse.Namespace) -> int:
    """Returns 0 when the job ran (failures are counted in the summary), 1 when every image failed."""
    from priormim.data.manifest import parse_shard
    from priormim.priors.cache import compute_vessel_priors

    from priormim.data.manifest import is_manifest_path, read_manifest

    shard = parse_shard(args.shard) if args.shard else None
    images = [e.image for e in read_manifest(args.images)] if is_manifest_path(args.images) else args.images
    summary = compute_vessel_priors(
        images,
        args.out,
        batch_size=args.batch_size,
        device=args.device,
        percentile=args.percentile,
        border=args.border,
        keep=args.keep,
        sigmas=args.sigmas,
        black_ridges=not args.bright_vessels,
        collimator=args.collimator,
        progress=not args.no_progress,
        shard=shard,
        preset=args.preset,
    )
    for path, reason in summary.failed:
        print(f"priormim: skipped {path.name}: {reason}", file=sys.stderr)
    print(summary.line())
    if shard is not None:
        print(f"shard {shard[0]}/{shard[1]} done" + ("; all shards finished, manifests merged" if summary.merged else
              "; the last shard to finish merges the manifests (or run `priormim prior merge`)"))
    return 1 if summary.n_total and summary.n_failed == summary.n_total else 0
