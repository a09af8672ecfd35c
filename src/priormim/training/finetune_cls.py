"""Chest X-ray classification with a (pre-trained) ViT encoder: linear probe or full fine-tuning.

The protocol follows facebookresearch/mae (``main_linprobe.py``, ``main_finetune.py``):

* **linear**: the encoder is frozen in eval mode; a ``BatchNorm1d(affine=False) + Linear`` head
  is trained on its class-token features. There is no augmentation, so the features are
  computed once and the head is trained on them (seconds, even for ChestX-ray14). MAE's LARS
  optimiser exists to keep a 16k batch stable; at the batch sizes used here SGD with momentum
  0.9 on the BatchNorm-whitened features does the same job, and is the default.
* **full**: every weight is trained with AdamW, layer-wise lr decay
  (``timm.optim.create_optimizer_v2(layer_decay=...)``), drop-path, and a per-step cosine
  schedule with linear warm-up (``timm.scheduler.CosineLRScheduler``); light augmentation:
  random resized crop (80-100 % of the area) and a small rotation (±10°). No horizontal flip by
  default: a chest X-ray is not left-right symmetric (heart on the patient's left, the
  laterality marker, situs inversus and dextrocardia are findings), so a flipped film is not a
  plausible training image.

Shared by both: images are read once (``priormim.io.read_gray``), squashed to ``img_size`` x
``img_size`` (as CheXNet; CXRs are near-square) and kept in memory as ``uint8`` (N·img_size²
bytes: ~5.6 GB for ChestX-ray14 at 224). They are normalised with the grey-level mean/std of
the encoder's pretraining data (file metadata) or, without an encoder file, of the training
set; never with ImageNet RGB statistics. Unreadable images are skipped, logged and counted.

The best epoch is picked by the AUC on a validation split: ``--val`` or a fixed split carved
from the training set (``split_seed``, stratified by class; by patient for ChestX-ray14 file
names), never the test set. When ``--test`` is the ``--train`` folder (e.g. RSNA, which has no
labelled test set), a fixed test split is carved first the same way.

AUC: binary -> score = probability of ``class_names[1]`` (cross-entropy over two logits);
multi-label -> mean of the per-label AUCs (BCE loss); more than two classes -> macro
one-vs-rest AUC. Results go to ``<out>/seed<k>/metrics.json`` and ``<out>/results.{md,csv}``
(mean ± std over seeds); finished seeds are skipped when the run is started again.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import Tensor, nn

from priormim.data.readers import (
    ClassificationSet,
    read_chestxray14,
    read_class_folders,
    read_labels_csv,
    read_rsna_pneumonia,
)
from priormim.errors import UserError
from priormim.metrics import binary_auc, mean_std, multiclass_auc, multilabel_auc
from priormim.io import atomic_write_bytes, read_gray
from priormim.models.classifier import (
    ClassifierInfo,
    attach_head,
    extract_features,
    save_classifier,
    to_model_input,
)
from priormim.models.seg import NormStats, create_vit_encoder, resolve_encoder_config
from priormim.training.distributed import resolve_device
from priormim.training.results import aggregate_runs, write_results_table

logger = logging.getLogger(__name__)

FORMATS = ("auto", "folders", "csv", "cxr14", "rsna")

# MAE defaults (main_linprobe / main_finetune); lr = base_lr * batch_size / 256.
MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "linear": dict(epochs=90, warmup_epochs=10, batch_size=256, base_lr=0.1, weight_decay=0.0, opt="momentum", global_pool="token"),
    "full": dict(epochs=50, warmup_epochs=5, batch_size=64, base_lr=1e-3, weight_decay=0.05, opt="adamw", global_pool="avg"),
}

# Config fields that may change between a run and its resumption without changing results.
_RESUME_IGNORED = ("seeds", "out", "device", "num_workers", "save_model")


def _abs(path: str | Path) -> Path:
    return Path(path).expanduser().absolute()


@dataclass
class ClsFinetuneConfig:
    """One classification experiment (all seeds). ``None`` fields take the per-mode default
    from :data:`MODE_DEFAULTS`; :meth:`resolved` fills them in."""

    train: Path
    test: Path
    out: Path
    encoder: Path | None = None  # safetensors from `priormim export`; None = random init
    backbone: str = "vit_tiny_patch16_224"  # timm name; the encoder file's metadata overrides it
    mode: str = "linear"  # "linear" | "full"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    format: str = "auto"  # auto | folders | csv | cxr14 | rsna
    val: Path | None = None  # None: carve val_fraction of train
    val_fraction: float = 0.1
    test_fraction: float = 0.2  # only used when test is the train folder
    split_seed: int = 0  # fixed splits, independent of the training seeds
    img_size: int = 224
    epochs: int | None = None
    warmup_epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None  # absolute; None = base_lr * batch_size / 256
    weight_decay: float | None = None
    opt: str | None = None  # any timm optimizer name ("momentum", "adamw", "lars", ...)
    layer_decay: float = 0.75  # full mode only; 1.0 disables it
    drop_path: float = 0.1  # full mode only
    global_pool: str | None = None  # "token" | "avg"
    hflip: bool = False  # see the module docstring before turning this on for CXRs
    min_crop_scale: float = 0.8
    max_rotation: float = 10.0  # degrees
    model_kwargs: dict[str, Any] | None = None  # extra timm.create_model kwargs (random init)
    device: str = "auto"
    num_workers: int = 4  # image decoding processes
    save_model: bool = True  # write <out>/seed<k>/model.safetensors
    label: str | None = None  # method name in the results table; None: "<mode>, <encoder file stem>"

    def resolved(self) -> ClsFinetuneConfig:
        """A copy with absolute input paths and every per-mode default filled in."""
        if self.mode not in MODE_DEFAULTS:
            raise UserError(f"mode must be 'linear' or 'full', got {self.mode!r}")
        if self.format not in FORMATS:
            raise UserError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        d = MODE_DEFAULTS[self.mode]
        batch_size = self.batch_size or d["batch_size"]
        cfg = replace(
            self,
            train=_abs(self.train),
            test=_abs(self.test),
            out=Path(self.out),
            encoder=None if self.encoder in (None, "", "none") else _abs(self.encoder),
            val=None if self.val is None else _abs(self.val),
            seeds=[int(s) for s in self.seeds],
            epochs=self.epochs if self.epochs is not None else d["epochs"],
            warmup_epochs=self.warmup_epochs if self.warmup_epochs is not None else d["warmup_epochs"],
            batch_size=batch_size,
            lr=self.lr if self.lr is not None else d["base_lr"] * batch_size / 256,
            weight_decay=self.weight_decay if self.weight_decay is not None else d["weight_decay"],
            opt=self.opt or d["opt"],
            global_pool=self.global_pool or d["global_pool"],
            model_kwargs=dict(self.model_kwargs or {}),
        )
        if not cfg.label:
            what = "linear probe" if cfg.mode == "linear" else "fine-tune"
            cfg.label = f"{what}, {cfg.encoder.stem if cfg.encoder else 'random init'}"
        checks = [
            (cfg.epochs >= 1, "epochs must be >= 1"),
            (cfg.batch_size >= 2, "batch_size must be >= 2"),
            (0 < cfg.val_fraction < 1, "val_fraction must lie in (0, 1)"),
            (0 < cfg.test_fraction < 1, "test_fraction must lie in (0, 1)"),
            (cfg.global_pool in ("token", "avg"), "global_pool must be 'token' or 'avg'"),
            (0 < cfg.min_crop_scale <= 1, "min_crop_scale must lie in (0, 1]"),
            (len(cfg.seeds) >= 1, "give at least one seed"),
            (cfg.img_size >= 16, f"--img-size must be >= 16 px, got {cfg.img_size}"),
            (math.isfinite(cfg.lr) and cfg.lr > 0, f"--lr must be a finite number > 0, got {cfg.lr}"),
            (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0, f"--weight-decay must be finite and >= 0, got {cfg.weight_decay}"),
            (0 < cfg.layer_decay <= 1, f"--layer-decay must lie in (0, 1], got {cfg.layer_decay}"),
            (0 <= cfg.drop_path < 1, f"--drop-path must lie in [0, 1), got {cfg.drop_path}"),
            (cfg.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {cfg.warmup_epochs}"),
            (cfg.num_workers >= 0, f"--num-workers must be >= 0, got {cfg.num_workers}"),
            (cfg.val is None or cfg.val != cfg.test, "--val and --test are the same data; pass a separate validation set "
             "(or omit --val to carve one from --train)"),
            (cfg.val is None or cfg.val != cfg.train, "--val and --train are the same data; omit --val to carve a "
             "validation split from --train"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)
        import timm.optim

        known = timm.optim.list_optimizers()
        if cfg.opt.lower() not in known:
            raise UserError(f"--opt {cfg.opt!r} is not a timm optimizer; use e.g. momentum, sgd, adamw, lamb or lars")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass
class FitResult:
    """Outcome of one training run; the model passed in is left holding the best epoch's weights."""

    best_epoch: int  # 1-based; 0 if no epoch had a finite val AUC (then the last epoch is kept)
    best_val_auc: float
    history: list[dict[str, float]]


