"""Vessel-segmentation fine-tuning (ViT encoder + conv decoder, or U-Net from scratch).

The protocol, the same for every method so that comparisons are fair:

* images of any size are resized (bilinear, antialiased) to ``img_size x img_size`` for the
  model, masks with nearest neighbour; logits are mapped back to each image's original size
  (bilinear) and thresholded before scoring, so metrics are at the original resolution;
* post-processing (:class:`PostProcess`, stored in ``config.json``): predictions outside the
  X-ray field of view (flat collimator regions touching the frame, as
  :func:`priormim.priors.vessel.collimator_mask` finds them, the same exclusion the
  vesselness baseline uses) are background, and the probability threshold is picked on the
  validation split (by Dice, from 0.3 to 0.7) once the best epoch is chosen;
* with ``train_crop`` the model trains on random ``train_crop`` windows of that image; a
  U-Net then predicts the whole image at once, a ViT (whose position embeddings are tied to
  its input size) predicts it window by window with half-window overlap and averages the
  logits (:func:`sliding_window_logits`);
* grey-level normalisation per data set: the encoder file's stats, else the training set's;
* paired augmentation: one random geometry (resized crop, flips, small rotation) for image and
  mask, intensity jitter on the image only;
* BCE + soft Dice, AdamW (layer-wise lr decay for a pretrained ViT), cosine schedule with
  warm-up; the best epoch is picked by Dice on a validation split (carved from the training
  folder with a fixed seed, or ``--val``), never the test set;
* one run per seed under ``<out>/seed<k>/`` (``metrics.json``, ``model.safetensors``,
  ``config.json``); a seed whose ``metrics.json`` exists is skipped on re-run; ``results.md``
  and ``results.csv`` give mean ± std over seeds.

Everything is plain functions usable without the CLI: :func:`finetune_segmentation`,
:func:`run_vesselness_baseline`, :func:`load_segmenter`, :func:`predict_masks`, :func:`predict_logits`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from priormim.errors import UserError
from priormim.training.distributed import resolve_device
from priormim.io import atomic_write_bytes, read_gray, read_mask
from priormim.losses.segmentation import bce_dice_loss
from priormim.models.seg import NormStats, ViTSegmenter, create_vit_encoder, resolve_encoder_config
from priormim.models.unet import UNet
from priormim.training.results import (
    ResultRow,
    aggregate_runs,
    prediction_notes,
    read_metrics,
    seen_in_training,
    write_results_table,
)

log = logging.getLogger(__name__)

CONFIG_FORMAT = "priormim.segmenter"
FOV_METHODS = ("collimator", "none")
# Probability thresholds tried on the validation split (Dice-trained models are often not
# calibrated at 0.5: a sharper or softer boundary moves the best cut).
THRESHOLD_GRID = tuple(round(0.3 + 0.05 * i, 2) for i in range(9))


@dataclass(frozen=True)
class PostProcess:
    """How a segmenter's logits become a mask (stored under ``"postprocess"`` in ``config.json``).

    ``threshold``: probability cut (``sigmoid(logit) > threshold``). ``fov``: ``"collimator"``
    sets predictions outside the X-ray field of view to background: the flat regions touching
    the image frame (collimator, shutters) grown by ``fov_margin`` px, found by
    :func:`priormim.priors.vessel.collimator_mask` on the image at its original size. Hand-drawn
    vessel masks never reach into the collimator, while every learned model tends to mark its
    edge (a dark step edge looks like a vessel wall); the vesselness baseline drops the same
    region. ``"none"`` keeps every prediction.
    """

    threshold: float = 0.5
    fov: str = "none"
    fov_margin: int = 8

    @classmethod
    def from_config(cls, model_config: dict[str, Any]) -> PostProcess:
        """From a ``config.json`` dict; configs written before post-processing existed get the
        old behaviour (threshold 0.5, no field-of-view mask)."""
        d = model_config.get("postprocess") or {}
        return cls(threshold=float(d.get("threshold", 0.5)), fov=str(d.get("fov", "none")), fov_margin=int(d.get("fov_margin", 8)))

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "fov": self.fov, "fov_margin": self.fov_margin}

    def outside_fov(self, image: np.ndarray) -> np.ndarray | None:
        """``bool [H, W]``: True where predictions are dropped, or None without a FOV mask."""
        if self.fov == "none":
            return None
        from priormim.priors.vessel import collimator_mask

        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
        return collimator_mask(x, margin=self.fov_margin)[0, 0].numpy()

    def apply(self, logits: np.ndarray, image: np.ndarray, *, outside: np.ndarray | None = None) -> np.ndarray:
        """``float [H, W]`` logits of ``image`` -> ``bool [H, W]`` mask. ``outside``: the
        image's :meth:`outside_fov`, when the caller already has it (it depends on the image
        only, so validation computes it once per run, not once per epoch or threshold)."""
        mask = logits > math.log(self.threshold / (1 - self.threshold))  # sigmoid(l) > t
        if outside is None:
            outside = self.outside_fov(image)
        return mask if outside is None else mask & ~outside


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
    label: str | None = None  # method name in tables; default from model / encoder

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
        if self.train_crop is not None and not 16 <= self.train_crop <= img_size:
            raise UserError(f"--train-crop must be between 16 px and --img-size ({img_size}), got {self.train_crop}")
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
            img_size=int(img_size),
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


# ----------------------------------------------------------------------------------------------
# Data


@dataclass
class SegSample:
    """One image ``float32 [H, W]`` in [0, 1] and its mask ``bool [H, W]``."""

    name: str
    image: np.ndarray
    mask: np.ndarray


def read_label_mask(path: str | Path, *, max_ambiguous: float = 0.01) -> np.ndarray:
    """Read a vessel mask as ``bool [H, W]``, tolerating a few stray grey values.

    Real annotation files are sometimes almost binary (DCA1's ``train_29.png`` has 26 pixels
    with values like 3 or 230 among 0/255); those are thresholded at half range with a logged
    warning. More than ``max_ambiguous`` of the pixels strictly between 10% and 90% of the range
    means the file is not a mask (UserError).
    """
    arr = read_gray(path)
    # Relative to the file's own two values (0/1, 0/100 and 0/255 masks all read alike).
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.full(arr.shape, hi > 0, dtype=bool)
    arr = (arr - lo) / (hi - lo)
    ambiguous = int(((arr > 0.1) & (arr < 0.9)).sum())
    if ambiguous > max_ambiguous * arr.size:
        return read_mask(path)  # raises the standard "not binary" UserError
    values = np.unique(arr)
    if values.size > 2:
        log.warning("%s: mask has %d distinct values; thresholded at half range (%d pixels were not 0 or max)",
                    path, values.size, int(((arr > 0) & (arr < 1)).sum()))
    return arr > 0.5


def load_samples(pairs: Sequence[Any], skipped: list[tuple[str, str]] | None = None) -> list[SegSample]:
    """Read ``SegPair``-like objects (``.image``, ``.mask`` paths, ``.name``) into memory.

    A pair whose image or mask file cannot be decoded (corrupt, truncated, not an image) is
    logged and left out; with a ``skipped`` list, ``(name, reason)`` is appended to it. A mask
    that is readable but wrong (not binary, another size than its image) is a UserError: that
    is a data-preparation mistake to fix, not a damaged file.
    """
    out = []
    for p in pairs:
        try:
            image = read_gray(p.image)
            read_gray(p.mask)
        except UserError as exc:
            log.warning("skipped %s: %s", p.name, exc)
            if skipped is not None:
                skipped.append((p.name, str(exc)))
            continue
        mask = read_label_mask(p.mask)
        if image.shape != mask.shape:
            raise UserError(f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is {image.shape[1]}x{image.shape[0]}; resize the mask", p.mask)
        out.append(SegSample(name=p.name, image=image, mask=mask))
    return out


def compute_norm_stats(images: Sequence[np.ndarray]) -> NormStats:
    """Mean and std over all pixels of ``images`` (each ``[H, W]`` in [0, 1])."""
    total = sum(im.size for im in images)
    mean = sum(float(im.sum(dtype=np.float64)) for im in images) / total
    var = sum(float(((im.astype(np.float64) - mean) ** 2).sum()) for im in images) / total
    return NormStats(mean=mean, std=max(math.sqrt(var), 1e-3))


def resize_image(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """``[B, 1, H, W]`` float -> ``[B, 1, *size]`` bilinear (antialiased when shrinking)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def resize_mask(m: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """``[B, 1, H, W]`` bool -> ``[B, 1, *size]`` bool, nearest neighbour."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(m.shape[-2:]) == size:
        return m
    return F.interpolate(m.float(), size=size, mode="nearest-exact") > 0.5


def stack_resized(samples: Sequence[SegSample], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``float32 [N, 1, size, size]`` and masks ``bool [N, 1, size, size]``."""
    images = torch.cat([resize_image(torch.from_numpy(s.image)[None, None], size) for s in samples])
    masks = torch.cat([resize_mask(torch.from_numpy(s.mask)[None, None], size) for s in samples])
    return images, masks


@dataclass
class AugmentConfig:
    """Ranges of the random paired augmentation."""

    crop_scale: tuple[float, float] = (0.5, 1.0)  # area fraction of the resized crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    max_rotation_deg: float = 15.0
    hflip: bool = True
    vflip: bool = True
    gamma: tuple[float, float] = (0.7, 1.5)
    contrast: tuple[float, float] = (0.8, 1.2)
    brightness: float = 0.1
    noise_std: float = 0.02


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def paired_augment(
    image: torch.Tensor,
    mask: torch.Tensor,
    *,
    generator: torch.Generator,
    cfg: AugmentConfig = AugmentConfig(),
    out_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random geometry shared by image and mask, then intensity jitter on the image.

    Args:
        image: ``float [B, 1, S, S]`` in [0, 1].
        mask: ``bool [B, 1, S, S]``.
        generator: CPU generator (reproducible per seed).
        out_size: output side ``s <= S`` (default ``S``); a smaller size takes random
            ``s``-pixel windows at about the input's pixel scale (patch training, cheaper).

    Returns ``(image [B, 1, s, s], mask [B, 1, s, s])``; the geometry is one affine map per
    sample (resized crop, flips, rotation) applied with bilinear sampling to the image and
    nearest to the mask.
    """
    b, _, h, w = image.shape
    out_h, out_w = (h, w) if out_size is None else (out_size, out_size)
    g = generator
    # Resized crop in normalised coordinates: half-widths (sw, sh) and centre (tx, ty).
    area = _uniform(b, *cfg.crop_scale, g)
    log_r = _uniform(b, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), g)
    sw = (torch.sqrt(area * torch.exp(log_r)) * out_w / w).clamp(max=1.0)
    sh = (torch.sqrt(area / torch.exp(log_r)) * out_h / h).clamp(max=1.0)
    tx = (torch.rand(b, generator=g) * 2 - 1) * (1 - sw)
    ty = (torch.rand(b, generator=g) * 2 - 1) * (1 - sh)
    angle = torch.deg2rad(_uniform(b, -cfg.max_rotation_deg, cfg.max_rotation_deg, g))
    fx = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones(b)
    fy = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0) if cfg.vflip else torch.ones(b)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # input = T + S @ R @ Flip @ output  (rotation in the output's square pixel frame)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = sw * cos * fx
    theta[:, 0, 1] = -sw * sin * fy
    theta[:, 1, 0] = sh * sin * fx
    theta[:, 1, 1] = sh * cos * fy
    theta[:, 0, 2], theta[:, 1, 2] = tx, ty
    grid = F.affine_grid(theta.to(image.dtype), [b, 1, out_h, out_w], align_corners=False).to(image.device)
    image = F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    mask = F.grid_sample(mask.to(image.dtype), grid, mode="nearest", padding_mode="reflection", align_corners=False) > 0.5

    # Intensity: gamma, contrast around the image mean, brightness, noise (image only).
    shape = (b, 1, 1, 1)
    gamma = torch.exp(_uniform(b, math.log(cfg.gamma[0]), math.log(cfg.gamma[1]), g)).view(shape).to(image)
    contrast = _uniform(b, *cfg.contrast, g).view(shape).to(image)
    bright = _uniform(b, -cfg.brightness, cfg.brightness, g).view(shape).to(image)
    image = image.clamp(0, 1) ** gamma
    mean = image.mean(dim=(2, 3), keepdim=True)
    image = (image - mean) * contrast + mean + bright
    if cfg.noise_std > 0:
        sigma = (torch.rand(b, generator=g) * cfg.noise_std).view(shape).to(image)
        image = image + sigma * torch.randn(image.shape, generator=g).to(image)
    return image.clamp(0, 1), mask


# ----------------------------------------------------------------------------------------------
# Models


def build_segmenter(model_config: dict[str, Any]) -> nn.Module:
    """Rebuild a segmenter (random weights) from a ``config.json`` dict (see :func:`model_config_for`)."""
    arch = model_config.get("arch")
    if arch == "unet":
        u = model_config["unet"]
        return UNet(base_channels=int(u["base_channels"]), levels=int(u.get("levels", 4)))
    if arch == "vit":
        v = model_config["vit"]
        encoder, _ = create_vit_encoder(
            v["name"], encoder_path=None, img_size=int(model_config.get("window") or model_config["img_size"]),
            drop_path_rate=float(v.get("drop_path", 0.0)),
            model_kwargs=dict(v["kwargs"]),
        )
        return ViTSegmenter(encoder, decoder_base=int(v.get("decoder_base", 16)))
    raise ValueError(f"unknown segmenter arch {arch!r}")


def create_segmenter(cfg: SegFinetuneConfig) -> tuple[nn.Module, dict[str, Any], NormStats | None]:
    """Model for a resolved config, its ``config.json`` dict (norm filled in later) and the
    encoder file's norm stats (None without a file)."""
    if cfg.model == "unet":
        model = UNet(base_channels=cfg.unet_base_channels)
        return model, {"format": CONFIG_FORMAT, "version": 1, "arch": "unet", "img_size": cfg.img_size,
                       "unet": {"base_channels": cfg.unet_base_channels, "levels": 4}}, None
    kwargs = {"dynamic_img_size": True, **cfg.model_kwargs}  # any input size at inference
    name, kwargs, _ = resolve_encoder_config(cfg.backbone, encoder_path=cfg.encoder, model_kwargs=kwargs)
    # A ViT trained on windows is built for the window: its position embeddings then mean the
    # same thing in training and in (windowed) inference.
    window = cfg.train_crop
    encoder, norm = create_vit_encoder(
        name, encoder_path=cfg.encoder, img_size=window or cfg.img_size, drop_path_rate=cfg.drop_path, model_kwargs=kwargs
    )
    model = ViTSegmenter(encoder, decoder_base=cfg.decoder_base)
    config = {"format": CONFIG_FORMAT, "version": 1, "arch": "vit", "img_size": cfg.img_size, "window": window,
              "vit": {"name": name, "kwargs": kwargs, "decoder_base": cfg.decoder_base}}
    return model, config, norm


def save_segmenter(model: nn.Module, model_config: dict[str, Any], run_dir: Path) -> None:
    """Write ``model.safetensors`` and ``config.json`` (atomically) into ``run_dir``."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(run_dir / "model.safetensors", save(state, metadata={"format": "pt", "priormim_config": json.dumps(model_config)}))
    atomic_write_bytes(run_dir / "config.json", json.dumps(model_config, indent=2).encode("utf-8"))


def _pick_model_dir(path: Path) -> Path:
    """``path`` itself if it holds config.json, else the seed folder with the best val Dice."""
    if not path.is_dir():
        raise UserError("does not exist; pass the --out folder of `priormim finetune seg` (or one of its seed<k>/)", path)
    if (path / "config.json").is_file():
        return path
    seeds = sorted(p for p in path.glob("seed*") if (p / "config.json").is_file() and (p / "model.safetensors").is_file())
    if not seeds:
        raise UserError("holds no config.json + model.safetensors (nor seed*/ folders with them); pass a finished fine-tuning run", path)

    def val_dice(p: Path) -> float:
        try:
            return float(json.loads((p / "metrics.json").read_text())["best_val_dice"])
        except (OSError, ValueError, KeyError, TypeError):
            return -1.0

    best = max(seeds, key=val_dice)
    if len(seeds) > 1:
        log.info("%s: using %s (best validation Dice of %d seeds)", path, best.name, len(seeds))
    return best


def load_segmenter(run_dir: str | Path, *, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a saved segmenter (eval mode) and its config from a run folder.

    ``run_dir`` is a seed folder (``config.json`` + ``model.safetensors``) or a fine-tuning
    output folder, in which case the seed with the best validation Dice is used.
    """
    from safetensors.torch import load_file

    run_dir = _pick_model_dir(Path(run_dir))
    cfg_path, weights = run_dir / "config.json", run_dir / "model.safetensors"
    try:
        model_config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read the model config ({exc}); re-run the fine-tuning", cfg_path) from exc
    if not isinstance(model_config, dict) or model_config.get("format") != CONFIG_FORMAT:
        raise UserError(f"is not a priormim segmenter config (format {CONFIG_FORMAT!r} expected)", cfg_path)
    if not weights.is_file():
        raise UserError("model weights are missing; re-run the fine-tuning", weights)
    model = build_segmenter(model_config)
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except Exception as exc:
        raise UserError(f"weights do not match config.json ({type(exc).__name__}); re-run the fine-tuning", weights) from exc
    return model.to(device).eval(), model_config


def _autocast(device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def sliding_window_logits(model: nn.Module, x: torch.Tensor, *, window: int, batch_size: int = 16) -> torch.Tensor:
    """Logits of ``model`` over ``[B, C, H, W]`` ``x`` from ``window x window`` tiles.

    Tiles start every ``window // 2`` px (the image is replicate-padded on the right and bottom
    so that they cover it exactly); overlapping logits are averaged. Extraction and
    re-assembly are ``F.unfold`` / ``F.fold``, so there is no Python loop over tiles; the model
    runs on ``batch_size`` tiles at a time. Returns ``float32 [B, 1, H, W]``.
    """
    b, c, h, w = x.shape
    if window >= max(h, w):
        return model(x).float()
    stride = max(1, window // 2)
    # Smallest padded size >= the image that the tiles cover exactly: window + k * stride.
    hp, wp = (window + math.ceil(max(0, n - window) / stride) * stride for n in (h, w))
    xp = F.pad(x, (0, wp - w, 0, hp - h), mode="replicate") if (hp, wp) != (h, w) else x
    cols = F.unfold(xp, kernel_size=window, stride=stride)  # [B, C*window*window, L]
    n = cols.shape[-1]
    tiles = cols.transpose(1, 2).reshape(b * n, c, window, window)
    logits = torch.cat([model(tiles[i : i + batch_size]).float() for i in range(0, len(tiles), batch_size)])
    logits = logits.reshape(b, n, window * window).transpose(1, 2)
    summed = F.fold(logits, output_size=(hp, wp), kernel_size=window, stride=stride)
    count = F.fold(torch.ones_like(logits[:1]), output_size=(hp, wp), kernel_size=window, stride=stride)
    return (summed / count)[..., :h, :w]


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: Sequence[np.ndarray],
    *,
    img_size: int,
    norm: NormStats,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    window: int | None = None,
) -> list[np.ndarray]:
    """Vessel logits at each image's original size.

    Each ``[H, W]`` image in [0, 1] is resized to ``img_size`` (bilinear), normalised, run
    through ``model`` (whole, or with ``window`` tile by tile, see
    :func:`sliding_window_logits`); the ``[img_size, img_size]`` logits are resized back to
    ``[H, W]`` (bilinear). Returns ``float32 [H, W]`` arrays (``> 0`` means vessel).
    """
    model.eval()
    device = torch.device(device)
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        x = torch.cat([resize_image(torch.from_numpy(np.ascontiguousarray(im, dtype=np.float32))[None, None], img_size) for im in chunk])
        x = ((x - norm.mean) / norm.std).to(device)
        with _autocast(device):
            if window:
                logits = sliding_window_logits(model, x, window=window, batch_size=4 * batch_size).cpu()
            else:
                logits = model(x).float().cpu()
        if not bool(torch.isfinite(logits).all()):
            raise UserError("the model's outputs are NaN or infinite: training diverged (lower --lr) or the "
                            "weights are damaged; a DSC from them would be meaningless")
        for lg, im in zip(logits, chunk):
            out.append(F.interpolate(lg[None], size=im.shape, mode="bilinear", align_corners=False)[0, 0].numpy())
    return out


def predict_masks(
    model: nn.Module,
    images: Sequence[np.ndarray],
    model_config: dict[str, Any],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
) -> list[np.ndarray]:
    """Vessel masks ``bool [H, W]`` of ``[H, W]`` images in [0, 1], at their original size, as a
    saved segmenter's ``config.json`` prescribes (input size, normalisation, window,
    :class:`PostProcess`). The one path from a saved model to a mask: predict, evaluate, the
    bench report and the figures all use it."""
    logits = predict_logits(model, images, img_size=int(model_config["img_size"]), norm=NormStats(**model_config["norm"]),
                            device=device, batch_size=batch_size, window=model_config.get("window"))
    post = PostProcess.from_config(model_config)
    return [post.apply(lg, im) for lg, im in zip(logits, images)]


def score_masks(masks: Sequence[np.ndarray], samples: Sequence[SegSample]) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """``(summary, per_image)`` of predicted masks against the samples' ground truth (see
    :class:`priormim.evaluation.metrics.SegmentationMeter`)."""
    from priormim.evaluation.metrics import SegmentationMeter

    meter = SegmentationMeter()
    for pred, s in zip(masks, samples):
        meter.update(pred[None], s.mask[None], names=[s.name])
    return meter.summary(), meter.per_image()


def evaluate_samples(
    model: nn.Module,
    samples: Sequence[SegSample],
    *,
    img_size: int,
    norm: NormStats,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    window: int | None = None,
    post: PostProcess = PostProcess(),
) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Score ``model`` on ``samples`` at original resolution: ``(summary, per_image)`` as from
    :class:`priormim.evaluation.metrics.SegmentationMeter`."""
    logits = predict_logits(model, [s.image for s in samples], img_size=img_size, norm=norm, device=device, batch_size=batch_size,
                            window=window)
    return score_masks([post.apply(lg, s.image) for lg, s in zip(logits, samples)], samples)


def val_dice(model: nn.Module, samples: Sequence[SegSample], *, post: PostProcess = PostProcess(),
             outside: Sequence[np.ndarray | None] | None = None, **kwargs: Any) -> float:
    """Mean Dice at original resolution (no clDice: cheap enough for every epoch). ``outside``:
    the samples' precomputed :meth:`PostProcess.outside_fov` masks, if any."""
    from priormim.evaluation.metrics import dice_score

    logits = predict_logits(model, [s.image for s in samples], **kwargs)
    outside = outside if outside is not None else [None] * len(samples)
    return float(np.mean([dice_score(post.apply(lg, s.image, outside=out), s.mask)[0]
                          for lg, out, s in zip(logits, outside, samples)]))


def pick_threshold(
    model: nn.Module, samples: Sequence[SegSample], *, post: PostProcess, grid: Sequence[float] = THRESHOLD_GRID, **kwargs: Any
) -> tuple[float, dict[float, float]]:
    """The probability threshold from ``grid`` with the best mean Dice on ``samples`` (the
    validation split; ties go to the threshold nearest 0.5). ``kwargs`` go to
    :func:`predict_logits`. Returns ``(threshold, {threshold: mean Dice})``."""
    from priormim.evaluation.metrics import dice_score

    logits = predict_logits(model, [s.image for s in samples], **kwargs)
    outside = [post.outside_fov(s.image) for s in samples]  # once, not once per threshold
    scores = {}
    for t in grid:
        cut = replace(post, threshold=float(t))
        scores[float(t)] = float(np.mean([
            dice_score(cut.apply(lg, s.image, outside=out), s.mask)[0] for lg, out, s in zip(logits, outside, samples)
        ]))
    best = max(scores, key=lambda t: (round(scores[t], 9), -abs(t - 0.5)))
    return best, scores


# ----------------------------------------------------------------------------------------------
# Training


def make_optimizer(model: nn.Module, *, lr: float, weight_decay: float, layer_decay: float | None) -> torch.optim.Optimizer:
    """AdamW via timm; with ``layer_decay`` the lr of ViT layer ``i`` is scaled by
    ``layer_decay ** (top - i)`` (the decoder sits in the top layer, see ViTSegmenter.group_matcher)."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=weight_decay, layer_decay=layer_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int, min_lr: float):
    """Per-step cosine schedule with linear warm-up (timm); call ``step_update(step)`` after each step."""
    from timm.scheduler import CosineLRScheduler

    base = max(g["lr"] for g in optimizer.param_groups)
    return CosineLRScheduler(
        optimizer,
        t_initial=max(1, total_steps),
        lr_min=min(min_lr, base),
        warmup_t=warmup_steps,
        warmup_lr_init=min(1e-6, base),
        warmup_prefix=True,
        t_in_epochs=False,
    )


@dataclass
class SegData:
    train: list[SegSample]
    val: list[SegSample]
    test: list[SegSample]
    split: dict[str, Any]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason): unreadable pairs left out


def prepare_data(cfg: SegFinetuneConfig) -> SegData:
    """Read the folders and make the fixed train / val / test split (``cfg`` resolved)."""
    from priormim.data.readers import read_segmentation_folder

    # Sizes are checked on the decoded pixels (load_samples), so that a corrupt file is skipped
    # and counted there instead of failing the header check here.
    if cfg.data is not None:
        pairs = read_segmentation_folder(cfg.data, check_sizes=False, check_binary=False)
        split = fixed_split([p.name for p in pairs], seed=cfg.split_seed, fractions=cfg.split_fractions)
        by_name = {p.name: p for p in pairs}
        sets = {k: [by_name[n] for n in v] for k, v in split.items()}
        source = {"data": str(cfg.data), "split_seed": cfg.split_seed, "fractions": list(cfg.split_fractions)}
    else:
        train_pairs = read_segmentation_folder(cfg.train, check_sizes=False, check_binary=False)
        test_pairs = read_segmentation_folder(cfg.test, check_sizes=False, check_binary=False)
        if cfg.val is not None:
            val_pairs = read_segmentation_folder(cfg.val, check_sizes=False, check_binary=False)
        else:
            tr, va = carve_validation([p.name for p in train_pairs], fraction=cfg.val_fraction, seed=cfg.split_seed)
            val_pairs = [p for p in train_pairs if p.name in set(va)]
            train_pairs = [p for p in train_pairs if p.name in set(tr)]
        sets = {"train": train_pairs, "val": val_pairs, "test": test_pairs}
        source = {"train": str(cfg.train), "val": str(cfg.val) if cfg.val else f"carved from train ({cfg.val_fraction:.0%}, seed {cfg.split_seed})",
                  "test": str(cfg.test)}
        overlap = {p.image.resolve() for p in sets["train"]} & {p.image.resolve() for p in sets["test"]}
        if overlap:
            raise UserError(f"{len(overlap)} test images are also training images; pass separate folders", cfg.test)
    split = {"source": source, **{k: [p.name for p in v] for k, v in sets.items()}}
    skipped: list[tuple[str, str]] = []
    loaded = {k: load_samples(v, skipped) for k, v in sets.items()}
    for k, where in (("train", cfg.train or cfg.data), ("val", cfg.val or cfg.train or cfg.data), ("test", cfg.test or cfg.data)):
        if not loaded[k]:
            raise UserError(f"no readable {k} image/mask pair is left ({len(sets[k])} listed, all unreadable); "
                            "check the files named in the warnings above", where)
    if skipped:
        log.warning("%d unreadable image/mask pair(s) skipped: %s", len(skipped), ", ".join(n for n, _ in skipped[:5])
                    + (", ..." if len(skipped) > 5 else ""))
    return SegData(train=loaded["train"], val=loaded["val"], test=loaded["test"], split=split, skipped=skipped)


def _seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _resume_fingerprint(cfg: SegFinetuneConfig, seed: int) -> dict[str, Any]:
    """The settings a checkpoint must share with the run that resumes it."""
    d = cfg.to_dict()
    for k in ("out", "device", "label"):
        d.pop(k, None)
    d["seeds"] = [seed]
    return d


def _eval_kwargs(cfg: SegFinetuneConfig, data: SegData, *, norm: NormStats, device: torch.device,
                 model_config: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`predict_logits` for validation and test scoring."""
    return dict(img_size=cfg.img_size, norm=norm, device=device, batch_size=max(min(cfg.batch_size, len(data.train)), 4),
                window=model_config.get("window"))


def train_one_seed(cfg: SegFinetuneConfig, seed: int, data: SegData, run_dir: Path, *, resume: bool = False,
                   device: torch.device | None = None) -> dict[str, Any]:
    """Train with ``seed``, keep the best-val-Dice epoch, score it on the test set.

    After every epoch ``run_dir/last.ckpt`` is written atomically (the one before it kept as
    ``previous.ckpt``): model, optimizer, scheduler, epoch, step, best-so-far (Dice, epoch,
    weights), the validation curve and every RNG stream. With ``resume`` the newest loadable one
    is restored and training continues after its epoch, giving the same result as an
    uninterrupted run (deterministic on CPU). Writes ``model.safetensors``, ``config.json``
    then ``metrics.json`` into ``run_dir``, removes the checkpoints and returns the metrics.
    """
    from priormim.training.checkpoint import latest_valid_checkpoint, rng_state, save_checkpoint, set_rng_state

    device = device if device is not None else resolve_device(cfg.device)
    gen = _seed_everything(seed)
    model, model_config, norm = create_segmenter(cfg)
    norm = norm or compute_norm_stats([s.image for s in data.train])
    model_config.update(norm=norm.to_dict(), method=cfg.label)
    model.to(device)

    train_x, train_y = stack_resized(data.train, cfg.img_size)
    bs = min(cfg.batch_size, len(data.train))
    steps_per_epoch = len(data.train) // bs  # drop the ragged last batch (BatchNorm)
    total = steps_per_epoch * cfg.epochs
    optimizer = make_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay)
    scheduler = make_scheduler(optimizer, total_steps=total, warmup_steps=min(cfg.warmup_epochs * steps_per_epoch, total // 5), min_lr=cfg.min_lr)
    eval_kw = _eval_kwargs(cfg, data, norm=norm, device=device, model_config=model_config)
    # Epochs are compared at threshold 0.5 with the final field-of-view rule; the threshold
    # itself is picked once, for the best epoch (see finish_seed).
    val_post = PostProcess(threshold=0.5, fov=cfg.fov)
    val_outside = [val_post.outside_fov(s.image) for s in data.val]

    best_dice, best_epoch, best_state, curve = -1.0, 0, None, []
    step, t0, start_epoch, elapsed = 0, time.time(), 1, 0.0
    fingerprint = _resume_fingerprint(cfg, seed)
    if resume:
        found = latest_valid_checkpoint(run_dir)  # last.ckpt, else previous.ckpt
        if found is None:
            log.info("seed %d: no checkpoint in %s, starting from scratch", seed, run_dir)
        else:
            path, ckpt = found
            if ckpt.get("fingerprint") != fingerprint:
                raise UserError("checkpoint was made with other settings (epochs, lr, model, data ...); "
                                "use the same options, or a new --out, or drop --resume", path)
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            start_epoch, step = int(ckpt["epoch"]) + 1, int(ckpt["step"])
            best_dice, best_epoch, curve = float(ckpt["best_dice"]), int(ckpt["best_epoch"]), list(ckpt["curve"])
            best_state = ckpt["best_state"]
            elapsed = float(ckpt.get("train_time_s", 0.0))
            gen.set_state(ckpt["generator"])
            set_rng_state(ckpt["rng"])
            log.info("seed %d: resumed from %s after epoch %d", seed, path, start_epoch - 1)
    t0 -= elapsed
    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        order = torch.randperm(len(data.train), generator=gen)
        losses = []
        for i in range(steps_per_epoch):
            idx = order[i * bs : (i + 1) * bs]
            x, y = train_x[idx], train_y[idx]
            if cfg.augment:
                x, y = paired_augment(x, y, generator=gen, out_size=cfg.train_crop)
            x = ((x - norm.mean) / norm.std).to(device)
            y = y.to(device)
            with _autocast(device):
                logits = model(x)
            loss = bce_dice_loss(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(num_updates=step)
            losses.append(float(loss.detach()))
        # Validation can cost as much as an epoch of training (windowed ViTs): every val_every epochs.
        validate = epoch % cfg.val_every == 0 or epoch == cfg.epochs
        dice = val_dice(model, data.val, post=val_post, outside=val_outside, **eval_kw) if validate else None
        lr = max(g["lr"] for g in optimizer.param_groups)
        curve.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_dice": dice, "lr": lr})
        if dice is not None and dice > best_dice:  # strict: ties keep the earlier epoch
            best_dice, best_epoch = dice, epoch
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        log.info("seed %d epoch %d/%d  loss %.4f  val DSC %s  (best %.4f @%d)  lr %.2e  %.0fs",
                 seed, epoch, cfg.epochs, curve[-1]["train_loss"], "-" if dice is None else f"{dice:.4f}",
                 best_dice, best_epoch, lr, time.time() - t0)
        if epoch < cfg.epochs:
            last = run_dir / "last.ckpt"
            if last.is_file():
                os.replace(last, run_dir / "previous.ckpt")  # a damaged new one falls back to it
            save_checkpoint({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch, "step": step, "best_dice": best_dice, "best_epoch": best_epoch, "best_state": best_state,
                "curve": curve, "generator": gen.get_state(), "rng": rng_state(), "fingerprint": fingerprint,
                "train_time_s": time.time() - t0,
            }, last)

    model.load_state_dict(best_state)
    metrics = finish_seed(cfg, seed, data, run_dir, model, model_config, norm=norm, device=device, best_epoch=best_epoch,
                          best_dice=best_dice, curve=curve, train_time_s=round(time.time() - t0, 1))
    for name in ("last.ckpt", "previous.ckpt"):  # finished: metrics.json marks the seed done
        (run_dir / name).unlink(missing_ok=True)
    return metrics


def finish_seed(cfg: SegFinetuneConfig, seed: int, data: SegData, run_dir: Path, model: nn.Module, model_config: dict[str, Any], *,
                norm: NormStats, device: torch.device, best_epoch: int, best_dice: float, curve: list[dict[str, Any]],
                train_time_s: float) -> dict[str, Any]:
    """Pick the post-processing on the validation split (threshold unless ``cfg.threshold`` is
    set), score the test split once, and write ``model.safetensors``, ``config.json`` and
    ``metrics.json`` (last: it marks the seed done) into ``run_dir``."""
    eval_kw = _eval_kwargs(cfg, data, norm=norm, device=device, model_config=model_config)
    post = PostProcess(threshold=0.5 if cfg.threshold is None else float(cfg.threshold), fov=cfg.fov)
    val_by_threshold = None
    if cfg.threshold is None:
        threshold, val_by_threshold = pick_threshold(model, data.val, post=post, **eval_kw)
        post = replace(post, threshold=threshold)
    model_config = {**model_config, "postprocess": post.to_dict()}
    summary, per_image = evaluate_samples(model, data.test, post=post, **eval_kw)
    save_segmenter(model, model_config, run_dir)
    metrics = {
        "method": cfg.label,
        "seed": seed,
        "model": cfg.model,
        "best_epoch": best_epoch,
        "best_val_dice": best_dice,
        "postprocess": post.to_dict(),
        "val_dice_by_threshold": None if val_by_threshold is None else {f"{t:.2f}": d for t, d in val_by_threshold.items()},
        "test": {"summary": summary, "per_image": per_image},
        "val_curve": curve,
        "norm": norm.to_dict(),
        "data": {"n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test),
                 "n_skipped_unreadable": len(data.skipped), "source": data.split["source"]},
        "config": cfg.to_dict(),
        "train_time_s": train_time_s,
        "device": str(device),
    }
    atomic_write_bytes(run_dir / "metrics.json", json.dumps(metrics, indent=2).encode("utf-8"))
    log.info("seed %d: test DSC %.4f ± %.4f, clDice %.4f (best epoch %d, threshold %.2f, fov %s) -> %s", seed,
             summary["dice"]["mean"], summary["dice"]["std"], summary["cldice"]["mean"], best_epoch, post.threshold, post.fov, run_dir)
    return metrics


# Settings that only change post-processing: --rescore may change them without retraining.
POSTPROCESS_KEYS = ("fov", "threshold")


def rescore_seed(cfg: SegFinetuneConfig, seed: int, data: SegData, run_dir: Path, *, device: torch.device) -> dict[str, Any]:
    """Re-pick the post-processing of a finished seed on the validation split and re-score the
    test split with the saved weights (no training): for a run made before a post-processing
    option existed, or to try ``--fov`` / ``--threshold`` on a finished run."""
    old = read_metrics(run_dir / "metrics.json")
    changed = [k for k in _changed_settings(old.get("config") or {}, cfg) if k not in POSTPROCESS_KEYS]
    if changed:
        raise UserError(f"seed {seed} was trained with other settings ({', '.join(changed)}); --rescore only changes "
                        f"post-processing ({', '.join(POSTPROCESS_KEYS)}); use the same options or a new --out", run_dir / "metrics.json")
    model, model_config = load_segmenter(run_dir, device=device)
    return finish_seed(cfg, seed, data, run_dir, model, model_config, norm=NormStats(**model_config["norm"]), device=device,
                       best_epoch=int(old["best_epoch"]), best_dice=float(old["best_val_dice"]), curve=list(old.get("val_curve", [])),
                       train_time_s=float(old.get("train_time_s", 0.0)))


def _changed_settings(trained: dict[str, Any], cfg: SegFinetuneConfig) -> list[str]:
    """The options (config keys) in which ``cfg`` differs from a finished seed's ``trained``
    config; where it runs, its label and the seed list may differ."""

    def comparable(d: dict[str, Any]) -> dict[str, Any]:
        # Paths compare resolved (a relative and an absolute spelling are the same folder).
        return {k: str(Path(v).resolve()) if k in ("train", "test", "val", "data", "encoder") and v else v for k, v in d.items()
                if k not in ("out", "device", "label", "seeds")}

    a, b = comparable(trained), comparable(cfg.to_dict())
    return sorted(k for k in a if json.dumps(a[k]) != json.dumps(b.get(k)))


def _check_finished_seed(cfg: SegFinetuneConfig, seed: int, rescore: bool) -> None:
    """A finished seed is reused on a re-run only when it was trained with the same options."""
    path = cfg.out / f"seed{seed}" / "metrics.json"
    changed = _changed_settings(read_metrics(path).get("config") or {}, cfg)
    if rescore:
        return  # rescore_seed names the non-post-processing changes itself
    if changed:
        post = all(k in POSTPROCESS_KEYS for k in changed)
        opts = ", ".join(f"--{k.replace('_', '-')}" for k in changed)
        raise UserError(f"seed {seed} was finished with another {opts}; "
                        + ("add --rescore to re-pick the post-processing, " if post else "")
                        + "pass --overwrite to retrain, or choose another --out", path)


@dataclass
class SegRunResult:
    """Outcome of :func:`finetune_segmentation`."""

    out_dir: Path
    method: str
    run_dirs: list[Path]
    summaries: dict[int, dict[str, dict[str, float]]]  # seed -> test summary
    skipped_seeds: list[int]
    rows: list[ResultRow]
    results_md: Path
    results_csv: Path


def _encoder_img_size(meta: Any) -> int | None:
    """The square input size an exported encoder was pretrained at (its metadata), or None."""
    size = (meta.model_kwargs.get("img_size") if meta is not None else None)
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    return int(size) if isinstance(size, (int, float)) and not isinstance(size, bool) else None


def _check_split_file(out: Path, split: dict[str, Any]) -> None:
    path = out / "split.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = None
        if old is not None and any(old.get(k) != split[k] for k in ("train", "val", "test")):
            raise UserError("this output folder holds runs made with a different train/val/test split; use a new --out", path)
    atomic_write_bytes(path, json.dumps(split, indent=2).encode("utf-8"))


def finetune_segmentation(cfg: SegFinetuneConfig, *, resume: bool = False, rescore: bool = False,
                          overwrite: bool = False) -> SegRunResult:
    """Fine-tune one model per seed, skipping seeds already finished, and write the tables.

    ``resume``: continue an interrupted seed from its ``last.ckpt`` (see :func:`train_one_seed`).
    ``rescore``: finished seeds are not skipped but re-scored with their saved weights, the
    post-processing re-picked on the validation split (see :func:`rescore_seed`).
    ``overwrite``: the seeds, split and tables already in ``cfg.out`` are removed first; without
    it a finished seed trained with other options is a UserError naming them.

    Under ``torchrun`` the seeds are shared out over the processes (seed ``k``-th of the list
    on rank ``k % world_size``, each on its own GPU); every process trains whole seeds, so the
    results are identical to a single-process run. Rank 0 writes ``split.json`` and, once all
    seeds are done, the results tables; each rank writes only its own ``seed<k>/`` folders.
    """
    from priormim.training import distributed as D

    cfg = cfg.resolved()
    dist = D.dist_info_from_env()
    device = resolve_device(cfg.device, dist.local_rank)
    if device.type == "cuda" and dist.enabled:
        torch.cuda.set_device(device)
    # Seeds are independent jobs: the ranks coordinate through torchrun's store and never form
    # a process group, so evaluation code stays local to each rank.
    group = D.StoreGroup(dist, "finetune-seg") if dist.enabled else None
    try:
        return _finetune_seeds(cfg, dist, group, device, resume, rescore, overwrite)
    finally:
        if group is not None:
            group.close()


def _finetune_seeds(cfg: SegFinetuneConfig, dist: Any, group: Any, device: torch.device, resume: bool, rescore: bool,
                    overwrite: bool = False) -> SegRunResult:
    from priormim.outputs import claim_output, refuse_input_overlap

    data = prepare_data(cfg)

    def setup() -> list[int]:
        refuse_input_overlap(cfg.out, [("--train", cfg.train), ("--test", cfg.test), ("--val", cfg.val), ("--data", cfg.data),
                                       ("--encoder", cfg.encoder)], around=False)
        if overwrite:
            claim_output(cfg.out, markers=("seed*/metrics.json", "seed*/last.ckpt", "results.md"),
                         owned=("seed*", "results.csv", "split.json"), overwrite=True)
        try:
            cfg.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the output folder ({exc.strerror or exc}); choose another --out", cfg.out) from exc
        _check_split_file(cfg.out, data.split)
        done = [s for s in cfg.seeds if (cfg.out / f"seed{s}" / "metrics.json").is_file()]
        for s in done:
            _check_finished_seed(cfg, s, rescore)
        return done

    skipped = group.run_on_main(setup, "setup") if group is not None else setup()
    if dist.is_main:
        for seed in skipped:
            log.info("seed %d already finished (%s); %s", seed, cfg.out / f"seed{seed}" / "metrics.json",
                     "re-scoring it" if rescore else "skipped")
        log.info("%s: %d train / %d val / %d test images, img_size %d, %d epoch(s), seeds %s%s",
                 cfg.label, len(data.train), len(data.val), len(data.test), cfg.img_size, cfg.epochs, list(cfg.seeds),
                 f" over {dist.world_size} processes" if dist.enabled else "")
    mine = [s for k, s in enumerate(cfg.seeds) if k % dist.world_size == dist.rank]
    failure: BaseException | None = None
    for seed in mine:
        run_dir = cfg.out / f"seed{seed}"
        if seed in skipped and not rescore:
            continue
        try:
            if seed in skipped:
                rescore_seed(cfg, seed, data, run_dir, device=device)
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            train_one_seed(cfg, seed, data, run_dir, resume=resume, device=device)
        except (UserError, OSError) as exc:
            if group is None:
                raise
            failure = exc  # tell the others below instead of leaving them waiting
            break
    if group is not None:
        failed = [r for r, f in enumerate(group.all_gather("seeds-done", None if failure is None else str(failure))) if f]
        if failure is not None:
            raise failure
        if failed:
            raise UserError(f"rank {dist.rank}: stopping because rank(s) {', '.join(map(str, failed))} failed (see their message)")

    run_dirs, summaries = [], {}
    for seed in cfg.seeds:
        run_dir = cfg.out / f"seed{seed}"
        metrics = read_metrics(run_dir / "metrics.json")
        run_dirs.append(run_dir)
        summaries[seed] = metrics["test"]["summary"]
    md, csv_path = cfg.out / "results.md", cfg.out / "results.csv"
    rows = aggregate_runs(run_dirs)
    if dist.is_main:
        md, csv_path = write_results_table(rows, cfg.out, title=f"Vessel segmentation: {cfg.label}")
    if group is not None:
        group.all_gather("tables-written", True)
    return SegRunResult(out_dir=cfg.out, method=cfg.label, run_dirs=run_dirs, summaries=summaries, skipped_seeds=skipped,
                        rows=rows, results_md=md, results_csv=csv_path)


# ----------------------------------------------------------------------------------------------
# Evaluation of saved models and the vesselness baseline


def evaluate_saved_model(model_dir: str | Path, test_dir: str | Path, out_dir: str | Path, *, device: str = "auto",
                         names: Sequence[str] | None = None) -> dict[str, Any]:
    """Score a saved segmenter on another data set (cross-data-set transfer).

    ``model_dir``: a seed folder, or a fine-tuning output folder (every ``seed*`` in it is
    scored). Writes ``<out_dir>/<seed>/metrics.json`` (or ``<out_dir>/metrics.json`` for one
    model) and ``results.md``/``.csv``; returns ``{"rows": [...], "run_dirs": [...]}``.
    """
    from priormim.data.readers import read_segmentation_folder

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    dev = resolve_device(device)
    if (model_dir / "config.json").is_file():
        model_dirs = [model_dir]
    else:
        model_dirs = sorted(p for p in model_dir.glob("seed*") if (p / "config.json").is_file())
        if not model_dirs:
            _pick_model_dir(model_dir)  # raises the UserError
    pairs = read_segmentation_folder(test_dir, check_binary=False)
    if names is not None:
        pairs = [p for p in pairs if p.name in set(names)]
    samples = load_samples(pairs)
    run_dirs, notes = [], []
    for md in model_dirs:
        seen = seen_in_training(md, Path(test_dir), {s.name for s in samples})
        if seen:
            notes.append(f"{md.name}: {len(seen)} of {len(samples)} images were this model's training or validation "
                         f"images (its split.json), e.g. {seen[0]}: those scores are optimistic")
        model, mc = load_segmenter(md, device=dev)
        masks = predict_masks(model, [s.image for s in samples], mc, device=dev)
        notes += [f"{md.name}: {n}" for n in prediction_notes(masks, [s.mask for s in samples])]
        summary, per_image = score_masks(masks, samples)
        run_dir = out_dir / md.name if len(model_dirs) > 1 else out_dir
        seed = None
        try:
            seed = json.loads((md / "metrics.json").read_text())["seed"]
        except (OSError, ValueError, KeyError):
            pass
        metrics = {"method": mc.get("method", md.name), "seed": seed, "model_dir": str(md), "test_dir": str(test_dir),
                   "test": {"summary": summary, "per_image": per_image}}
        atomic_write_bytes(run_dir / "metrics.json", json.dumps(metrics, indent=2).encode("utf-8"))
        log.info("%s on %s: DSC %.4f, clDice %.4f", md, test_dir, summary["dice"]["mean"], summary["cldice"]["mean"])
        run_dirs.append(run_dir)
    rows = aggregate_runs(run_dirs)
    md_path, _ = write_results_table(rows, out_dir, title=f"Vessel segmentation on {Path(test_dir).name}")
    for note in notes:
        log.warning("%s", note)
    if notes:
        text = md_path.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + "\n".join(f"**Warning:** {n}." for n in notes)
        atomic_write_bytes(md_path, (text + "\n").encode("utf-8"))
    return {"rows": rows, "run_dirs": run_dirs, "notes": notes}


def baseline_mask(image: np.ndarray, *, method: str = "sato", percentile: float = 92.0, border: int = 20,
                  sigmas: Sequence[float] = (1, 2, 3, 4), keep: str = "all") -> np.ndarray:
    """Thresholded vesselness of one ``[H, W]`` image in [0, 1] -> ``bool [H, W]``.

    ``sato``: :func:`priormim.priors.vessel.vessel_mask`; ``frangi``: ``skimage.filters.frangi``
    (dark ridges) through the same percentile / border / connected-component logic.
    """
    from priormim.priors.vessel import threshold_vesselness, vessel_mask

    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    if method == "sato":
        # The documented Sato baseline (collimator-aware, priormim preset), not the pretraining prior.
        m = vessel_mask(x, percentile=percentile, border=border, keep=keep, sigmas=sigmas, preset="priormim")
    elif method == "frangi":
        from skimage.filters import frangi

        resp = frangi(image.astype(np.float64), sigmas=tuple(sigmas), black_ridges=True)
        resp = torch.from_numpy(np.nan_to_num(resp).astype(np.float32))[None, None]
        m = threshold_vesselness(resp, percentile=percentile, border=border, keep=keep)
    else:
        raise UserError(f"unknown vesselness method {method!r}; use sato or frangi")
    return m[0, 0].numpy()


def run_vesselness_baseline(
    test_dir: str | Path,
    out_dir: str | Path,
    method: str = "sato",
    *,
    percentile: float = 92.0,
    border: int = 20,
    keep: str = "all",
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Score thresholded vesselness (no training) on ``test_dir`` (``images/`` + ``masks/``).

    ``keep`` picks the connected components kept (see
    :func:`priormim.priors.vessel.threshold_vesselness`): ``"all"`` is the default because on
    DCA1's train + val images the ``"seeded"`` tree starts on the circular collimator edge in
    13 of 30 angiograms (Dice 0); with percentile 92: all 0.667, largest 0.623, seeded 0.340.
    ``names`` restricts scoring to those images (e.g. the test part of :func:`fixed_split`).
    Writes ``<out_dir>/metrics.json`` and ``results.md``/``.csv``; returns the metrics dict.
    """
    from priormim.data.readers import read_segmentation_folder
    from priormim.evaluation.metrics import SegmentationMeter

    out_dir = Path(out_dir)
    pairs = read_segmentation_folder(test_dir, check_binary=False)
    if names is not None:
        wanted = set(names)
        pairs = [p for p in pairs if p.name in wanted]
        if not pairs:
            raise UserError("none of the requested test images is in this folder", test_dir)
    meter = SegmentationMeter()
    t0 = time.time()
    for s in load_samples(pairs):
        pred = baseline_mask(s.image, method=method, percentile=percentile, border=border, keep=keep)
        meter.update(pred[None], s.mask[None], names=[s.name])
    summary = meter.summary()
    label = f"{method.capitalize()} vesselness (p{percentile:g}, {keep})"
    metrics = {
        "method": label,
        "seed": None,
        "model": f"vesselness-{method}",
        "test": {"summary": summary, "per_image": meter.per_image()},
        "config": {"method": method, "percentile": percentile, "border": border, "keep": keep, "test": str(test_dir),
                   "names": list(names) if names is not None else None},
        "time_s": round(time.time() - t0, 1),
    }
    atomic_write_bytes(out_dir / "metrics.json", json.dumps(metrics, indent=2).encode("utf-8"))
    write_results_table(aggregate_runs([out_dir]), out_dir, title=f"Vessel segmentation: {label}")
    log.info("%s on %d images: DSC %.4f ± %.4f, clDice %.4f", label, summary["dice"]["n"], summary["dice"]["mean"],
             summary["dice"]["std"], summary["cldice"]["mean"])
    return metrics
