"""``priormim synth cine``: synthetic angiography cine runs to try ``priormim ingest`` on.

``priormim synth cine --out DIR --n N [--format dicom|mp4|avi] [--syntax jpeg-lossless|rle|explicit]``
writes ``DIR/cine_0000.dcm`` ... (multi-frame XA DICOM) or videos, and ``DIR/truth.csv`` with
the injected contrast of every frame and the ground-truth peak frames. ``cli/synth.py``
calls :func:`register_synth` (the module is listed in ``priormim.cli.SYNTH_MODULES``).
"""

from __future__ import annotations

import argparse

from priormim.cli.synth import int_at_least

__all__ = ["SYNTAXES", "register_synth", "run_synth_cine"]

_FORMATS = {"dicom": "dcm", "mp4": "mp4", "avi": "avi"}
# priormim.data.synth_cine.DICOM_SYNTAXES, spelled out so that building the parser imports
# neither torch nor scipy (a test checks they agree).
SYNTAXES = ("jpeg-lossless", "rle", "explicit")


def run_synth_cine(args: argparse.Namespace) -> int:
    from pathlib import Path

    from priormim.data.synth_cine import write_synthetic_cine

    paths = write_synthetic_cine(args.out, n=args.n, size=args.size, frames=args.frames, seed=args.seed,
                                 formats=(_FORMATS[args.format],), syntax=args.syntax)
    out = Path(args.out)
    kind = f"{args.syntax} DICOM" if args.format == "dicom" else args.format
    print(f"wrote {len(paths)} synthetic cine runs ({args.frames} frames of {args.size}x{args.size}, {kind}) to {out}; "
          f"ground truth (contrast, peak frames) in {out / 'truth.csv'}")
    print(f"next: priormim ingest {out} --out pool")
    return 0




def register_synth(synth_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``cine`` to the ``synth`` sub-commands and set its ``func``."""
    p = synth_subparsers.add_parser(
        "cine",
        help="synthetic angiography cine runs (multi-frame DICOM or video) to try `priormim ingest`",
        description=(
            "Write OUT/cine_0000.dcm ... (multi-frame XA DICOM; --format mp4/avi: videos) and OUT/truth.csv "
            "(name, frame, contrast, peak: the injected contrast per frame and the ground-truth peak frames). "
            "Each run: a synthetic coronary tree, a gamma-variate contrast bolus, cardiac motion and per-frame "
            "noise. Run i depends only on (seed, i, size, frames). The patient tags are obviously synthetic."
        ),
    )
    p.add_argument("--out", required=True, help="output folder (created; files are overwritten)")
    p.add_argument("--n", type=int_at_least(1), default=4, help="number of cine runs (default 4)")
    p.add_argument("--format", choices=tuple(_FORMATS), default="dicom", help="file format (default dicom)")
    p.add_argument("--syntax", choices=SYNTAXES, default="jpeg-lossless",
                   help="DICOM transfer syntax (default jpeg-lossless: JPEG Lossless SV1, as most XA archives)")
    p.add_argument("--frames", type=int_at_least(8), default=40, help="frames per run (default 40)")
    p.add_argument("--size", type=int_at_least(32), default=256, help="frame side in pixels (default 256)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="random seed (default 0)")
    p.set_defaults(func=run_synth_cine)
    return p
