"""``priormim finetune cls``: chest X-ray classification, linear probe or full fine-tuning (AUC).

``cli/finetune.py`` calls :func:`register_finetune` with its sub-parsers object.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

__all__ = ["register_finetune", "run_cls"]


def _encoder_arg(value: str) -> Path | None:
    return None if value.lower() in ("none", "scratch", "") else Path(value)


def _json_object(value: str) -> dict:
    try:
        out = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}); e.g. '{{\"depth\": 6}}'") from exc
    if not isinstance(out, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"depth\": 6}'")
    return out


def register_finetune(finetune_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``cls`` to the ``finetune`` sub-commands and set its ``func``."""
    p = finetune_subparsers.add_parser(
        "cls",
        help="chest X-ray classification: linear probe or full fine-tuning, AUC",
        description=(
            "Train a classifier on a ViT encoder once per seed and report the test AUC (mean ± std over seeds): "
            "binary -> AUC of the second class (e.g. PNEUMONIA), multi-label -> mean AUC over labels, more classes -> "
            "macro one-vs-rest AUC. Data: class sub-folders, a folder with labels.csv (+ images/), ChestX-ray14 "
            "(Data_Entry_2017.csv, official split lists) or RSNA Pneumonia (stage_2_train_labels.csv). The best epoch "
            "is chosen on a validation split (--val, or 10% carved from --train with a fixed seed), never on --test; "
            "pass the --train folder as --test to carve a fixed test split too (e.g. RSNA). Finished seeds "
            "(seed<k>/metrics.json) are skipped when the command is re-run."
        ),
    )
    data = p.add_argument_group("data")
    data.add_argument("--train", type=Path, required=True, help="training data (folder or labels CSV)")
    data.add_argument("--test", type=Path, required=True, help="test data; the --train folder itself: carve a test split")
    data.add_argument("--val", type=Path, help="validation data (default: carved from --train)")
    data.add_argument("--format", choices=("auto", "folders", "csv", "cxr14", "rsna"), default="auto",
                      help="dataset layout (default: detected)")
    data.add_argument("--val-fraction", type=float, default=0.1, help="validation share carved from train (default 0.1)")
    data.add_argument("--test-fraction", type=float, default=0.2, help="test share when --test is --train (default 0.2)")
    data.add_argument("--split-seed", type=int, default=0, help="seed of the carved splits (default 0)")
    data.add_argument("--num-workers", type=int, default=4, help="image decoding processes (default 4)")
    model = p.add_argument_group("model")
    model.add_argument("--encoder", type=_encoder_arg, required=True, metavar="PATH|none",
                       help="encoder .safetensors from `priormim export`, or none for random init")
    model.add_argument("--backbone", default="vit_tiny_patch16_224", help="timm ViT name (the encoder file's metadata overrides it)")
    model.add_argument("--model-kwargs", type=_json_object, help="extra timm.create_model kwargs as JSON (random init)")
    model.add_argument("--img-size", type=int, default=224, help="input size (default 224)")
    model.add_argument("--pool", choices=("token", "avg"), help="feature pooling (default: linear token, full avg)")
    train = p.add_argument_group("training")
    train.add_argument("--mode", choices=("linear", "full"), default="linear",
                       help="linear: frozen encoder, BatchNorm+Linear head; full: train everything (default linear)")
    train.add_argument("--out", type=Path, required=True, help="output folder: seed<k>/, results.md, results.csv")
    train.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per seed (default: 0 1 2)")
    train.add_argument("--epochs", type=int, help="default: linear 90, full 50")
    train.add_argument("--warmup-epochs", type=int, help="default: linear 10, full 5")
    train.add_argument("--batch-size", type=int, help="default: linear 256, full 64")
    train.add_argument("--lr", type=float, help="peak learning rate (default: base lr x batch/256; base: linear 0.1, full 1e-3)")
    train.add_argument("--opt", help="timm optimizer name (default: linear momentum (SGD), full adamw)")
    train.add_argument("--weight-decay", type=float, help="default: linear 0, full 0.05")
    train.add_argument("--layer-decay", type=float, default=0.75, help="full mode layer-wise lr decay; 1 disables (default 0.75)")
    train.add_argument("--drop-path", type=float, default=0.1, help="full mode stochastic depth (default 0.1)")
    train.add_argument("--hflip", action="store_true",
                       help="random horizontal flips in full mode (off by default: CXRs are not left-right symmetric)")
    train.add_argument("--label", help="method name in the results table (default: mode and encoder file name)")
    train.add_argument("--no-save-model", action="store_true", help="do not write seed<k>/model.safetensors")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the seeds and results already in --out (finished seeds are otherwise reused)")
    from priormim.cli.finetune_config import add_config_args

    add_config_args(p, presets="cls_linear, cls_full")
    p.set_defaults(func=run_cls)
    return p


# Flags whose config key is spelled otherwise (the rest: the flag's name with _ for -).
CLS_FLAG_KEYS = {"pool": "global_pool", "no_save_model": "save_model"}


def run_cls(args: argparse.Namespace) -> int:
    from priormim.cli.finetune_config import merge_config
    from priormim.training.finetune_cls import ClsFinetuneConfig, finetune_classification

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    flags = dict(
        train=args.train, test=args.test, out=args.out, encoder=args.encoder, backbone=args.backbone, mode=args.mode,
        seeds=list(args.seeds), format=args.format, val=args.val, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, split_seed=args.split_seed, img_size=args.img_size, epochs=args.epochs,
        warmup_epochs=args.warmup_epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        opt=args.opt, layer_decay=args.layer_decay, drop_path=args.drop_path, global_pool=args.pool, hflip=args.hflip,
        model_kwargs=args.model_kwargs, device=args.device, num_workers=args.num_workers, save_model=not args.no_save_model, label=args.label,
    )
    cfg = ClsFinetuneConfig(**merge_config(ClsFinetuneConfig, args, flags, dest_to_key=CLS_FLAG_KEYS))
    result = finetune_classification(cfg, overwrite=args.overwrite)
    print((result.out_dir / "results.md").read_text(encoding="utf-8"))
    print(f"results -> {result.out_dir / 'results.md'}, {result.out_dir / 'results.csv'}")
    return 0
