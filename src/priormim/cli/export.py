"""``priormim export``: write a run's encoder as timm-loadable safetensors."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a pretraining run's encoder (timm keys, safetensors)")
    p.add_argument("--run", required=True, help="pretraining run folder, or a .ckpt file")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--hub", metavar="DIR", help="also write a Hugging Face Hub model folder (config.json + "
                   "model.safetensors with input size and grey mean/std) that timm loads as local-dir:DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from priormim.config import PretrainConfig, _from_dict
    from priormim.errors import UserError
    from priormim.training.checkpoint import latest_valid_checkpoint, load_checkpoint
    from priormim.training.pretrain import build_model, export_run_encoder

    src = Path(args.run)
    if src.is_dir():
        found = latest_valid_checkpoint(src)
        if found is None:
            raise UserError("no valid checkpoint in this run folder", src)
        ckpt_path, ckpt = found
    else:
        ckpt_path, ckpt = src, load_checkpoint(src)
    cfg = _from_dict(PretrainConfig, ckpt["config"], "", str(ckpt_path))
    model = build_model(cfg)
    model.load_state_dict(ckpt["model"])
    path = export_run_encoder(model, cfg, Path(args.out))
    print(f"exported the encoder of {ckpt_path} (epoch {ckpt['epoch'] + 1}) -> {path}")
    if args.hub:
        from priormim.models.hub import save_pretrained

        print(f"Hub model folder -> {save_pretrained(path, args.hub)}")
    print(f'load it with: priormim.load_encoder("{path}")')
    return 0
