"""Classification data: reading a split, fixed hold-out splits, label alignment, decoding into memory."""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from priormim.data.readers import (
    ClassificationSet,
    read_chestxray14,
    read_class_folders,
    read_labels_csv,
    read_rsna_pneumonia,
)
from priormim.errors import UserError
from priormim.io import read_gray
from priormim.models.seg import NormStats
from priormim.training.cls.config import FORMATS, ClsFinetuneConfig

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# Datasets: reading, splitting, decoding


def detect_format(path: Path) -> str:
    """``csv`` / ``cxr14`` / ``rsna`` / ``folders`` from what ``path`` holds (see module docs)."""
    if path.is_file() and path.suffix.lower() == ".csv":
        return "csv"
    if not path.is_dir():
        raise UserError("does not exist; pass the dataset folder (or its labels CSV)", path)
    if (path / "labels.csv").is_file():
        return "csv"
    if (path / "Data_Entry_2017.csv").is_file() or (path / "Data_Entry_2017_v2020.csv").is_file():
        return "cxr14"
    if (path / "stage_2_train_labels.csv").is_file():
        return "rsna"
    if any(p.is_dir() and not p.name.startswith((".", "__")) for p in path.iterdir()):
        return "folders"
    raise UserError(
        "cannot tell the dataset format: expected labels.csv, class sub-folders, Data_Entry_2017.csv "
        "(ChestX-ray14) or stage_2_train_labels.csv (RSNA); or pass --format",
        path,
    )


