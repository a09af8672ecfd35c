"""``priormim train-segmentor``: the frozen vessel segmentor for VasoMIM's consistency loss."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-segmentor",
        help="train the consistency segmentor on vessel-prior pseudo-labels",
        description="Trains the consistency segmentor on the vessel masks of `priormim prior vessel`; "
        "computes missing priors first. Default (--recipe official, VasoMIM's): UNeXt-S, 200 epochs, "
        "Adam 1e-3 with poly decay, 0.5 BCE + 0.5 Dice, crops of scale 0.2-1, horizontal flips. "
        "--recipe priormim: 8-channel U-Net, 30 epochs, AdamW + cosine, BCE + Dice, crops 0.3-1.",
    )
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--priors", help="vessel-prior cache (default: <images>/../priors/vessel)")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--recipe", choices=("official", "priormim"), default="official",
                   help="training recipe whose values fill every option not given (default: official)")
    p.add_argument("--arch", choices=("unext_s", "unext", "unet"), help="network (default: the recipe's)")
    p.add_argument("--epochs", type=int, help="epochs (default: the recipe's, 200 or 30)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--base-channels", type=int, default=8, help="U-Net width (--arch unet only)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", choices=("official", "priormim"), default="official",
                   help="vessel-prior recipe for the pseudo-labels when they are computed here (default official)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from priormim.io import list_images
    from priormim.priors.cache import ensure_vessel_priors, load_prior, prior_path
    from priormim.training.distributed import resolve_device
    from priormim.training.pretrain import default_prior_dir
    from priormim.training.segmentor import SegmentorTrainConfig, train_segmentor

    from priormim.errors import UserError
    from priormim.outputs import claim_output_file, refuse_input_overlap

    for flag, value in (("--epochs", args.epochs), ("--img-size", args.img_size), ("--base-channels", args.base_channels),
                        ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if args.img_size % 4:  # the U-Net halves the size per level (3 levels by default)
        raise UserError(f"--img-size must be a multiple of 4 (the U-Net downsamples it), got {args.img_size}")
    images = Path(args.images)
    paths = list_images(images)
    out = Path(args.out)
    refuse_input_overlap(out, [("--images", images), ("--priors", args.priors)], around=False)
    claim_output_file(out, overwrite=args.overwrite)
    prior_dir = Path(args.priors) if args.priors else default_prior_dir(images, out.parent, "vessel")
    ensure_vessel_priors(images, prior_dir, preset=args.preset)
    usable = [p for p in paths if prior_path(prior_dir, p).exists()]
    cfg = SegmentorTrainConfig(recipe=args.recipe, arch=args.arch, epochs=args.epochs, lr=args.lr,
                               img_size=args.img_size, base_channels=args.base_channels,
                               batch_size=args.batch_size, seed=args.seed)
    path = train_segmentor(cfg, paths=usable, prior_loader=lambda p: load_prior(prior_dir, p),
                           out=out, device=resolve_device(args.device))
    print(f"{cfg.arch} segmentor ({cfg.recipe} recipe, {cfg.epochs} epochs) trained on {len(usable)} image(s) -> {path}")
    return 0
