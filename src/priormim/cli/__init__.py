"""The ``priormim`` command line.

Each sub-command lives in its own module with a ``register(subparsers)`` function that adds
its parser and sets ``func``. Those modules import heavy libraries (torch, scipy, numpy) inside
their ``run`` functions only, so ``priormim --help`` and ``--version`` answer at once. User mistakes (:class:`UserError`) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Idle OpenMP threads sleep instead of spinning (unless the user chose otherwise). Set before
# torch is imported, which every command does lazily. On a shared 2-core machine (load 6) a
# UNeXt-S epoch took 61.8 s wall with spinning threads and 5.3 s with passive ones
# (benchmarks/README.md, "CPU threads on a busy machine").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from priormim.errors import UserError  # noqa: E402

# Modules under priormim.cli that each register one or more sub-commands.
COMMAND_MODULES = (
    "synth",
    "prior",
    "segmentor",
    "pretrain",
    "export",
    "demo",
    "finetune",
    "baseline",
    "predict",
    "bench",
    "ingest",
    "visualize",
    "analyze",
)
# Modules under priormim.cli that each add one KIND to `priormim synth KIND` (a
# ``register_synth(synth_subparsers)`` function); ``synth xca`` is built into cli/synth.py.
SYNTH_MODULES = (
    "synth_cxr",
    "synth_cine",
)


def build_parser() -> argparse.ArgumentParser:
    from priormim import __version__

    parser = argparse.ArgumentParser(
        prog="priormim", description="Prior-guided masked image modeling on X-ray images."
    )
    parser.add_argument("--version", action="version", version=f"priormim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"priormim.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except UserError as exc:
        print(f"priormim: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the last line of defence: a path or disk problem no command foresaw
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"priormim: error: {where}{exc.strerror or exc}; check that the path's folders exist and are writable "
              "(not a file, not read-only, disk not full), or choose another --out", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("priormim: interrupted; the last checkpoint and finished files are kept", file=sys.stderr)
        return 130
    return int(result or 0)