@dataclass
class ClsRunResult:
    """All seeds of one experiment."""

    out_dir: Path
    seeds: list[int]
    test_auc: list[float]  # per seed, in ``seeds`` order
    mean_auc: float
    std_auc: float  # sample std over seeds (0 for one seed)
    per_label: dict[str, tuple[float, float]]  # label -> (mean, std) over seeds
    metrics: list[dict[str, Any]]  # the per-seed metrics.json contents


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


# ----------------------------------------------------------------------------------------------
# Loss, scores, AUC


def classification_loss(logits: Tensor, labels: Tensor, *, task: str) -> Tensor:
    """BCE for multi-label ``[B, C]`` float labels, cross-entropy for class indices ``[B]``."""
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    return F.cross_entropy(logits.float(), labels.long())


def auc_scores(logits: Tensor, labels: Tensor, *, task: str, class_names: list[str]) -> tuple[float, dict[str, float]]:
    """``(AUC, per-label AUC)`` from logits ``[N, K]``.

    binary: score = softmax probability of ``class_names[1]``; multiclass: macro one-vs-rest;
    multilabel: mean over labels whose AUC is defined (per-label NaN otherwise).
    """
    logits = logits.float()
    if not bool(torch.isfinite(logits).all()):
        raise UserError("the model's outputs are NaN or infinite: training diverged; lower --lr (or check the "
                        "encoder file), then run again with --overwrite")
    if task == "multilabel":
        mean, per = multilabel_auc(torch.sigmoid(logits), labels)
        return mean, dict(zip(class_names, per))
    probs = torch.softmax(logits, dim=1)
    if task == "binary":
        auc = binary_auc(probs[:, 1], labels)
        return auc, {class_names[1]: auc}
    per = {c: binary_auc(probs[:, k], (labels == k).long()) for k, c in enumerate(class_names)}
    return multiclass_auc(probs, labels), per


