"""``--config PRESET`` and ``KEY=VALUE`` for ``priormim finetune seg|cls`` (one config system
with pretraining: :func:`priormim.config.load_values`).

Precedence: the config's defaults < the preset < ``KEY=VALUE`` overrides, and flags given
explicitly on the command line win over the preset (a key given both as a flag and as
``KEY=VALUE`` is refused). Without ``--config`` and overrides the flags alone are used, as before.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_config_args", "merge_config"]


def _tracked(action: argparse.Action) -> None:
    """Make ``action`` record its ``dest`` in ``namespace._explicit`` when the flag is given."""
    base = type(action)

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: N807
        if getattr(namespace, "_explicit", None) is None:
            namespace._explicit = set()
        namespace._explicit.add(self.dest)
        base.__call__(self, parser, namespace, values, option_string)

    action.__class__ = type(f"Explicit{base.__name__}", (base,), {"__call__": __call__})


def add_config_args(parser: argparse.ArgumentParser, *, presets: str) -> None:
    """``--config`` and the ``KEY=VALUE`` positionals; call after every flag is added."""
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            _tracked(action)
    parser.add_argument("--config", metavar="PRESET|YAML",
                        help=f"fine-tuning preset ({presets}) or a YAML file of config keys; flags given explicitly win")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config keys, e.g. lr=1e-3 epochs=20 (YAML values; see docs/finetune_config.md)")
    parser.set_defaults(_explicit=None)


def merge_config(cls: type, args: argparse.Namespace, flags: dict[str, Any], *, dest_to_key: dict[str, str]) -> dict[str, Any]:
    """The keyword arguments of ``cls``: ``flags`` (config key -> the flag's value) alone without
    ``--config`` / overrides; else the preset + overrides (checked) with the explicit flags on top."""
    from priormim.config import load_values, parse_overrides
    from priormim.errors import UserError

    if args.config is None and not args.overrides:
        return flags
    values, _ = load_values(cls, args.config, list(args.overrides))
    explicit = {dest_to_key.get(d, d) for d in (args._explicit or ())}
    given = {k: v for k, v in flags.items() if k in explicit}
    twice = sorted(set(given) & set(parse_overrides(list(args.overrides))))
    if twice:
        raise UserError(f"'{twice[0]}' is given both as a flag and as {twice[0]}=...; keep one")
    return {**values, **given}
