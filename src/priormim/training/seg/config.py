"""Fine-tuning configuration and the fixed train / val / test splits."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from priormim.errors import UserError
from priormim.models.seg import resolve_encoder_config

log = logging.getLogger(__name__)

CONFIG_FORMAT = "priormim.segmenter"
FOV_METHODS = ("collimator", "none")
SCHEDULES = ("cosine", "poly")
AUGMENT_LEVELS = ("basic", "strong")
# Probability thresholds tried on the validation split (Dice-trained models are often not
# calibrated at 0.5: a sharper or softer boundary moves the best cut). Up to 0.95: the strong
# recipe's U-Net picked the top of the grid on validation in several DCA1 folds (0.7 at 30
# epochs, 0.9 at 120), so the best cut lay above it.
THRESHOLD_GRID = tuple(round(0.3 + 0.05 * i, 2) for i in range(14))

# ----------------------------------------------------------------------------------------------
# Splits


def fixed_split(
    names: Sequence[str], seed: int = 0, fractions: tuple[float, float, float] = (0.6, 0.15, 0.25)
) -> dict[str, list[str]]:
    """A reproducible train / val / test split of ``names``.

    The sorted names are shuffled with ``seed``; val and test get ``round(n * fraction)`` names
    (at least one each), train the rest (at least one). Each list is returned sorted.

    Returns ``{"train": [...], "val": [...], "test": [...]}``.
    """
    names = sorted(set(names))
    n = len(names)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions}")
    total = float(sum(fractions))
    n_val = max(1, round(n * fractions[1] / total))
    n_test = max(1, round(n * fractions[2] / total))
    if n - n_val - n_test < 1:
        raise UserError(f"{n} images cannot be split into train / val / test; at least 3 are needed")
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [names[i] for i in order]
    return {
        "train": sorted(shuffled[n_val + n_test :]),
        "val": sorted(shuffled[:n_val]),
        "test": sorted(shuffled[n_val : n_val + n_test]),
    }


def carve_validation(names: Sequence[str], *, fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split training names into ``(train, val)``: ``round(n * fraction)`` (at least 1) for val."""
    names = sorted(set(names))
    if len(names) < 2:
        raise UserError(f"only {len(names)} training image(s); a validation image is carved from them, so pass at least 2 or --val DIR")
    n_val = min(len(names) - 1, max(1, round(len(names) * fraction)))
    order = np.random.default_rng(seed).permutation(len(names))
    val = sorted(names[i] for i in order[:n_val])
    return sorted(set(names) - set(val)), val


# ----------------------------------------------------------------------------------------------
# Config


