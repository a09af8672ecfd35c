"""``priormim pretrain``: MAE-family pretraining from a YAML recipe plus KEY=VALUE overrides."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="pretrain a ViT with MAE / VasoMIM / VP-MIM",
        description="Pretrain with a recipe (configs/*.yaml or a packaged name such as 'vasomim'). "
        "Any config value can be overridden: optim.epochs=10 model.encoder=vit_base_patch16_224. "
        "Several GPUs or nodes: torchrun --nproc-per-node N -m priormim pretrain ...",
    )
    p.add_argument("--config", default="vasomim", help="YAML recipe path or packaged name (default: vasomim)")
    p.add_argument("--data", help="folder of unlabelled training images")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, encoder.safetensors)")
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in --out")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from priormim.config import load_config
    from priormim.training.pretrain import pretrain

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.images={Path(args.data)}")
    cfg = load_config(args.config, overrides)
    result = pretrain(cfg, args.out, resume=args.resume)
    if result.encoder_path is not None:
        last = result.history[-1] if result.history else {}
        print(f"pretrained {cfg.method}: {len(result.history)} epoch(s), final loss {last.get('loss', float('nan')):.4f}; "
              f"encoder -> {result.encoder_path}")
    return 0