# ----------------------------------------------------------------------------------------------
# Augmentation


def random_crop_rotate(
    x: Tensor,
    *,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.8, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    max_degrees: float = 10.0,
    hflip: bool = False,
) -> Tensor:
    """Random resized crop + small rotation (+ optional flip) as one affine warp per image.

    Args:
        x: float images ``[B, C, H, W]`` in ``[0, 1]`` (any device).
        generator: CPU generator; the draws do not depend on the device.
        scale: crop area as a fraction of the image; ratio: crop aspect ratio range.

    Returns:
        ``[B, C, H, W]``; pixels that come from outside the image are 0 (black, as the film border).
    """
    b = x.shape[0]
    u = torch.rand(b, 5, generator=generator, dtype=torch.float64)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)  # crop width / image width
    h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    cx = (2 * u[:, 2] - 1) * (1 - w)  # crop centre, normalised [-1, 1] coordinates
    cy = (2 * u[:, 3] - 1) * (1 - h)
    angle = torch.deg2rad((2 * u[:, 4] - 1) * max_degrees)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0).double() if hflip else torch.ones(b, dtype=torch.float64)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Output grid -> input coordinates: rotate the scaled (and maybe mirrored) grid, then shift.
    theta = torch.stack(
        [torch.stack([cos * w * flip, -sin * h, cx], 1), torch.stack([sin * w * flip, cos * h, cy], 1)], 1
    ).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ----------------------------------------------------------------------------------------------
