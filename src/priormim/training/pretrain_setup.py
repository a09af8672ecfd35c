"""Pretraining set-up: the method and its network, masking, lr schedule, segmentor, run folder, export.

Everything :func:`priormim.training.pretrain.pretrain` builds before the first step, and the
encoder export after the last. The method comes from the registry
(:func:`priormim.methods.build_method`); nothing here asks what type a model is.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from timm.scheduler import CosineLRScheduler
from torch import nn

from priormim.config import PretrainConfig
from priormim.errors import UserError
from priormim.losses import freeze
from priormim.masking import MaskingStrategy, build_masking
from priormim.methods import build_method
from priormim.models.export import export_encoder
from priormim.training import distributed as D
from priormim.training.checkpoint import latest_valid_checkpoint
from priormim.training.lr_schedule import MAECosineSchedule

log = logging.getLogger("priormim.training.pretrain")

__all__ = [
    "RUN_MARKERS",
    "RUN_OWNED",
    "build_lr_schedule",
    "build_masking_strategy",
    "build_method",
    "build_model",
    "export_run_encoder",
    "masking_progress",
    "needs_segmentor",
    "prepare_segmentor",
]

RUN_MARKERS = ("last.ckpt", "previous.ckpt", "checkpoint-*.ckpt", "encoder.safetensors", "log.jsonl", "history.json")
RUN_OWNED = ("config.yaml", "tb", "segmentor.safetensors", ".*.tmp")


def build_model(cfg: PretrainConfig) -> nn.Module:
    """The network of ``cfg.method`` (what checkpoints hold and :func:`export_run_encoder` exports).

    A zoo method (simmim, amt, hpm, deblurmim, crossmae, mocov3, dino, chexworld) gets its class
    with ``model.method_kwargs``; mae, vasomim* and vpmim get MAE, or VP-MIM's pyramid model when
    ``model.pyramid_scales`` is set. Same as ``build_method(cfg).model``.
    """
    return build_method(cfg).model


def masking_progress(cfg: PretrainConfig, epoch: int) -> float:
    """Training progress the masking schedule sees during ``epoch`` (0-based).

    ``official`` (VasoMIM code): ``(epoch + 1) / epochs``, so beta = 0.5 (e + 1) / E;
    ``priormim``: ``epoch / (epochs - 1)`` (1 for a one-epoch run).
    """
    epochs = cfg.optim.epochs
    if cfg.masking.schedule == "official":
        return (epoch + 1) / epochs
    return 1.0 if epochs == 1 else epoch / (epochs - 1)


def build_lr_schedule(cfg: PretrainConfig, optimizer: torch.optim.Optimizer, *, lr: float, steps_per_epoch: int):
    """MAE's per-update cosine (``optim.schedule=mae``) or timm's (``timm``); both ``step_update``."""
    accum = cfg.optim.accum_iter
    if cfg.optim.schedule == "mae":
        return MAECosineSchedule(optimizer, lr=lr, min_lr=cfg.optim.min_lr, warmup_epochs=cfg.optim.warmup_epochs,
                                 epochs=cfg.optim.epochs, steps_per_epoch=steps_per_epoch, accum_iter=accum)
    updates_per_epoch = max(1, steps_per_epoch // accum)
    return CosineLRScheduler(
        optimizer,
        t_initial=cfg.optim.epochs * updates_per_epoch,
        lr_min=cfg.optim.min_lr,
        warmup_t=cfg.optim.warmup_epochs * updates_per_epoch,
        warmup_lr_init=lr * 1e-3,
        t_in_epochs=False,
    )


def build_masking_strategy(cfg: PretrainConfig) -> MaskingStrategy:
    try:
        return build_masking(cfg.masking.name, mask_ratio=cfg.masking.mask_ratio, **cfg.masking.kwargs)
    except (ValueError, TypeError) as exc:
        raise UserError(f"masking: {exc}") from exc


def needs_segmentor(cfg: PretrainConfig) -> bool:
    """The recipe uses the frozen consistency segmentor (consistency loss or segmentor guidance)."""
    return cfg.consistency.enabled or cfg.masking.segmentor_weight > 0


def prepare_segmentor(cfg: PretrainConfig, paths, prior_loader, out: Path, dist: D.DistInfo, device) -> nn.Module:
    """Load the frozen consistency segmentor, training it on the prior's pseudo-labels if needed."""
    from priormim.models.segmentor import load_segmentor
    from priormim.training.segmentor import SegmentorTrainConfig, train_segmentor

    path = Path(cfg.consistency.segmentor) if cfg.consistency.segmentor else out / "segmentor.safetensors"
    if not path.exists():
        if cfg.consistency.segmentor:
            raise UserError("segmentor file does not exist; train one with `priormim train-segmentor`", path)
        if prior_loader is None or cfg.data.prior != "vessel":
            raise UserError("the consistency loss and masking.segmentor_weight need vessel priors (data.prior=vessel) "
                            "or consistency.segmentor=PATH")
        if dist.is_main:
            train_segmentor(
                SegmentorTrainConfig(
                    recipe=cfg.consistency.segmentor_recipe,
                    arch=cfg.consistency.segmentor_arch,
                    epochs=cfg.consistency.segmentor_epochs,
                    base_channels=cfg.consistency.segmentor_base_channels,
                    img_size=cfg.model.img_size,
                    seed=cfg.train.seed,
                    progress=cfg.train.progress,
                ),
                paths=paths, prior_loader=prior_loader, out=path, device=device,
            )
        D.barrier()
    return freeze(load_segmentor(path).to(device))


def export_run_encoder(model: nn.Module, cfg: PretrainConfig, path: Path) -> Path:
    """Write ``model.encoder`` only (never a zoo model's teacher, heads or predictor)."""
    kwargs = dict(cfg.model.encoder_kwargs)
    kwargs["img_size"] = cfg.model.img_size
    return export_encoder(
        model.encoder, path, model_name=cfg.model.encoder, model_kwargs=kwargs,
        norm_mean=cfg.data.norm_mean, norm_std=cfg.data.norm_std, method=cfg.method,
    )


def claim_run_folder(cfg: PretrainConfig, out: Path, *, resume: bool, overwrite: bool) -> None:
    """Rank 0: never write over an input, refuse a finished run unless resume/overwrite."""
    from priormim.outputs import check_writable_dir, claim_output, refuse_input_overlap

    refuse_input_overlap(out, [("the training data", cfg.data.images), ("data.priors", cfg.data.priors),
                               ("consistency.segmentor", cfg.consistency.segmentor)], inside=False, around=False)
    claim_output(out, markers=RUN_MARKERS, owned=RUN_OWNED, resume=resume, overwrite=overwrite)
    check_writable_dir(out)


def latest_checkpoint_path(out: Path) -> Path | None:
    found = latest_valid_checkpoint(out)
    return None if found is None else found[0]


def loader_worker_init(worker_id: int) -> None:
    # Decoding and cropping one image needs no intra-op threads; N workers x M threads would
    # oversubscribe the cores that also feed the GPU.
    torch.set_num_threads(1)

