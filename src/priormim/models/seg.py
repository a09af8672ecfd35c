"""ViT encoders from exported checkpoints, and a ViT + conv-decoder vessel segmenter.

:func:`create_vit_encoder` builds a timm ``VisionTransformer`` (``in_chans=1``, no head) and
optionally loads an encoder exported by ``priormim export``: a safetensors file with timm key
names whose metadata names the architecture and the grey-level normalisation of its
pretraining data.

:class:`ViTSegmenter` is a UNETR-like segmenter: features from several ViT depths (all at
``1/patch`` resolution) are upsampled progressively and fused with shallower ones, and a light
conv stem on the raw image supplies the ``1/2`` and full-resolution skips that thin vessels need.
It maps ``[B, 1, H, W]`` images to ``[B, 1, H, W]`` logits for any ``H, W``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models import VisionTransformer
from torch import nn

from priormim.errors import UserError
from priormim.models.vit_names import require_vit

# Metadata keys written into exported encoder files (see ``priormim export``).
META_MODEL_NAME = "priormim_model_name"
META_MODEL_KWARGS = "priormim_model_kwargs"
META_NORM_MEAN = "priormim_norm_mean"
META_NORM_STD = "priormim_norm_std"
META_METHOD = "priormim_method"

# Keys the caller always decides, whatever the file says.
_FORCED_KWARGS = ("img_size", "in_chans", "num_classes", "drop_path_rate")


@dataclass(frozen=True)
class NormStats:
    """Grey-level normalisation ``(x - mean) / std`` for images in ``[0, 1]``."""

    mean: float
    std: float

    def to_dict(self) -> dict[str, float]:
        return {"mean": float(self.mean), "std": float(self.std)}


@dataclass
class EncoderMetadata:
    """What an exported encoder file says about itself (all fields optional in the file)."""

    model_name: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    norm: NormStats | None = None
    method: str | None = None


def read_encoder_metadata(path: str | Path) -> EncoderMetadata:
    """Read the ``priormim_*`` metadata of an exported safetensors encoder.

    Raises UserError if the file is missing, is not safetensors, or has malformed metadata.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError("encoder file does not exist; pass the .safetensors written by `priormim export`, or `none`", path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise UserError(f"cannot read as safetensors ({exc}); pass the file written by `priormim export`", path) from exc
    out = EncoderMetadata(model_name=meta.get(META_MODEL_NAME) or None, method=meta.get(META_METHOD) or None)
    if meta.get(META_MODEL_KWARGS):
        try:
            kwargs = json.loads(meta[META_MODEL_KWARGS])
        except json.JSONDecodeError as exc:
            raise UserError(f"metadata {META_MODEL_KWARGS} is not JSON ({exc}); re-export the encoder", path) from exc
        if not isinstance(kwargs, dict):
            raise UserError(f"metadata {META_MODEL_KWARGS} must be a JSON object; re-export the encoder", path)
        out.model_kwargs = kwargs
    if meta.get(META_NORM_MEAN) and meta.get(META_NORM_STD):
        try:
            mean, std = float(meta[META_NORM_MEAN]), float(meta[META_NORM_STD])
        except ValueError as exc:
            raise UserError("metadata norm mean/std are not numbers; re-export the encoder", path) from exc
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise UserError(f"metadata norm std must be a positive number, got {std}; re-export the encoder", path)
        out.norm = NormStats(mean=mean, std=std)
    return out


def _load_encoder_weights(model: VisionTransformer, path: Path) -> None:
    """Strictly load a timm-named state dict, resampling ``pos_embed`` to the model's grid."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    pos = state.get("pos_embed")
    if pos is not None and model.pos_embed is not None and pos.shape != model.pos_embed.shape:
        prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        if pos.shape[-1] != model.pos_embed.shape[-1]:
            raise UserError(
                f"pos_embed width {pos.shape[-1]} != model width {model.pos_embed.shape[-1]}; "
                "the file's model kwargs do not match its weights, re-export the encoder",
                path,
            )
        state["pos_embed"] = resample_abs_pos_embed(
            pos, new_size=list(model.patch_embed.grid_size), num_prefix_tokens=prefix, verbose=False
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        detail = "; ".join(
            f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shape))
            if keys
        )
        raise UserError(
            f"weights do not match the encoder architecture ({detail or exc}); pass a ViT encoder "
            "exported by `priormim export` or fix --backbone",
            path,
        ) from exc


def resolve_encoder_config(
    backbone: str, *, encoder_path: str | Path | None, model_kwargs: dict | None = None
) -> tuple[str, dict[str, Any], EncoderMetadata | None]:
    """The timm name and create_model kwargs to build, after the file's metadata overrides.

    Returns ``(name, kwargs, metadata)``; ``metadata`` is None without an encoder file.
    """
    kwargs = dict(model_kwargs or {})
    if encoder_path is None:
        return backbone, kwargs, None
    meta = read_encoder_metadata(encoder_path)
    name = meta.model_name or backbone
    # The file describes the architecture its weights fit; it wins over the caller.
    kwargs.update({k: v for k, v in meta.model_kwargs.items() if k not in _FORCED_KWARGS})
    return name, kwargs, meta


def create_vit_encoder(
    backbone: str,
    *,
    encoder_path: str | Path | None,
    img_size: int,
    drop_path_rate: float = 0.1,
    model_kwargs: dict | None = None,
) -> tuple[VisionTransformer, NormStats | None]:
    """A one-channel, head-less timm ViT, optionally loaded from an exported encoder file.

    Args:
        backbone: timm model name (e.g. ``vit_tiny_patch16_224``); the file's
            ``priormim_model_name`` overrides it.
        encoder_path: safetensors file from ``priormim export``, or None for random init.
        img_size: input size the model is built for; ``pos_embed`` is resampled to it.
        drop_path_rate: stochastic depth for fine-tuning.
        model_kwargs: extra ``timm.create_model`` kwargs; the file's kwargs override them.

    Returns:
        ``(model, norm)``: ``model(x)`` takes ``[B, 1, img_size, img_size]``; ``norm`` is the
        file's grey-level normalisation, or None (no file, or no stats in it) so that the
        caller computes stats from its training set.

    Raises UserError naming the file if it is missing or its keys/shapes do not match.
    """
    name, kwargs, meta = resolve_encoder_config(backbone, encoder_path=encoder_path, model_kwargs=model_kwargs)
    require_vit(name, path=encoder_path)
    try:
        model = timm.create_model(
            name,
            pretrained=False,
            in_chans=1,
            num_classes=0,
            img_size=img_size,
            drop_path_rate=drop_path_rate,
            **{k: v for k, v in kwargs.items() if k not in _FORCED_KWARGS},
        )
    except RuntimeError as exc:  # timm: unknown model name
        where = encoder_path if encoder_path is not None else None
        raise UserError(f"cannot build backbone {name!r} ({exc}); use a timm ViT name such as vit_tiny_patch16_224", where) from exc
    if not isinstance(model, VisionTransformer):
        raise UserError(f"backbone {name!r} is a {type(model).__name__}, not a timm VisionTransformer; use a vit_* name", encoder_path)
    patch = model.patch_embed.patch_size[0]
    if img_size % patch:
        raise UserError(f"img_size {img_size} is not a multiple of the patch size {patch}; pick e.g. {img_size // patch * patch}", encoder_path)
    if encoder_path is None:
        return model, None
    _load_encoder_weights(model, Path(encoder_path))
    return model, meta.norm if meta is not None else None


# ----------------------------------------------------------------------------------------------
# Segmenter


def conv_bn_relu(in_ch: int, out_ch: int, *, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class DoubleConv(nn.Sequential):
    """Two 3x3 conv-BN-ReLU layers (the U-Net block)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(*conv_bn_relu(in_ch, out_ch), *conv_bn_relu(out_ch, out_ch))


class UpBlock(nn.Module):
    """Upsample ``x`` by 2 (transposed conv), concatenate ``skip``, fuse with a DoubleConv."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)
        self.fuse = DoubleConv(out_ch + skip_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        return self.fuse(torch.cat([x, skip], dim=1))


class TokenUpsampler(nn.Sequential):
    """ViT feature map ``[B, C, h, w]`` -> ``[B, out_ch, h * 2**steps, w * 2**steps]`` (UNETR's
    progressive deconvolution path)."""

    def __init__(self, in_ch: int, out_ch: int, steps: int) -> None:
        layers: list[nn.Module] = [conv_bn_relu(in_ch, out_ch)]
        for _ in range(steps):
            layers += [nn.ConvTranspose2d(out_ch, out_ch, kernel_size=2, stride=2), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
        super().__init__(*layers)


def _decoder_channels(scale: int, base: int, max_ch: int) -> int:
    return min(base * scale, max_ch)


class ViTSegmenter(nn.Module):
    """ViT encoder + UNETR-like conv decoder with a full-resolution conv-stem skip path.

    With patch size ``p = 2**k`` the decoder runs through scales ``1/p, 1/(p/2), ..., 1``.
    The ``1/p`` start is the last ViT block; the scales down to ``1/4`` get skips from shallower
    ViT blocks (upsampled by transposed convs); ``1/2`` and ``1`` get skips from a small conv
    stem on the raw image, so thin structures never pass through the 16x16 token bottleneck only.

    Input ``[B, 1, H, W]`` (any size: padded to a multiple of ``p`` and cropped back); output
    logits ``[B, 1, H, W]``.
    """

    def __init__(self, encoder: VisionTransformer, *, decoder_base: int = 16, decoder_max: int = 256) -> None:
        super().__init__()
        self.encoder = encoder
        p = int(encoder.patch_embed.patch_size[0])
        if p != encoder.patch_embed.patch_size[1] or p < 2 or p & (p - 1):
            raise ValueError(f"patch size must be a square power of two >= 2, got {encoder.patch_embed.patch_size}")
        self.patch_size = p
        k = int(math.log2(p))
        depth = len(encoder.blocks)
        width = encoder.embed_dim
        n_stem = min(2, k)  # conv-stem scales: 1 and (if the patch allows) 1/2
        n_vit = 1 + k - n_stem  # bottleneck plus ViT skips for scales 1/(p/2) .. 1/4
        # Evenly spaced depths (shallow -> deep); the deepest (last block) feeds the coarsest scale.
        self.feature_indices = [max(0, round(depth * (i + 1) / n_vit) - 1) for i in range(n_vit)]
        ch = lambda scale: _decoder_channels(scale, decoder_base, decoder_max)  # noqa: E731

        # Conv stem: full resolution and 1/2 (if used).
        self.stem_full = DoubleConv(1, ch(1))
        self.stem_half = nn.Sequential(conv_bn_relu(ch(1), ch(2), stride=2), conv_bn_relu(ch(2), ch(2))) if n_stem == 2 else None

        self.bottleneck = conv_bn_relu(width, ch(p))
        # ViT skips: scale p / 2**j for j = 1 .. k - n_stem, from progressively shallower blocks.
        self.vit_skips = nn.ModuleList(TokenUpsampler(width, ch(p >> j), steps=j) for j in range(1, k - n_stem + 1))
        self.up_blocks = nn.ModuleList(UpBlock(ch(p >> (j - 1)), ch(p >> j), ch(p >> j)) for j in range(1, k + 1))
        self.head = nn.Conv2d(ch(1), 1, kernel_size=1)

    # -- timm optimizer hooks: the wrapper keeps the encoder's layer ids (stem 0, block i -> i+1)
    # and puts everything else (decoder, conv stem, final norm) in the top layer, so layer
    # decay leaves the randomly initialised decoder at the full learning rate.
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^encoder\.(?:cls_token|reg_token|pos_embed|patch_embed|norm_pre)",
            blocks=[(r"^encoder\.blocks\.(\d+)", None)],
        )

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W]`` normalised image -> ``[B, 1, H, W]`` vessel logits."""
        h, w = x.shape[-2:]
        p = self.patch_size
        ph, pw = (-h) % p, (-w) % p
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        unique = sorted(set(self.feature_indices))
        taken = self.encoder.forward_intermediates(x, indices=unique, intermediates_only=True)
        by_index = dict(zip(unique, taken))
        feats = [by_index[i] for i in reversed(self.feature_indices)]  # deepest first
        y = self.bottleneck(feats[0])
        skips: list[torch.Tensor] = [up(f) for up, f in zip(self.vit_skips, feats[1:])]
        full = self.stem_full(x)
        if self.stem_half is not None:
            skips.append(self.stem_half(full))
        skips.append(full)
        for block, skip in zip(self.up_blocks, skips):
            y = block(y, skip)
        logits = self.head(y)
        return logits[..., :h, :w]