# Training


@torch.no_grad()
def predict_logits(
    model: nn.Module, inputs: Tensor, *, prepare: Callable[[Tensor], Tensor], batch_size: int, device: torch.device, amp: bool = False
) -> Tensor:
    """``model(prepare(batch))`` over all ``inputs`` in eval mode; float32 logits ``[N, K]`` on the CPU."""
    model.eval()
    out = []
    for start in range(0, len(inputs), batch_size):
        x = prepare(inputs[start : start + batch_size].to(device))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out.append(model(x).float().cpu())
    return torch.cat(out)


def fit(
    model: nn.Module,
    *,
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    task: str,
    class_names: list[str],
    optimizer: torch.optim.Optimizer,
    epochs: int,
    warmup_epochs: int,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    prepare_train: Callable[[Tensor], Tensor] = lambda x: x,
    prepare_eval: Callable[[Tensor], Tensor] = lambda x: x,
    amp: bool = False,
    log_prefix: str = "",
) -> FitResult:
    """Train ``model`` on ``(train_x, train_y)``; keep the epoch with the best validation AUC
    (ties broken by the lower validation loss).

    ``train_x`` / ``val_x`` are features ``[N, D]`` (linear probe: ``model`` is the head) or
    ``uint8`` images ``[N, 1, H, W]`` (full: ``prepare_*`` augment and normalise them). The lr
    follows a per-step cosine with linear warm-up (at most half the epochs). On return ``model``
    holds the best weights.
    """
    n = len(train_x)
    # Full batches only: BatchNorm (linear head) cannot train on a batch of one, and a tiny
    # last batch would get a full-size step.
    steps_per_epoch = max(1, n // batch_size)
    total = epochs * steps_per_epoch
    scheduler = CosineLRScheduler(
        optimizer, t_initial=total, warmup_t=min(warmup_epochs, epochs // 2) * steps_per_epoch, warmup_lr_init=0.0, lr_min=0.0, t_in_epochs=False
    )
    best_state, best_auc, best_loss, best_epoch = None, -math.inf, math.inf, 0
    history: list[dict[str, float]] = []
    step = 0
    log_every = max(1, epochs // 10)
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=generator)
        losses = []
        for k in range(steps_per_epoch):
            idx = perm[k * batch_size : (k + 1) * batch_size] if n >= batch_size else perm
            x, y = prepare_train(train_x[idx].to(device)), train_y[idx].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = classification_loss(model(x), y, task=task)
            if not torch.isfinite(loss):
                raise UserError(f"loss became {loss.item()} at epoch {epoch}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(num_updates=step)
            losses.append(loss.item())
        logits = predict_logits(model, val_x, prepare=prepare_eval, batch_size=batch_size, device=device, amp=amp)
        val_auc, _ = auc_scores(logits, val_y, task=task, class_names=class_names)
        val_loss = classification_loss(logits, val_y, task=task).item()
        history.append(dict(epoch=epoch, train_loss=float(np.mean(losses)), val_loss=val_loss, val_auc=val_auc, lr=optimizer.param_groups[-1]["lr"]))
        # Best val AUC; ties (a small val set saturates at 1.0) go to the lower val loss.
        if math.isfinite(val_auc) and (val_auc, -val_loss) > (best_auc, -best_loss):
            best_auc, best_loss, best_epoch = val_auc, val_loss, epoch
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if epoch % log_every == 0 or epoch == epochs:
            logger.info(
                "%sepoch %d/%d  train loss %.4f  val loss %.4f  val AUC %.4f", log_prefix, epoch, epochs, history[-1]["train_loss"], val_loss, val_auc
            )
    if best_state is None:
        logger.warning("%sthe validation AUC was never defined (one class only?); keeping the last epoch", log_prefix)
        best_auc = math.nan
    else:
        model.load_state_dict(best_state)
    return FitResult(best_epoch=best_epoch, best_val_auc=best_auc, history=history)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _jsonable(x: Any) -> Any:
    """NaN/inf -> None (strict JSON), recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


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


def _fingerprint(cfg: ClsFinetuneConfig) -> dict[str, Any]:
    return {k: v for k, v in cfg.to_dict().items() if k not in _RESUME_IGNORED}


def run_seed(cfg: ClsFinetuneConfig, data: _Data, seed: int, *, feature_cache: dict) -> dict[str, Any]:
    """Train and test one seed; returns the metrics dict (also written to ``seed<k>/metrics.json``)."""
    t0 = time.time()
    _seed_everything(seed)
    device = resolve_device(cfg.device)
    amp = device.type == "cuda"
    model, file_norm = create_vit_encoder(
        cfg.backbone,
        encoder_path=cfg.encoder,
        img_size=cfg.img_size,
        drop_path_rate=cfg.drop_path if cfg.mode == "full" else 0.0,
        model_kwargs=cfg.model_kwargs,
    )
    norm = file_norm or norm_from_images(data.train.images)
    attach_head(model, num_outputs=len(data.class_names), mode=cfg.mode, global_pool=cfg.global_pool)
    model.to(device)
    generator = torch.Generator().manual_seed(seed)
    common = dict(
        task=data.task, class_names=data.class_names, epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
        batch_size=cfg.batch_size, generator=generator, device=device, log_prefix=f"[seed {seed}] ",
    )
    if cfg.mode == "linear":
        # Pretrained features do not depend on the seed: compute them once for all seeds.
        if cfg.encoder is not None and "features" in feature_cache:
            feats = feature_cache["features"]
        else:
            t1 = time.time()
            feats = {
                name: extract_features(model, getattr(data, name).images, norm=norm, batch_size=max(cfg.batch_size, 64), device=device, amp=amp)
                for name in ("train", "val", "test")
            }
            logger.info("[seed %d] features extracted in %.1fs", seed, time.time() - t1)
            if cfg.encoder is not None:
                feature_cache["features"] = feats
        head = model.head
        optimizer = create_optimizer_v2(head, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay)
        result = fit(head, train_x=feats["train"], train_y=data.train.labels, val_x=feats["val"], val_y=data.val.labels, optimizer=optimizer, **common)
        test_logits = predict_logits(head, feats["test"], prepare=lambda x: x, batch_size=cfg.batch_size, device=device)
    else:
        optimizer = create_optimizer_v2(
            model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay if cfg.layer_decay < 1 else None
        )
        aug = dict(scale=(cfg.min_crop_scale, 1.0), max_degrees=cfg.max_rotation, hflip=cfg.hflip)

        def prepare_train(x: Tensor) -> Tensor:
            return to_model_input(random_crop_rotate(x.float() / 255.0, generator=generator, **aug), norm)

        result = fit(
            model, train_x=data.train.images, train_y=data.train.labels, val_x=data.val.images, val_y=data.val.labels,
            optimizer=optimizer, prepare_train=prepare_train, prepare_eval=lambda x: to_model_input(x, norm), amp=amp, **common,
        )
        test_logits = predict_logits(model, data.test.images, prepare=lambda x: to_model_input(x, norm), batch_size=cfg.batch_size, device=device, amp=amp)
    test_auc, per_label = auc_scores(test_logits, data.test.labels, task=data.task, class_names=data.class_names)
    seed_dir = cfg.out / f"seed{seed}"
    seed_dir.mkdir(parents=True, exist_ok=True)
    model_name, model_kwargs, _ = resolve_encoder_config(cfg.backbone, encoder_path=cfg.encoder, model_kwargs=cfg.model_kwargs)
    if cfg.save_model:
        info = ClassifierInfo(
            model_name=model_name, model_kwargs=model_kwargs, img_size=cfg.img_size, mode=cfg.mode, global_pool=cfg.global_pool,
            task=data.task, class_names=data.class_names, norm=norm, extra={"encoder": str(cfg.encoder) if cfg.encoder else None, "seed": seed},
        )
        save_classifier(model.cpu(), seed_dir / "model.safetensors", info=info)
    metrics = {
        "method": cfg.label,
        "seed": seed,
        "mode": cfg.mode,
        "task": data.task,
        "test_auc": test_auc,
        "per_label_auc": per_label,
        "val_auc": result.best_val_auc,
        "best_epoch": result.best_epoch,
        "class_names": data.class_names,
        "positive_class": data.class_names[1] if data.task == "binary" else None,
        "n_train": len(data.train.paths),
        "n_val": len(data.val.paths),
        "n_test": len(data.test.paths),
        "skipped_files": data.train.skipped + data.val.skipped + data.test.skipped,
        "norm": {**norm.to_dict(), "source": "encoder" if file_norm is not None else "train"},
        "model_name": model_name,
        "splits": data.notes,
        "time_s": time.time() - t0,
        "history": result.history,
        "config": _fingerprint(cfg),
    }
    # The layout priormim.training.results aggregates (shared with the other finetune commands);
    # an undefined AUC is left out, so it shows as n/a there.
    values = {"auc": test_auc, **({f"auc_{k}": v for k, v in per_label.items()} if len(per_label) > 1 else {})}
    metrics["test"] = {"summary": {k: {"mean": v, "std": 0.0, "n": len(data.test.paths)} for k, v in values.items() if math.isfinite(v)}}
    atomic_write_bytes(seed_dir / "metrics.json", json.dumps(_jsonable(metrics), indent=2).encode())
    logger.info("[seed %d] test AUC %.4f (best epoch %d, val AUC %.4f)", seed, test_auc, result.best_epoch, result.best_val_auc)
    return metrics


def _load_finished(cfg: ClsFinetuneConfig, seed: int) -> dict[str, Any] | None:
    path = cfg.out / f"seed{seed}" / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"is not valid JSON ({exc}); delete it to run seed {seed} again", path) from exc
    old, new = metrics.get("config", {}), _fingerprint(cfg)
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        raise UserError(
            f"was written with different settings ({', '.join(diff)}); use another --out or delete {cfg.out}/seed*/ to start over",
            path,
        )
    return metrics


def _summary_keys(metrics: dict[str, Any]) -> list[str]:
    labels = list(metrics["per_label_auc"])
    return ["auc"] + ([f"auc_{name}" for name in labels] if len(labels) > 1 else [])


def write_results(out: Path, seed_dirs: list[Path], *, title: str) -> None:
    """``results.md`` and ``results.csv``: test AUC (and per-label AUCs), mean ± std over seeds.

    Aggregation and the CSV are ``priormim.training.results``' (the same table as the other
    ``finetune`` commands); the Markdown is written here because that module's footer
    describes segmentation metrics.
    """
    metrics = [json.loads((d / "metrics.json").read_text()) for d in seed_dirs]
    keys = _summary_keys(metrics[0])
    rows = aggregate_runs(seed_dirs, metrics=keys)
    write_results_table(rows, out, title, metrics=keys)
    m0 = metrics[0]
    heads = ["test AUC", *(f"AUC {k[len('auc_'):]}" for k in keys[1:])]
    md = [f"# {title}", "", "| method | " + " | ".join(heads) + " | seeds |",
          "|" + "---|" * (len(keys) + 2)]
    for r in rows:
        cells = [f"{r.mean[k]:.4f} ± {r.std[k]:.4f}" if r.n_runs > 1 else f"{r.mean[k]:.4f}" for k in keys]
        md.append(f"| {r.method} | " + " | ".join(cells) + f" | {', '.join(map(str, r.seeds))} |")
    md += [
        "",
        f"Test AUC: mean ± sample std over seeds. Task {m0['task']}"
        + (f", score = probability of '{m0['positive_class']}'" if m0.get("positive_class") else "")
        + (", AUC = mean over labels" if m0["task"] == "multilabel" else ", macro one-vs-rest AUC" if m0["task"] == "multiclass" else "")
        + f". Images: {m0['n_train']} train, {m0['n_val']} val, {m0['n_test']} test"
        + (f"; {len(m0['skipped_files'])} unreadable files skipped" if m0["skipped_files"] else "") + ".",
    ]
    md += [f"{note[0].upper()}{note[1:]}." for note in m0.get("splits", [])]
    atomic_write_bytes(out / "results.md", ("\n".join(md) + "\n").encode())


def finetune_classification(cfg: ClsFinetuneConfig, *, overwrite: bool = False) -> ClsRunResult:
    """Run every seed of ``cfg`` (finished seeds are read back, not re-run) and write the results.

    With ``overwrite`` the seeds and results already in ``cfg.out`` are removed first (a seed
    finished with other settings is otherwise a UserError). Returns the per-seed test AUCs and
    their mean ± std. Raises UserError for bad input.
    """
    from priormim.outputs import check_writable_dir, claim_output, refuse_input_overlap

    cfg = cfg.resolved()
    refuse_input_overlap(cfg.out, [("--train", cfg.train), ("--test", cfg.test), ("--val", cfg.val)], around=False)
    if overwrite:
        claim_output(cfg.out, markers=("seed*/metrics.json", "results.md"), owned=("seed*", "results.csv"), overwrite=True)
    check_writable_dir(cfg.out)
    finished = {s: _load_finished(cfg, s) for s in cfg.seeds}
    todo = [s for s in cfg.seeds if finished[s] is None]
    if len(todo) < len(cfg.seeds):
        logger.info("seeds %s already finished; skipping them", [s for s in cfg.seeds if s not in todo])
    if todo:
        data = load_data(cfg)
        logger.info(
            "%s %s: %d train / %d val / %d test images, %d classes (%s)",
            cfg.mode, data.task, len(data.train.paths), len(data.val.paths), len(data.test.paths), len(data.class_names), ", ".join(data.class_names),
        )
        cache: dict = {}
        for seed in todo:
            finished[seed] = run_seed(cfg, data, seed, feature_cache=cache)
    metrics = [finished[s] for s in cfg.seeds]
    write_results(cfg.out, [cfg.out / f"seed{s}" for s in cfg.seeds], title=f"Classification: {cfg.label}")
    aucs = [_nan(m["test_auc"]) for m in metrics]
    mean, std = mean_std(aucs)
    per_label = {}
    for name in metrics[0]["per_label_auc"]:
        values = [_nan(m["per_label_auc"].get(name)) for m in metrics]
        per_label[name] = mean_std([v for v in values if math.isfinite(v)])
    return ClsRunResult(out_dir=cfg.out, seeds=list(cfg.seeds), test_auc=aucs, mean_auc=mean, std_auc=std, per_label=per_label, metrics=metrics)
