"""Building, saving and loading segmenters (``config.json`` + ``model.safetensors``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from priormim.errors import UserError
from priormim.io import atomic_write_bytes
from priormim.models.seg import NormStats, ViTSegmenter, create_vit_encoder, resolve_encoder_config
from priormim.models.unet import UNet
from priormim.training.seg.config import CONFIG_FORMAT, SegFinetuneConfig

log = logging.getLogger(__name__)

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
