"""Classification fine-tuning configuration (per-mode defaults, checks) and result types."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from priormim.errors import UserError

FORMATS = ("auto", "folders", "csv", "cxr14", "rsna")

# MAE defaults (main_linprobe / main_finetune); lr = base_lr * batch_size / 256.
MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "linear": dict(epochs=90, warmup_epochs=10, batch_size=256, base_lr=0.1, weight_decay=0.0, opt="momentum", global_pool="token"),
    "full": dict(epochs=50, warmup_epochs=5, batch_size=64, base_lr=1e-3, weight_decay=0.05, opt="adamw", global_pool="avg"),
}

# Config fields that may change between a run and its resumption without changing results.
# amp and progress as pretraining's train.amp / train.progress (RESUMABLE_KEYS).
_RESUME_IGNORED = ("seeds", "out", "device", "num_workers", "save_model", "amp", "progress")
AMP_MODES = ("auto", "bf16", "fp16", "off")


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
    # The run's AMP policy (priormim.training.loop.autocast_context): auto = bf16 on CUDA, off on
    # the CPU. It covers feature extraction and full fine-tuning; the linear head trains in fp32.
    amp: str = "auto"
    progress: bool = True  # tqdm bars on stderr
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
            encoder=None if self.encoder is None or str(self.encoder).lower() in ("", "none", "scratch") else _abs(self.encoder),
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
            (cfg.amp in AMP_MODES, f"amp must be one of {', '.join(AMP_MODES)}, got {cfg.amp!r}"),
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

