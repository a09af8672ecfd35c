"""``priormim ingest``: DICOM cine archives, videos and image folders -> a pretraining pool."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ingest",
        help="turn DICOM cine runs, videos and images into a de-identified pretraining pool with a manifest",
        description=(
            "Read every DICOM file (single or multi-frame, JPEG Lossless/baseline/JPEG-LS/JPEG 2000/RLE), video "
            "(mp4, avi, mov, mkv) and image under the inputs; keep the frames around peak contrast; drop "
            "near-duplicates; write <out>/frames/<hash>.png (names are content hashes, no DICOM tag copied "
            "except geometry) and <out>/manifest.csv for `priormim pretrain --manifest` and "
            "`priormim prior vessel --images`. Resumable (re-run the same command), shardable (--shard I/N). "
            "See docs/ingest.md."
        ),
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="folders (searched recursively) or files")
    p.add_argument("--out", required=True, metavar="DIR", help="pool folder (frames/ and manifest)")
    p.add_argument("--frames", default="peak", metavar="RULE",
                   help="all | peak (frames around peak opacification, default) | every:K | peak:K")
    p.add_argument("--level", type=float, default=0.4,
                   help="peak rule: keep frames whose contrast energy is at least this fraction of the run's range (default 0.4)")
    p.add_argument("--dedup", type=int, default=2, metavar="BITS",
                   help="drop a frame within BITS of 256 dHash bits of the last kept frame (default 2; -1: off)")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.add_argument("--shard", metavar="I/N", help="only shard I of N of the sorted sources (one SLURM array task each); "
                   "the last shard to finish merges the manifests")
    p.add_argument("--merge", action="store_true", help="only merge the shard manifests in --out (after re-running a shard)")
    p.add_argument("--mapping", metavar="FILE", help="also write source id -> original path (identifying: keep it apart)")
    p.add_argument("--format", choices=("csv", "parquet"), default="csv", help="manifest format (default csv)")
    p.add_argument("--bright-vessels", action="store_true", help="vessels are brighter than the background")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """0 when frames were written, 1 when nothing could be read."""
    from priormim.errors import UserError
    from priormim.ingest.run import ingest, merge_ingest_shards
    from priormim.data.manifest import parse_shard

    if args.merge:
        path, n = merge_ingest_shards(args.out, manifest_format=args.format)
        print(f"merged ingest shards: {n} frames -> {path}")
        return 0
    if not args.inputs:
        raise UserError("no inputs; pass the archive folder(s), e.g. priormim ingest /data/xa --out pool")
    summary = ingest(
        args.inputs,
        args.out,
        frames=args.frames,
        level=args.level,
        dedup_bits=args.dedup,
        workers=args.workers,
        shard=parse_shard(args.shard) if args.shard else None,
        mapping=args.mapping,
        manifest_format=args.format,
        bright_vessels=args.bright_vessels,
        progress=not args.no_progress,
    )
    for path, reason in summary.failed[:20]:
        print(f"priormim: skipped {path}: {reason}", file=sys.stderr)
    if len(summary.failed) > 20:
        print(f"priormim: ... and {len(summary.failed) - 20} more skipped", file=sys.stderr)
    print(summary.line())
    return 1 if summary.n_rows == 0 else 0
