"""``priormim synth``: write built-in synthetic data sets with ground truth.

``priormim synth xca --out DIR [--n 64] [--size 256] [--seed 0]`` writes synthetic coronary
angiograms to ``DIR/images/`` and their vessel masks to ``DIR/masks/`` (same file names).
Other kinds are added by the modules in ``priormim.cli.SYNTH_MODULES``: ``synth cxr`` (chest
X-rays with gaze maps), ``synth cine`` (angiography cine runs for ``priormim ingest``).
"""

from __future__ import annotations

import argparse
import importlib


def int_at_least(minimum: int):
    """argparse type: an integer >= ``minimum`` (shared by the ``synth`` kinds)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _run_xca(args: argparse.Namespace) -> int:
    import numpy as np

    from priormim.data.synth_xca import write_synthetic_xca
    from priormim.io import read_mask

    paths = write_synthetic_xca(args.out, n=args.n, size=args.size, seed=args.seed, rich=args.rich)
    # Re-read the written masks: the summary then describes the files on disk.
    fraction = float(np.mean([read_mask(p.parent.parent / "masks" / p.name).mean() for p in paths]))
    print(
        f"wrote {len(paths)} synthetic angiograms ({args.size}x{args.size}, seed {args.seed}, "
        f"mean vessel fraction {fraction:.3f}) to {args.out}/images and {args.out}/masks"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write synthetic data sets with ground truth (built-in default data)",
        description="Write synthetic X-ray data sets with ground truth; no download needed.",
    )
    synth_subparsers = parser.add_subparsers(dest="synth_kind", metavar="KIND")
    synth_subparsers.required = True

    xca = synth_subparsers.add_parser(
        "xca",
        help="coronary angiograms + vessel masks (like DCA1)",
        description=(
            "Synthetic X-ray coronary angiograms: dark tapering vessel trees on a textured "
            "background with catheter, collimator and quantum noise. Writes OUT/images/ and "
            "OUT/masks/ (xca_00000.png, ...; masks 0/255; the catheter is not in the mask). "
            "Image i depends only on (seed, i, size), so a larger --n extends a smaller run."
        ),
    )
    xca.add_argument("--out", required=True, help="output folder (created; files are overwritten)")
    xca.add_argument("--n", type=int_at_least(1), default=64, help="number of images (default 64)")
    xca.add_argument(
        "--size", type=int_at_least(32), default=256, help="side length in pixels (default 256)"
    )
    xca.add_argument("--seed", type=int_at_least(0), default=0, help="random seed (default 0)")
    xca.add_argument("--rich", action="store_true",
                     help="richer anatomy: overlapping rib shadows, a sharp diaphragm edge, motion blur of the anatomy")
    xca.set_defaults(func=_run_xca)

    from priormim.cli import SYNTH_MODULES

    for name in SYNTH_MODULES:
        # import_module, not "from priormim.cli import ...": the latter raises a plain
        # ImportError (no .name) when the module is absent.
        try:
            module = importlib.import_module(f"priormim.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"priormim.cli.{name}":
                raise
        else:
            module.register_synth(synth_subparsers)
