"""Rebuild a pretraining run's model (encoder + decoder) from its folder.

``priormim pretrain`` writes ``RUN/config.yaml`` (the resolved recipe) and ``RUN/last.ckpt``
(``torch.load(weights_only=True)``-safe, key ``"model"`` = the model's state dict). This module
reads those two files with no training code, so :meth:`MaskedAutoencoder.from_run` stays in the
models layer. ``from_run`` is defined here and attached to :class:`MaskedAutoencoder` when this
module is imported (``priormim/models/__init__.py`` imports it, so it is always there): ``mae``
never imports this module, which imports ``mae``, ``vpmim`` and the zoo. Only MAE-family runs (mae, vasomim and its ablations, vpmim) are rebuilt here; zoo
methods (simmim, dino, ...) are built by ``priormim.training.pretrain.build_model``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from priormim.config import PretrainConfig, load_config
from priormim.errors import UserError
from priormim.models.mae import MaskedAutoencoder

RUN_CONFIG = "config.yaml"
RUN_CHECKPOINT = "last.ckpt"


def mae_kwargs(cfg: PretrainConfig) -> dict[str, Any]:
    """``MaskedAutoencoder`` constructor kwargs for a recipe's ``model.*`` block."""
    m = cfg.model
    kwargs: dict[str, Any] = dict(
        encoder_name=m.encoder,
        img_size=m.img_size,
        in_chans=m.in_chans,
        encoder_kwargs=m.encoder_kwargs,
        decoder_embed_dim=m.decoder_embed_dim,
        decoder_depth=m.decoder_depth,
        decoder_num_heads=m.decoder_num_heads,
        norm_pix_loss=m.norm_pix_loss,
        drop_path_rate=m.drop_path_rate,
    )
    if m.encoder_init != "auto":  # auto: each model class's own reference default
        kwargs["encoder_init"] = m.encoder_init
    return kwargs


def read_run(run: str | Path, *, checkpoint: str | Path | None = None) -> tuple[PretrainConfig, dict[str, Any]]:
    """``(config, checkpoint dict)`` of a run folder; UserError naming the missing or broken file."""
    run = Path(run)
    if not run.is_dir():
        raise UserError("is not a run folder; pass the --out folder of `priormim pretrain`", run)
    cfg_path = run / RUN_CONFIG
    if not cfg_path.is_file():
        raise UserError(f"has no {RUN_CONFIG}; pass the --out folder of `priormim pretrain`", run)
    cfg = load_config(cfg_path)
    ckpt_path = Path(checkpoint) if checkpoint is not None else run / RUN_CHECKPOINT
    if not ckpt_path.is_file():
        raise UserError("checkpoint does not exist; the run has not finished an epoch yet", ckpt_path)
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle errors, ...
        raise UserError(f"checkpoint is corrupt or truncated ({type(exc).__name__}); pass another "
                        "checkpoint-NNNN.ckpt of the run", ckpt_path) from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UserError("is not a priormim pretraining checkpoint (no 'model' entry)", ckpt_path)
    return cfg, ckpt


def model_from_run(run: str | Path, *, checkpoint: str | Path | None = None) -> MaskedAutoencoder:
    """The run's MAE / VasoMIM / VP-MIM model with its trained weights, in eval mode, on CPU.

    A VP-MIM run with ``model.pyramid_scales`` gives a ``VPMIMAutoencoder`` (a MaskedAutoencoder).
    The result carries ``run_config`` (the :class:`PretrainConfig`) and ``run_epoch`` (0-based).
    """
    from priormim.models.zoo import ZOO_MODELS

    cfg, ckpt = read_run(run, checkpoint=checkpoint)
    if cfg.method in ZOO_MODELS:
        raise UserError(f"method '{cfg.method}' is a zoo model, not an MAE; rebuild it with "
                        "priormim.training.pretrain.build_model(config)", Path(run) / RUN_CONFIG)
    cls, extra = MaskedAutoencoder, {}
    if cfg.model.pyramid_scales:
        from priormim.models.vpmim import VPMIMAutoencoder

        cls = VPMIMAutoencoder
        extra = {"pyramid_scales": cfg.model.pyramid_scales, "pyramid_weights": cfg.model.pyramid_weights}
    try:
        model = cls(**mae_kwargs(cfg), **extra)
    except ValueError as exc:
        raise UserError(f"model: {exc}", Path(run) / RUN_CONFIG) from exc
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"the checkpoint does not fit {RUN_CONFIG} ({first}); was config.yaml edited?", run) from exc
    model.run_config = cfg
    model.run_epoch = int(ckpt.get("epoch", -1))
    return model.eval()


def _from_run(cls: type[MaskedAutoencoder], run: str | Path, *, checkpoint: str | Path | None = None) -> MaskedAutoencoder:
    """The trained model of a ``priormim pretrain`` folder (``config.yaml`` + ``last.ckpt``), eval mode.

    ``checkpoint`` picks another file of the run (e.g. ``RUN/checkpoint-0020.ckpt``). See
    :func:`model_from_run`.
    """
    model = model_from_run(run, checkpoint=checkpoint)
    if not isinstance(model, cls):
        raise UserError(f"the run holds a {type(model).__name__}, not a {cls.__name__}", run)
    return model


MaskedAutoencoder.from_run = classmethod(_from_run)  # mae.py cannot import this module (it imports mae)
