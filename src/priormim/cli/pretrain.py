"""``priormim pretrain``: MAE-family pretraining from a YAML recipe plus KEY=VALUE overrides."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="pretrain a ViT with MAE / VasoMIM / VP-MIM or a zoo baseline (docs/zoo.md)",
        description="Pretrain with a recipe (configs/*.yaml or a packaged name such as 'vasomim', "
        "'simmim', 'amt', 'hpm', 'deblurmim', 'crossmae', 'mocov3', 'dino', 'chexworld'). "
        "Any config value can be overridden: optim.epochs=10 model.encoder=vit_base_patch16_224. "
        "Several GPUs or nodes: torchrun --nproc-per-node N -m priormim pretrain ...",
    )
    p.add_argument("--config", default="vasomim", help="YAML recipe path or packaged name (default: vasomim)")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--data", help="folder of unlabelled training images")
    data.add_argument(
        "--manifest",
        metavar="FILE",
        help="data manifest instead of a folder: CSV (or Parquet with pyarrow) with columns image, prior, label, "
        "bytes, sha256, prior_sha256 (only image is required), e.g. the manifest.csv `priormim prior vessel` writes",
    )
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, encoder.safetensors)")
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in --out (same settings)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its checkpoints, logs and encoder are removed first)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from priormim.config import load_config
    from priormim.training.pretrain import pretrain

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.images={Path(args.data)}")
    if args.manifest:
        from priormim.data.manifest import MANIFEST_SUFFIXES
        from priormim.errors import UserError

        path = Path(args.manifest)
        if path.suffix.lower() not in MANIFEST_SUFFIXES:
            raise UserError(f"a manifest must be a {' or '.join(MANIFEST_SUFFIXES)} file; for a folder use --data", path)
        if not path.is_file():
            raise UserError("manifest not found; pass the CSV written by `priormim prior vessel` (or your own)", path)
        overrides.append(f"data.images={path}")
    cfg = load_config(args.config, overrides)
    result = pretrain(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    if result.encoder_path is not None:  # rank 0 only
        last = result.history[-1] if result.history else {}
        print(f"pretrained {cfg.method}: {len(result.history)} epoch(s), final loss {last.get('loss', float('nan')):.4f}; "
              f"encoder -> {result.encoder_path}")
    return 0