def read_split(path: Path, *, fmt: str = "auto", split: str = "train") -> ClassificationSet:
    """Read one dataset split as paths + labels; ``split`` matters for ChestX-ray14 only."""
    path = Path(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "folders":
        return read_class_folders(path)
    if fmt == "cxr14":
        return read_chestxray14(path, split)
    if fmt == "rsna":
        return read_rsna_pneumonia(path)
    if fmt == "csv":
        csv_path = path if path.is_file() else path / "labels.csv"
        base = csv_path.parent
        return read_labels_csv(csv_path, image_dir=base / "images" if (base / "images").is_dir() else base)
    raise UserError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def task_of(ds: ClassificationSet) -> str:
    """``"multilabel"``, ``"binary"`` or ``"multiclass"``."""
    return "multilabel" if ds.multilabel else ("binary" if len(ds.class_names) == 2 else "multiclass")


def subset(ds: ClassificationSet, idx: np.ndarray) -> ClassificationSet:
    idx = np.asarray(idx, dtype=np.int64)
    return ClassificationSet(
        paths=[ds.paths[i] for i in idx], labels=ds.labels[idx], class_names=list(ds.class_names), multilabel=ds.multilabel
    )


def patient_groups(paths: list[Path]) -> np.ndarray | None:
    """Patient ids from ChestX-ray14 file names (``<patient>_<follow-up>.png``), else None.

    Splitting by patient keeps follow-up films of one patient out of both sides of a split.
    """
    ids = [re.match(r"^(\d{8})_\d{3}\.", p.name) for p in paths]
    if not ids or any(m is None for m in ids):
        return None
    return np.asarray([m.group(1) for m in ids])


def split_indices(
    labels: np.ndarray, *, fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed, seeded hold-out split: ``(keep, held)`` index arrays, both sorted.

    Single-label ``int [N]``: stratified, ``round(fraction * n_c)`` (at least one) of every class
    with two or more images. Multi-label ``[N, C]``: a random ``fraction``. With ``groups``
    (patient ids): whole groups are held out until ``fraction`` of the images is reached.
    """
    rng = np.random.default_rng(seed)
    n = len(labels)
    if groups is not None:
        uniq = np.unique(groups)
        rng.shuffle(uniq)
        counts = {g: c for g, c in zip(*np.unique(groups, return_counts=True))}
        take, total = set(), 0
        for g in uniq:
            if total >= round(fraction * n):
                break
            take.add(g)
            total += counts[g]
        held = np.flatnonzero(np.isin(groups, list(take)))
    elif labels.ndim == 1:
        held_parts = []
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            if len(members) < 2:
                continue
            rng.shuffle(members)
            held_parts.append(members[: max(1, round(fraction * len(members)))])
        held = np.concatenate(held_parts) if held_parts else np.zeros(0, dtype=np.int64)
    else:
        held = rng.permutation(n)[: max(1, round(fraction * n))]
    held = np.sort(held)
    keep = np.setdiff1d(np.arange(n), held)
    return keep, held


def align_labels(ds: ClassificationSet, ref: ClassificationSet, where: Path) -> ClassificationSet:
    """Re-index ``ds``'s labels to ``ref``'s class order (matched by name)."""
    if ds.multilabel != ref.multilabel:
        kind = lambda d: "multi-label" if d.multilabel else "single-label"  # noqa: E731
        raise UserError(f"labels are {kind(ds)} but the training labels are {kind(ref)}; use the same label layout", where)
    if ds.multilabel:
        missing = [c for c in ref.class_names if c not in ds.class_names]
        if missing:
            raise UserError(f"lacks label column(s) {', '.join(missing)} that the training set has", where)
        cols = [ds.class_names.index(c) for c in ref.class_names]
        return replace(ds, labels=ds.labels[:, cols], class_names=list(ref.class_names))
    used = sorted({ds.class_names[i] for i in np.unique(ds.labels)})
    unknown = [c for c in used if c not in ref.class_names]
    if unknown:
        raise UserError(
            f"has class(es) {', '.join(unknown)} that the training set lacks (training classes: "
            f"{', '.join(ref.class_names)}); use the same class names",
            where,
        )
    lookup = np.asarray([ref.class_names.index(c) if c in ref.class_names else -1 for c in ds.class_names])
    return replace(ds, labels=lookup[ds.labels], class_names=list(ref.class_names))


def check_training_labels(ds: ClassificationSet, where: Path) -> None:
    """A classifier needs two classes, each with images; raise UserError naming ``where`` if not."""
    if ds.multilabel:
        empty = [c for c, n in zip(ds.class_names, ds.labels.sum(0)) if n == 0]
        if len(empty) == len(ds.class_names):
            raise UserError("no training image has any positive label; check the label columns", where)
        if empty:
            logger.warning("%s: label(s) %s have no positive training image", where, ", ".join(empty))
        return
    counts = np.bincount(ds.labels, minlength=len(ds.class_names))
    present = [c for c, n in zip(ds.class_names, counts) if n > 0]
    if len(present) < 2:
        raise UserError(
            f"the training labels hold only one class ({', '.join(present) or 'none'}); a classifier needs "
            "images of at least two classes",
            where,
        )
    empty = [c for c, n in zip(ds.class_names, counts) if n == 0]
    if empty:
        raise UserError(
            f"class(es) {', '.join(empty)} have no training image (integer labels must run 0..K-1 without gaps)",
            where,
        )


class _DecodeDataset(torch.utils.data.Dataset):
    """Reads and resizes one image; a failure is returned, not raised, so the batch goes on."""

    def __init__(self, paths: list[Path], img_size: int) -> None:
        self.paths, self.img_size = paths, img_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Tensor | None, str | None]:
        try:
            img = read_gray(self.paths[i])
        except (UserError, OSError, ValueError) as exc:
            return i, None, str(exc)
        x = torch.from_numpy(np.ascontiguousarray(img))[None, None]
        x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", antialias=True, align_corners=False)
        return i, (x[0].clamp(0, 1) * 255).round().to(torch.uint8), None


def _as_list(batch: list) -> list:  # module level: picklable for spawned workers
    return batch


def decode_images(
    paths: list[Path], *, img_size: int, num_workers: int = 0
) -> tuple[Tensor, np.ndarray, list[str]]:
    """Read every image once, resized to ``img_size`` x ``img_size``.

    Returns:
        ``(images uint8 [M, 1, S, S], kept int64 [M] indices into paths, skipped messages)``;
        unreadable files are logged and left out (``M <= len(paths)``).
    """
    loader = torch.utils.data.DataLoader(
        _DecodeDataset(paths, img_size), batch_size=32, num_workers=num_workers, collate_fn=_as_list
    )
    images = torch.zeros(len(paths), 1, img_size, img_size, dtype=torch.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    skipped: list[str] = []
    for batch in loader:
        for i, img, err in batch:
            if img is None:
                logger.warning("skipping unreadable image: %s", err)
                skipped.append(err)
            else:
                images[i], ok[i] = img, True
    kept = np.flatnonzero(ok)
    if len(kept) < len(paths):
        images = images[torch.from_numpy(kept)]
    return images, kept, skipped


@dataclass
class _Split:
    """Decoded images of one split with aligned labels (``int64 [N]`` or ``float32 [N, C]``)."""

    images: Tensor
    labels: Tensor
    paths: list[Path]
    skipped: list[str]


def _decode_split(ds: ClassificationSet, *, img_size: int, num_workers: int, name: str) -> _Split:
    t0 = time.time()
    images, kept, skipped = decode_images(ds.paths, img_size=img_size, num_workers=num_workers)
    if len(kept) == 0:
        raise UserError(f"none of the {len(ds)} {name} images could be read; check the files", ds.paths[0].parent)
    labels = torch.from_numpy(ds.labels[kept])
    logger.info("%s: %d images decoded in %.1fs (%d skipped)", name, len(kept), time.time() - t0, len(skipped))
    return _Split(images=images, labels=labels, paths=[ds.paths[i] for i in kept], skipped=skipped)


def norm_from_images(images: Tensor) -> NormStats:
    """Grey-level mean/std of ``uint8 [N, 1, H, W]`` images, in ``[0, 1]`` units."""
    total, sq, n = 0.0, 0.0, 0
    for chunk in images.split(256):
        x = chunk.double() / 255.0
        total += float(x.sum())
        sq += float((x * x).sum())
        n += x.numel()
    mean = total / n
    std = math.sqrt(max(sq / n - mean * mean, 0.0))
    return NormStats(mean=mean, std=std if std > 1e-6 else 1.0)


@dataclass
class _Data:
    train: _Split
    val: _Split
    test: _Split
    class_names: list[str]
    task: str
    notes: list[str]


def load_data(cfg: ClsFinetuneConfig) -> _Data:
    """Read, split and decode train / val / test once for all seeds (``cfg`` resolved)."""
    fmt_train = detect_format(cfg.train) if cfg.format == "auto" else cfg.format
    train = read_split(cfg.train, fmt=fmt_train, split="train")
    check_training_labels(train, cfg.train)
    notes: list[str] = []
    same_test = cfg.test.resolve() == cfg.train.resolve()
    if same_test and fmt_train != "cxr14":  # ChestX-ray14 has an official test list
        keep, held = split_indices(train.labels, fraction=cfg.test_fraction, seed=cfg.split_seed, groups=patient_groups(train.paths))
        train, test = subset(train, keep), subset(train, held)
        notes.append(f"test set: {len(test)} images carved from the training folder ({cfg.test_fraction:.0%}, split_seed {cfg.split_seed})")
    else:
        test = align_labels(read_split(cfg.test, fmt=cfg.format, split="test"), train, cfg.test)
    if cfg.val is not None:
        if cfg.val.resolve() == cfg.train.resolve():
            raise UserError("--val is the --train folder; leave --val out to carve a validation split from train", cfg.val)
        val = align_labels(read_split(cfg.val, fmt=cfg.format, split="train"), train, cfg.val)
    else:
        if not train.multilabel and np.bincount(train.labels).min(initial=len(train)) < 2:
            raise UserError(
                "a class has fewer than two training images, too few to carve a validation split; add images or pass --val",
                cfg.train,
            )
        keep, held = split_indices(train.labels, fraction=cfg.val_fraction, seed=cfg.split_seed + 1, groups=patient_groups(train.paths))
        train, val = subset(train, keep), subset(train, held)
        notes.append(f"validation set: {len(val)} images carved from train ({cfg.val_fraction:.0%}, split_seed {cfg.split_seed})")
    check_training_labels(train, cfg.train)
    for name, other in (("validation", val), ("test", test)):
        overlap = set(map(str, train.paths)) & set(map(str, other.paths))
        if overlap:
            raise UserError(f"{len(overlap)} training images are also in the {name} set (e.g. {sorted(overlap)[0]}); the sets must be disjoint", cfg.train)
    decode = lambda ds, name: _decode_split(ds, img_size=cfg.img_size, num_workers=cfg.num_workers, name=name)  # noqa: E731
    return _Data(
        train=decode(train, "train"), val=decode(val, "val"), test=decode(test, "test"),
        class_names=list(train.class_names), task=task_of(train), notes=notes,
    )

