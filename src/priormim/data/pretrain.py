"""Unlabelled images (+ optional spatial prior) for masked-image-model pretraining.

One random geometry is applied to the image and its prior together (torchvision v2 treats a
``tv_tensors.Mask`` with nearest-neighbour interpolation), so the prior used for masking
always lines up with the crop the model sees.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from priormim.errors import UserError
from priormim.io import read_gray

log = logging.getLogger(__name__)

PriorLoader = Callable[[Path], "np.ndarray | None"]


def compute_norm_stats(paths: Sequence[Path], *, max_images: int = 256, seed: int = 0) -> tuple[float, float]:
    """Grey-level mean and std of a data set (subsampled), for per-data-set normalisation."""
    paths = list(paths)
    if not paths:
        raise ValueError("no images to compute normalisation statistics from")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(paths), size=min(max_images, len(paths)), replace=False)
    total = total_sq = count = 0.0
    for i in sorted(pick):
        try:
            x = read_gray(paths[i]).astype(np.float64)
        except UserError:
            continue  # unreadable files are reported by the prior pass / loader
        total += x.sum()
        total_sq += (x * x).sum()
        count += x.size
    if count == 0:
        raise UserError("none of the sampled images could be read", paths[0].parent)
    mean = total / count
    std = max((total_sq / count - mean * mean) ** 0.5, 1e-6)
    return float(mean), float(std)


INTERPOLATIONS = {"bicubic": v2.InterpolationMode.BICUBIC, "bilinear": v2.InterpolationMode.BILINEAR}


def _clamp_unit(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0.0, 1.0)


def paired_train_transform(
    img_size: int | tuple[int, int],
    *,
    crop_scale: Sequence[float] = (0.2, 1.0),
    hflip: bool = True,
    vflip: bool = False,
    interpolation: str = "bilinear",
) -> v2.Transform:
    """RandomResizedCrop (+ horizontal, + vertical flip) applied identically to image and prior.

    ``interpolation`` resamples the image (``bicubic`` in the official VasoMIM and MAE data
    pipelines, clamped back to [0, 1] as PIL's 8-bit bicubic clips); the prior, a
    ``tv_tensors.Mask``, is always resampled nearest-neighbour.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got '{interpolation}'")
    ops: list[v2.Transform] = [
        v2.RandomResizedCrop(img_size, scale=tuple(crop_scale), antialias=True,
                             interpolation=INTERPOLATIONS[interpolation])
    ]
    if interpolation == "bicubic":  # bicubic overshoots at edges; images live in [0, 1]
        ops.append(v2.Lambda(_clamp_unit, tv_tensors.Image))
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    if vflip:
        ops.append(v2.RandomVerticalFlip())
    return v2.Compose(ops)


def eval_transform(img_size: int | tuple[int, int]) -> v2.Transform:
    return v2.Resize(img_size if isinstance(img_size, tuple) else (img_size, img_size), antialias=True)


class PretrainDataset(Dataset):
    """Images from a folder, each with an optional prior map.

    Items are dicts: ``image`` float ``[1, S, S]`` normalised with the data set's mean/std,
    ``prior`` float ``[1, S, S]`` (0/1 vessel map or gaze heat; zeros when there is no prior),
    ``index`` int, ``skipped`` int (unreadable files replaced to make this item, see below).

    An item key is an index, or ``(index, epoch)`` (what
    :class:`priormim.training.distributed.GlobalBatchSampler` yields): then the random crop and
    flip are drawn from a generator seeded by ``(seed, epoch, index)``, so a sample's
    augmentation does not depend on the loader worker, the rank or a resume, and the item also
    carries ``epoch``.

    With ``skip_unreadable`` an image that cannot be read (or whose prior does not fit) is
    logged and replaced by the next readable one; ``skipped`` counts the replacements so the
    trainer can report them. Decoding and the paired crop run in the loader's workers.
    """

    max_replacements = 16

    def __init__(
        self,
        paths: Sequence[Path],
        *,
        transform: v2.Transform,
        norm_mean: float,
        norm_std: float,
        prior_loader: PriorLoader | None = None,
        seed: int = 0,
        skip_unreadable: bool = False,
    ) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.norm_mean = norm_mean
        self.norm_std = norm_std
        self.prior_loader = prior_loader
        self.seed = int(seed)
        self.skip_unreadable = skip_unreadable

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-augmented ``([1,H,W] image in [0,1], [1,H,W] prior)``."""
        path = self.paths[i]
        img = torch.from_numpy(read_gray(path))[None]
        loaded = self.prior_loader(path) if self.prior_loader is not None else None
        if loaded is not None:  # None: no prior for this image (e.g. no gaze); masking falls back to random
            prior = torch.from_numpy(np.asarray(loaded, dtype=np.float32))[None]
            if prior.shape != img.shape:
                raise UserError(
                    f"prior is {tuple(prior.shape[1:])} but the image is {tuple(img.shape[1:])}; "
                    "delete the prior cache to recompute it",
                    path,
                )
            if not torch.isfinite(prior).all():
                raise UserError("prior holds NaN or infinite values; delete the prior cache to recompute it", path)
        else:
            prior = torch.zeros_like(img)
        return img, prior

    def _load_readable(self, i: int) -> tuple[int, torch.Tensor, torch.Tensor, int]:
        """``(index used, image, prior, replacements)``: ``i``, or the next readable one."""
        if not self.skip_unreadable:
            return (i, *self.load(i), 0)
        for k in range(min(self.max_replacements, len(self.paths))):
            j = (i + k) % len(self.paths)
            try:
                return (j, *self.load(j), k)
            except UserError as exc:
                log.warning("skipped: %s", exc)
        raise UserError(
            f"{self.max_replacements} images in a row could not be read; check the data (see the warnings above)",
            self.paths[i],
        )

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        from priormim.data.seeds import AUGMENT_STREAM, sample_seed

        if isinstance(key, (tuple, list)):
            i, epoch = int(key[0]), int(key[1])
        else:
            i, epoch = int(key), None
        _, img, prior, skipped = self._load_readable(i)
        if epoch is None:
            img, prior = self.transform(tv_tensors.Image(img), tv_tensors.Mask(prior))
        else:
            # Seeded per (run seed, epoch, sample): fork_rng restores the worker's own stream.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(self.seed, epoch, i, AUGMENT_STREAM))
                img, prior = self.transform(tv_tensors.Image(img), tv_tensors.Mask(prior))
        img = (img.as_subclass(torch.Tensor) - self.norm_mean) / self.norm_std
        item = {"image": img, "prior": prior.as_subclass(torch.Tensor).float(), "index": i, "skipped": skipped}
        if epoch is not None:
            item["epoch"] = epoch
        return item
