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
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from priormim.config import PretrainConfig, _from_dict
    from priormim.errors import UserError
    from priormim.training.checkpoint import latest_valid_checkpoint, load_checkpoint
    from priormim.training.pretrain import build_model, export_run_encoder

    from priormim.outputs import claim_output_file, refuse_input_overlap
    from priormim.training.checkpoint import check_pretrain_checkpoint

    src = Path(args.run)
    out = Path(args.out)
    refuse_input_overlap(out, [("--run", src)], inside=False, around=False)
    if out.suffix.lower() in (".ckpt", ".pt", ".pth"):
        raise UserError("looks like a checkpoint path; the encoder is a .safetensors file (e.g. encoder.safetensors)", out)
    claim_output_file(out, overwrite=args.overwrite)
    if src.is_dir():
        found = latest_valid_checkpoint(src)
        if found is None:
            raise UserError("no valid checkpoint in this run folder", src)
        ckpt_path, ckpt = found
    else:
        ckpt_path, ckpt = src, load_checkpoint(src)
    check_pretrain_checkpoint(ckpt, ckpt_path)
    cfg = _from_dict(PretrainConfig, ckpt["config"], "", str(ckpt_path))
    model = build_model(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise UserError(f"the weights do not fit the model its config describes ({str(exc).splitlines()[0][:160]}); "
                        "the checkpoint is damaged or was edited", ckpt_path) from exc
    path = export_run_encoder(model, cfg, out)
    print(f"exported the encoder of {ckpt_path} (epoch {ckpt['epoch'] + 1}) -> {path}")
    if args.hub:
        from priormim.models.hub import save_pretrained

        print(f"Hub model folder -> {save_pretrained(path, args.hub)}")
    print(f'load it with: priormim.load_encoder("{path}")')
    return 0