@dataclass
class SegFinetuneConfig:
    """Everything a fine-tuning run needs; ``None`` fields get model-dependent defaults (see
    :meth:`resolved`).

    Data: either ``train`` + ``test`` folders (each with ``images/`` + ``masks/``; ``val``
    optional, else carved from ``train``), or one ``data`` folder split by :func:`fixed_split`.
    """

    out: Path
    train: Path | None = None
    test: Path | None = None
    val: Path | None = None
    data: Path | None = None
    split_seed: int = 0
    split_fractions: tuple[float, float, float] = (0.6, 0.15, 0.25)
    val_fraction: float = 0.2
    model: str = "vit"  # "vit" or "unet"
    encoder: Path | None = None  # exported encoder (.safetensors); None = random init
    backbone: str = "vit_tiny_patch16_224"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    decoder_base: int = 16
    unet_base_channels: int = 32
    img_size: int | None = None  # vit 224, unet 256
    seeds: tuple[int, ...] = (0,)
    epochs: int = 100
    batch_size: int = 4
    lr: float | None = None  # vit 3e-4, unet 1e-3
    weight_decay: float | None = None  # vit 0.05, unet 1e-4
    layer_decay: float | None = None  # 0.75 with a pretrained encoder, else off
    drop_path: float = 0.1
    warmup_epochs: int = 5
    min_lr: float = 1e-6
    val_every: int = 1  # epochs between validations (the last epoch is always validated)
    augment: bool = True
    train_crop: int | None = None  # train on random windows of this size (default: whole image); a ViT also predicts by windows
    fov: str = "collimator"  # "collimator": no vessel outside the X-ray field of view; "none": keep every prediction
    threshold: float | None = None  # probability threshold; None: picked on the validation split
    device: str = "auto"
    amp: str = "auto"  # training autocast (priormim.training.loop.autocast_context): auto = bf16 on CUDA, off on the CPU | bf16 | fp16 | off
    progress: bool = True  # tqdm bars on stderr
    label: str | None = None  # method name in tables; default from model / encoder
    # Recipe options (see priormim.training.seg.recipe; the defaults are the historical recipe).
    recipe: str = "default"  # the preset these values came from (recorded, see recipe_config)
    native: bool = False  # no resize: the model sees the images' own pixels (padded, cropped back)
    crops_per_image: int = 1  # random training windows per image per epoch (with train_crop)
    schedule: str = "cosine"  # "cosine" or "poly" (power 0.9), both with linear warm-up
    augment_level: str = "basic"  # "basic" (resized crop, flips, small rotation, intensity) or "strong" (+ 90-degree rotations, elastic, blur)
    cldice_weight: float = 0.0  # weight of the soft-clDice term added to BCE + Dice
    tta: bool = False  # average the logits over the four flips at inference
    tta_dihedral: bool = False  # average over all eight dihedral views (flips of the image and its transpose)
    hysteresis: bool = False  # pick a dual (low, high) threshold on val instead of a single cut
    ensemble: bool = False  # also score the seeds' mean probability (post-processing re-picked on val)

    def resolved(self) -> SegFinetuneConfig:
        """A copy with defaults filled in and inputs checked (UserError on bad values)."""
        if self.model not in ("vit", "unet"):
            raise UserError(f"unknown model {self.model!r}; use 'vit' or 'unet'")
        if self.data is None and (self.train is None or self.test is None):
            raise UserError("pass --train DIR and --test DIR, or --data DIR to split one folder")
        if self.data is not None and (self.train is not None or self.test is not None or self.val is not None):
            raise UserError("pass either --data DIR or --train/--test (and --val) folders, not both")
        if self.model == "unet" and self.encoder is not None:
            raise UserError("--model unet trains from scratch; drop --encoder or use --model vit", self.encoder)
        if self.epochs < 1 or self.batch_size < 1 or self.val_every < 1:
            raise UserError(f"epochs, batch size and --val-every must be >= 1, got {self.epochs}, {self.batch_size}, {self.val_every}")
        if not self.seeds:
            raise UserError("pass at least one seed")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise UserError(f"amp must be auto, bf16, fp16 or off, got {self.amp!r}")
        if self.fov not in FOV_METHODS:
            raise UserError(f"unknown --fov {self.fov!r}; use {' or '.join(FOV_METHODS)}")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise UserError(f"--threshold is a probability strictly between 0 and 1, got {self.threshold}")
        for flag, value, lo in (("--img-size", self.img_size, 16), ("--warmup-epochs", self.warmup_epochs, 0),
                                ("--unet-base", self.unet_base_channels, 1)):
            if value is not None and value < lo:
                raise UserError(f"{flag} must be >= {lo}, got {value}")
        for flag, value, lo, lo_open, hi in (("--lr", self.lr, 0, True, None), ("--weight-decay", self.weight_decay, 0, False, None),
                                             ("--layer-decay", self.layer_decay, 0, True, 1), ("--drop-path", self.drop_path, 0, False, 0.999999)):
            if value is None:
                continue
            if not (math.isfinite(value) and (value > lo if lo_open else value >= lo) and (hi is None or value <= hi)):
                raise UserError(f"{flag} must be a finite number {'>' if lo_open else '>='} {lo}"
                                f"{f' and <= {hi}' if hi else ''}, got {value}")
        for a, b in (("val", "test"), ("val", "train"), ("train", "test")):
            pa, pb = getattr(self, a), getattr(self, b)
            if pa is not None and pb is not None and Path(pa).resolve() == Path(pb).resolve():
                raise UserError(f"--{a} and --{b} are the same folder; the scores would be biased. Pass separate "
                                f"folders (or omit --val to carve it from --train)", pa)
        vit = self.model == "vit"
        meta = None
        if vit and self.encoder is not None:
            _, _, meta = resolve_encoder_config(self.backbone, encoder_path=self.encoder, model_kwargs=self.model_kwargs)
        encoder_size = _encoder_img_size(meta)
        # An encoder is fine-tuned at the size it was pretrained at unless --img-size says otherwise.
        img_size = self.img_size or encoder_size or (224 if vit else 256)
        if encoder_size and img_size != encoder_size:
            log.warning("%s was pretrained at %d px and is fine-tuned at %d px: its position embeddings are "
                        "resampled x%.2g; pass --img-size %d to keep the pretraining size", self.encoder, encoder_size,
                        img_size, img_size / encoder_size, encoder_size)
        if self.train_crop is not None and not 16 <= self.train_crop <= (10**9 if self.native else img_size):
            raise UserError(f"--train-crop must be between 16 px and --img-size ({img_size}), got {self.train_crop}")
        if self.native and vit and self.train_crop is None:
            raise UserError("--native with --model vit needs --train-crop: the ViT is built for that window and predicts window by window")
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown --schedule {self.schedule!r}; use {' or '.join(SCHEDULES)}")
        if self.augment_level not in AUGMENT_LEVELS:
            raise UserError(f"unknown augmentation level {self.augment_level!r}; use {' or '.join(AUGMENT_LEVELS)}")
        if self.crops_per_image < 1 or not (math.isfinite(self.cldice_weight) and self.cldice_weight >= 0):
            raise UserError(f"--crops-per-image must be >= 1 and --cldice-weight >= 0, got {self.crops_per_image}, {self.cldice_weight}")
        encoder_method = None
        if meta is not None:
            encoder_method = meta.method or Path(self.encoder).stem
        label = self.label or (
            "U-Net (scratch)" if not vit else f"ViT ({encoder_method})" if encoder_method else "ViT (scratch)"
        )
        return replace(
            self,
            out=Path(self.out),
            train=None if self.train is None else Path(self.train),
            test=None if self.test is None else Path(self.test),
            val=None if self.val is None else Path(self.val),
            data=None if self.data is None else Path(self.data),
            encoder=None if self.encoder is None else Path(self.encoder),
            img_size=None if self.native else int(img_size),  # None: native resolution
            seeds=tuple(int(s) for s in self.seeds),
            lr=self.lr if self.lr is not None else (3e-4 if vit else 1e-3),
            weight_decay=self.weight_decay if self.weight_decay is not None else (0.05 if vit else 1e-4),
            # Layer decay needs ViT blocks; a U-Net has none.
            layer_decay=None if not vit else self.layer_decay if self.layer_decay is not None else (0.75 if self.encoder is not None else None),
            label=label,
        )

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
        return out

def _encoder_img_size(meta: Any) -> int | None:
    """The square input size an exported encoder was pretrained at (its metadata), or None."""
    size = (meta.model_kwargs.get("img_size") if meta is not None else None)
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    return int(size) if isinstance(size, (int, float)) and not isinstance(size, bool) else None
