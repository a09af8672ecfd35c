"""ViT image classifiers for linear probing and full fine-tuning (as in facebookresearch/mae).

The classifier is the timm ``VisionTransformer`` encoder itself with a new head, so timm's
``group_matcher`` (layer-wise lr decay) and ``no_weight_decay`` keep working:

* ``mode="linear"`` (MAE ``main_linprobe``): head = ``BatchNorm1d(D, affine=False, eps=1e-6)``
  then ``Linear(D, K)``; the BatchNorm whitens the frozen features so one learning rate suits
  any encoder. Every encoder parameter is frozen.
* ``mode="full"`` (MAE ``main_finetune``): head = ``Linear(D, K)`` with a near-zero init
  (std 2e-5) so that early updates go to the pretrained encoder, not to a random head.

Pooling is timm's: ``"token"`` (class token) or ``"avg"`` (mean of the patch tokens).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers import trunc_normal_
from timm.models import VisionTransformer
from torch import Tensor, nn

from priormim.errors import UserError
from priormim.models.vit_names import require_vit
from priormim.models.seg import NormStats

MODES = ("linear", "full")
POOLS = ("token", "avg")


def attach_head(
    encoder: VisionTransformer, *, num_outputs: int, mode: str, global_pool: str = "token"
) -> VisionTransformer:
    """Give a head-less timm ViT a classification head, in place, and return it.

    Args:
        encoder: timm ``VisionTransformer`` (e.g. from ``create_vit_encoder``).
        num_outputs: K, the number of logits (classes, or labels when multi-label).
        mode: ``"linear"`` (BatchNorm + Linear head, encoder frozen) or ``"full"``.
        global_pool: ``"token"`` or ``"avg"``.

    Returns:
        The same module; ``model(x)`` maps ``[B, 1, H, W]`` to logits ``[B, K]``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if global_pool not in POOLS:
        raise ValueError(f"global_pool must be one of {POOLS}, got {global_pool!r}")
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
    encoder.reset_classifier(num_outputs, global_pool=global_pool)
    linear = encoder.head
    nn.init.zeros_(linear.bias)
    if mode == "linear":
        trunc_normal_(linear.weight, std=0.01)
        encoder.head = nn.Sequential(nn.BatchNorm1d(linear.in_features, affine=False, eps=1e-6), linear)
        for name, p in encoder.named_parameters():
            p.requires_grad = name.startswith("head.")
    else:
        trunc_normal_(linear.weight, std=2e-5)
        for p in encoder.parameters():
            p.requires_grad = True
    return encoder


def pooled_features(model: VisionTransformer, x: Tensor) -> Tensor:
    """Pooled encoder features, the head's input.

    Args:
        model: ViT with a head from :func:`attach_head`.
        x: normalised images ``[B, 1, H, W]``.

    Returns:
        ``[B, D]``; ``model.head(pooled_features(model, x))`` equals ``model(x)``.
    """
    return model.forward_head(model.forward_features(x), pre_logits=True)


@torch.no_grad()
def extract_features(
    model: VisionTransformer,
    images: Tensor,
    *,
    norm: NormStats,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    amp: bool | torch.dtype | None = False,
) -> Tensor:
    """Frozen-encoder features for a whole image set (linear probing without augmentation).

    Args:
        model: ViT; put in eval mode here (no dropout / drop-path).
        images: ``uint8 [N, 1, H, W]`` (0..255) or float ``[N, 1, H, W]`` in ``[0, 1]``.
        norm: grey-level normalisation applied before the encoder.
        amp: autocast dtype (``torch.bfloat16`` / ``torch.float16``; None or False: fp32); True:
            bfloat16 on CUDA only.

    Returns:
        ``float32 [N, D]`` on the CPU.
    """
    device = torch.device(device)
    dtype = (torch.bfloat16 if device.type == "cuda" else None) if amp is True else (amp or None)
    model.eval().to(device)
    out = []
    for start in range(0, len(images), batch_size):
        x = to_model_input(images[start : start + batch_size].to(device), norm)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out.append(pooled_features(model, x).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.num_features)


def to_model_input(images: Tensor, norm: NormStats) -> Tensor:
    """``uint8`` (0..255) or float (0..1) images ``[B, 1, H, W]`` -> normalised ``float32``."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return (x - norm.mean) / norm.std


# ----------------------------------------------------------------------------------------------
# Saving and loading a fine-tuned classifier


@dataclass
class ClassifierInfo:
    """What a saved classifier needs to be rebuilt and used on new images."""

    model_name: str
    model_kwargs: dict[str, Any]
    img_size: int
    mode: str
    global_pool: str
    task: str  # "binary" | "multiclass" | "multilabel"
    class_names: list[str]
    norm: NormStats
    extra: dict[str, Any] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, str]:
        return {
            "format": "pt",
            "priormim_model_name": self.model_name,
            "priormim_model_kwargs": json.dumps(self.model_kwargs),
            "priormim_norm_mean": repr(float(self.norm.mean)),
            "priormim_norm_std": repr(float(self.norm.std)),
            "priormim_classifier": json.dumps(
                {
                    "img_size": self.img_size,
                    "mode": self.mode,
                    "global_pool": self.global_pool,
                    "task": self.task,
                    "class_names": list(self.class_names),
                    **self.extra,
                }
            ),
        }


def save_classifier(model: VisionTransformer, path: str | Path, *, info: ClassifierInfo) -> Path:
    """Write the whole classifier (encoder + head) as safetensors with :class:`ClassifierInfo` metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")  # write then rename: never a half-written file
    try:
        save_file(state, str(tmp), metadata=info.to_metadata())
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write the classifier ({exc.strerror or exc})", path) from exc
    return path


def load_classifier(path: str | Path) -> tuple[VisionTransformer, ClassifierInfo]:
    """Rebuild a classifier written by :func:`save_classifier`; returns ``(model in eval mode, info)``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError("classifier file does not exist; pass the model.safetensors of a finetune run", path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
        extra = json.loads(meta["priormim_classifier"])
        info = ClassifierInfo(
            model_name=meta["priormim_model_name"],
            model_kwargs=json.loads(meta["priormim_model_kwargs"]),
            img_size=int(extra.pop("img_size")),
            mode=extra.pop("mode"),
            global_pool=extra.pop("global_pool"),
            task=extra.pop("task"),
            class_names=list(extra.pop("class_names")),
            norm=NormStats(float(meta["priormim_norm_mean"]), float(meta["priormim_norm_std"])),
            extra=extra,
        )
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        raise UserError(f"is not a priormim classifier file ({exc}); pass the model.safetensors of a finetune run", path) from exc
    except Exception as exc:  # safetensors' own header errors
        raise UserError(f"cannot read as safetensors ({exc})", path) from exc
    require_vit(info.model_name, path=path)
    model = timm.create_model(
        info.model_name, pretrained=False, in_chans=1, num_classes=0, img_size=info.img_size, **info.model_kwargs
    )
    attach_head(model, num_outputs=len(info.class_names), mode=info.mode, global_pool=info.global_pool)
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval(), info
