"""``priormim finetune seg``: vessel-segmentation fine-tuning (ViT encoder or U-Net baseline).

``finetune`` has sub-commands; classification fine-tuning (``finetune_cls``) registers its own
when that module is present.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path


def _encoder_arg(value: str) -> Path | None:
    return None if value.lower() in ("none", "scratch", "") else Path(value)


def _json_dict(value: str) -> dict:
    try:
        out = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}); e.g. '{{\"depth\": 4, \"patch_size\": 8}}'") from exc
    if not isinstance(out, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"depth\": 4}'")
    return out


def add_seg_parser(finetune_subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = finetune_subparsers.add_parser(
        "seg",
        help="vessel segmentation: ViT encoder + conv decoder, or U-Net from scratch",
        description="Fine-tune a segmenter once per seed and report test DSC / clDice (mean ± std over seeds). "
        "Data folders hold images/ and masks/ (binary, same names). The best epoch is chosen on a validation "
        "split (--val, or 20% carved from --train with a fixed seed), never on --test. Finished seeds "
        "(seed<k>/metrics.json) are skipped when the command is re-run.",
    )
    data = p.add_argument_group("data")
    data.add_argument("--train", type=Path, help="training folder (images/ + masks/)")
    data.add_argument("--test", type=Path, help="test folder (images/ + masks/)")
    data.add_argument("--val", type=Path, help="validation folder (default: 20%% carved from --train)")
    data.add_argument("--data", type=Path, help="instead of --train/--test: one folder split by a fixed seeded split (split.json)")
    data.add_argument("--split-seed", type=int, default=0, help="seed of the train/val(/test) split (default 0)")
    model = p.add_argument_group("model")
    model.add_argument("--model", choices=("vit", "unet"), default="vit", help="vit (encoder + decoder) or unet (from scratch)")
    model.add_argument("--encoder", type=_encoder_arg, default=None, metavar="PATH|none",
                       help="encoder .safetensors from `priormim export`, or none for random init (default none)")
    model.add_argument("--backbone", default="vit_tiny_patch16_224", help="timm ViT name (the encoder file's metadata overrides it)")
    model.add_argument("--model-kwargs", type=_json_dict, default={}, metavar="JSON",
                       help="timm.create_model overrides for a ViT from scratch, e.g. '{\"depth\": 4}' (an encoder file's own win)")
    model.add_argument("--img-size", type=int, help="model input size (default: vit 224, unet 256)")
    model.add_argument("--unet-base", type=int, help="U-Net channels at full resolution (default 32; strong recipe 16)")
    model.add_argument("--drop-path", type=float, default=0.1, help="ViT stochastic depth (default 0.1)")
    train = p.add_argument_group("training")
    train.add_argument("--out", type=Path, required=True, help="output folder: seed<k>/, results.md, results.csv, split.json")
    train.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed (default: 0)")
    train.add_argument("--recipe", choices=("default", "strong"), default="default",
                       help="preset: 'default' (resize, whole-image or window training, cosine, single threshold) or 'strong' "
                       "(native resolution, 4 random 128-px patches per image per epoch, flips / 90-degree turns / elastic / blur, "
                       "poly schedule, flip-averaged inference, hysteresis picked on val); explicit flags override it")
    train.add_argument("--epochs", type=int, help="default 100 (strong: unet 120, vit 60)")
    train.add_argument("--batch-size", type=int, help="default 4 (strong: 8)")
    train.add_argument("--lr", type=float, help="peak learning rate (default: vit 3e-4, unet 1e-3)")
    train.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: vit 0.05, unet 1e-4)")
    train.add_argument("--layer-decay", type=float, help="ViT layer-wise lr decay (default 0.75 with --encoder, else off)")
    train.add_argument("--warmup-epochs", type=int, help="default 5 (strong: unet 2)")
    train.add_argument("--val-every", type=int, help="epochs between validations (the best epoch is picked among them; default 1, strong 5)")
    train.add_argument("--native", action="store_true", default=None, help="no resize: train and predict at the images' own pixels")
    train.add_argument("--crops-per-image", type=int, help="random --train-crop windows per image per epoch (default 1, strong 4)")
    train.add_argument("--schedule", choices=("cosine", "poly"), help="lr decay after warm-up (default cosine, strong poly)")
    train.add_argument("--augment-level", choices=("basic", "strong"), help="augmentation stack (default basic, strong recipe strong)")
    train.add_argument("--cldice-weight", type=float, help="add this weight x soft clDice to BCE + Dice (default 0)")
    train.add_argument("--no-augment", action="store_true", help="disable the paired augmentation")
    train.add_argument("--train-crop", type=int, help="train on random windows of this size (faster); a ViT also predicts window by window")
    train.add_argument("--label", help="method name in the results table")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    train.add_argument("--resume", action="store_true",
                       help="continue an interrupted seed from seed<k>/last.ckpt (same options required); "
                       "several GPUs: torchrun --nproc-per-node N -m priormim finetune seg ... shares the seeds out")
    train.add_argument("--overwrite", action="store_true",
                       help="retrain from scratch: remove the seeds, split and tables already in --out")
    post = p.add_argument_group("post-processing (stored with the model; predict and evaluate use it)")
    post.add_argument("--fov", choices=("collimator", "none"), default="collimator",
                      help="collimator (default): no vessel outside the X-ray field of view (flat regions touching the frame); none: keep all")
    post.add_argument("--threshold", type=float, default=None,
                      help="probability threshold (default: picked on the validation split from 0.30 to 0.95)")
    post.add_argument("--tta", action="store_true", default=None, help="average the logits over the four flips (strong recipe: on)")
    post.add_argument("--tta-dihedral", action="store_true", default=None,
                      help="average the logits over the eight dihedral views: the four flips of the image and of its transpose "
                      "(2x the cost of --tta; with --rescore, tries it on a finished run)")
    post.add_argument("--hysteresis", action="store_true", default=None,
                      help="pick a dual (low, high) threshold on val next to the single cut (strong recipe: on)")
    post.add_argument("--ensemble", action="store_true", default=None,
                      help="with several --seeds: also score the seeds' mean probability, its post-processing picked on val "
                      "(<out>/ensemble/metrics.json and a line in results.md)")
    post.add_argument("--rescore", action="store_true",
                      help="do not retrain finished seeds: re-pick the post-processing on val and re-score the test set")
    from priormim.cli.finetune_config import add_config_args

    add_config_args(p, presets="seg_unet, seg_vit, seg_strong")
    p.set_defaults(func=run_seg)
    return p


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune a pretrained encoder on a downstream task")
    finetune_subparsers = p.add_subparsers(dest="task", metavar="TASK")
    finetune_subparsers.required = True
    add_seg_parser(finetune_subparsers)
    try:
        from priormim.cli import finetune_cls
    except ModuleNotFoundError as exc:
        if exc.name != "priormim.cli.finetune_cls":
            raise
    else:
        finetune_cls.register_finetune(finetune_subparsers)


# Flags whose config key is spelled otherwise (the rest: the flag's name with _ for -).
SEG_FLAG_KEYS = {"unet_base": "unet_base_channels", "no_augment": "augment"}


def run_seg(args: argparse.Namespace) -> int:
    from priormim.cli.finetune_config import merge_config
    from priormim.training.finetune_seg import SegFinetuneConfig, finetune_segmentation, recipe_config

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    flags = dict(
        recipe=args.recipe, native=args.native, crops_per_image=args.crops_per_image, schedule=args.schedule,
        augment_level=args.augment_level, cldice_weight=args.cldice_weight, tta=args.tta, tta_dihedral=args.tta_dihedral,
        hysteresis=args.hysteresis,
        out=args.out, train=args.train, test=args.test, val=args.val, data=args.data, split_seed=args.split_seed,
        model=args.model, encoder=args.encoder, backbone=args.backbone, model_kwargs=args.model_kwargs, img_size=args.img_size,
        unet_base_channels=args.unet_base, drop_path=args.drop_path, seeds=tuple(args.seeds), epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, layer_decay=args.layer_decay,
        warmup_epochs=args.warmup_epochs, val_every=args.val_every, augment=not args.no_augment, train_crop=args.train_crop, label=args.label, device=args.device,
        fov=args.fov, threshold=args.threshold, ensemble=args.ensemble,
    )
    kwargs = merge_config(SegFinetuneConfig, args, flags, dest_to_key=SEG_FLAG_KEYS)
    cfg = recipe_config(kwargs.pop("recipe", "default"), **kwargs)
    result = finetune_segmentation(cfg, resume=args.resume, rescore=args.rescore, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(result.results_md.read_text(encoding="utf-8"))
        if args.ensemble and result.ensemble is None:
            print("--ensemble: one seed only, nothing to average (pass --seeds 0 1 2)")
        print(f"results -> {result.results_md}, {result.results_csv}")
    return 0
