"""Shared pieces of the method zoo: the output type, the encoder-owning base class, EMA teachers.

Every zoo model is a plain ``nn.Module`` that computes its own loss in ``forward`` (so one
``DistributedDataParallel`` wrapper covers every parameter that receives a gradient):

    forward(images [B, C, H, W], mask bool [B, L], *, progress: float, scores: [B, L] | None)
        -> PretrainOutput(loss, terms)

``progress`` is the share of training done in ``[0, 1]``; ``scores`` are what the model's own
optional ``mask_scores`` returned for this batch (AMT, HPM; their registry entry is a
:class:`priormim.methods.zoo.ScoredZooMethod`). ``after_optimizer_step(progress)`` runs after every
``optimizer.step()`` (a no-op here; models with an EMA teacher override it).
Only ``model.encoder`` (a timm ``VisionTransformer``) is exported; teachers, heads and
predictors stay in the checkpoint.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from timm.layers import DropPath
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from priormim.masking import mask_to_indices
from priormim.models.mae import (
    _init_weights,
    create_pretrain_encoder,
    encoder_geometry,
    patchify,
    sincos_pos_embed_2d,
    unpatchify,
)

__all__ = [
    "EMATeacher",
    "PretrainOutput",
    "TokenPredictor",
    "ZooPretrainer",
    "cosine_momentum",
    "gather_batch",
]


@dataclass
class PretrainOutput:
    """A zoo model's forward result: the scalar ``loss`` to back-propagate and named ``terms``
    (scalars, for logging; the engine detaches them)."""

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


class ZooPretrainer(nn.Module):
    """Base class: owns ``encoder`` (a head-less timm ViT made like MAE's) and its geometry.

    ``encoder_init`` follows each method's reference: ``"timm"`` (learnable position
    embedding; SimMIM, MoCo v3, DINO, CheXWorld-style) by default, ``"mae"`` (fixed sin-cos,
    MAE's init) for the MAE family (CrossMAE here; AMT, HPM, DeblurringMIM wrap a whole MAE).

    Subclasses that wrap a whole :class:`~priormim.models.mae.MaskedAutoencoder` instead call
    :meth:`_set_geometry` with its encoder and expose it as an ``encoder`` property.

    Attributes: ``encoder``, ``encoder_name``, ``encoder_kwargs``, ``in_chans``, ``patch_size``,
    ``grid_size`` ``(gh, gw)``, ``num_patches`` (L), ``num_prefix_tokens``, ``embed_dim``.
    """

    def __init__(
        self,
        *,
        encoder_name: str = "vit_tiny_patch16_224",
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 1,
        encoder_kwargs: dict | None = None,
        drop_path_rate: float = 0.0,
        build_encoder: bool = True,
        encoder_init: str = "timm",
    ) -> None:
        super().__init__()
        self.encoder_name = encoder_name
        self.encoder_kwargs = dict(encoder_kwargs or {})
        self.in_chans = in_chans
        if build_encoder:
            self.encoder = create_pretrain_encoder(
                encoder_name, img_size=img_size, in_chans=in_chans, encoder_kwargs=self.encoder_kwargs,
                drop_path_rate=drop_path_rate, init=encoder_init,
            )
            self._set_geometry(self.encoder)

    def _set_geometry(self, encoder: nn.Module) -> None:
        self.patch_size, self.grid_size = encoder_geometry(encoder)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_prefix_tokens = int(getattr(encoder, "num_prefix_tokens", 1))
        self.embed_dim = int(encoder.embed_dim)

    def patchify(self, imgs: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, L, p*p*C]``."""
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: Tensor) -> Tensor:
        """``[B, L, p*p*C]`` -> ``[B, C, H, W]``."""
        return unpatchify(x, self.patch_size, self.grid_size, self.in_chans)

    def forward(self, images: Tensor, mask: Tensor, *, progress: float = 0.0, scores: Tensor | None = None) -> PretrainOutput:
        raise NotImplementedError

    def after_optimizer_step(self, progress: float) -> None:
        """Called after every ``optimizer.step()`` with the share of training done; models with an
        EMA teacher update it here. Default: nothing."""

    def config(self) -> dict:
        """Plain-data description used in checkpoints and exports (as MAE's)."""
        return {
            "encoder_name": self.encoder_name,
            "encoder_kwargs": self.encoder_kwargs,
            "img_size": list(self.encoder.patch_embed.img_size),
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
        }


# -- EMA teachers --------------------------------------------------------------------------------
def cosine_momentum(progress: float, base: float, final: float = 1.0) -> float:
    """BYOL/DINO/MoCo v3 schedule: ``final - (final - base) * (cos(pi * progress) + 1) / 2``."""
    p = min(max(float(progress), 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * p) + 1) / 2


def _strip_drop_path(module: nn.Module) -> None:
    """Replace stochastic depth by identity: teachers see the whole network."""
    for name, child in module.named_children():
        if isinstance(child, DropPath):
            setattr(module, name, nn.Identity())
        else:
            _strip_drop_path(child)


class EMATeacher(nn.Module):
    """Frozen copies of student modules (no gradients, no stochastic depth), updated by
    :meth:`update` as ``t <- m * t + (1 - m) * s``; buffers (BatchNorm statistics) are copied.

    ``teacher[i]`` is the copy of the ``i``-th student. It follows the parent's train/eval
    mode like any module, so a teacher's BatchNorm uses batch statistics in training, as MoCo
    v3's momentum encoder does.
    """

    def __init__(self, *students: nn.Module) -> None:
        super().__init__()
        self.copies = nn.ModuleList(copy.deepcopy(s) for s in students).requires_grad_(False)
        _strip_drop_path(self.copies)

    def __getitem__(self, i: int) -> nn.Module:
        return self.copies[i]

    @torch.no_grad()
    def update(self, *students: nn.Module, momentum: float) -> None:
        if len(students) != len(self.copies):
            raise ValueError(f"EMATeacher holds {len(self.copies)} module(s), got {len(students)} student(s)")
        for copy_, student in zip(self.copies, students):
            teacher_params, student_params = list(copy_.parameters()), list(student.parameters())
            if len(teacher_params) != len(student_params):
                raise ValueError("teacher and student have different parameter lists")
            # One fused multi-tensor lerp per step instead of a Python loop over ~150 tensors.
            torch._foreach_lerp_(teacher_params, student_params, 1.0 - momentum)
            for t, s in zip(copy_.buffers(), student.buffers(), strict=True):
                t.copy_(s)


def gather_batch(x: Tensor) -> Tensor:
    """Concatenate ``x`` (no gradient) over the processes of a distributed run; ``x`` otherwise."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x
    parts = [torch.empty_like(x) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


# -- a small transformer that fills in masked tokens ----------------------------------------------
class TokenPredictor(nn.Module):
    """MAE-style decoder that maps encoded visible tokens to a vector per *masked* patch.

    Visible tokens (prefix first) are projected to ``dim``, mask tokens are inserted at the
    masked positions, a fixed 2-D sin-cos position embedding is added, ``depth`` self-attention
    blocks run over all tokens, and a linear head maps to ``out_dim``.

    Shapes: ``forward(latent [B, prefix + n_keep, in_dim], mask bool [B, L]) -> [B, n_mask, out_dim]``
    (masked patches in ascending patch order, as :func:`~priormim.masking.mask_to_indices`).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        grid_size: tuple[int, int],
        *,
        dim: int = 128,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        num_prefix_tokens: int = 1,
    ) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.num_patches = grid_size[0] * grid_size[1]
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(dim, grid_size)[None], persistent=False)
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(_init_weights)

    def forward(self, latent: Tensor, mask: Tensor) -> Tensor:
        idx = mask_to_indices(mask)
        x = self.embed(latent)
        prefix, visible = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        b, n_keep, d = visible.shape
        tokens = torch.cat([visible, self.mask_token.expand(b, self.num_patches - n_keep, d)], dim=1)
        tokens = torch.gather(tokens, 1, idx.ids_restore[..., None].expand(-1, -1, d)) + self.pos_embed
        x = torch.cat([prefix, tokens], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x[:, self.num_prefix_tokens :])
        x = torch.gather(x, 1, idx.ids_masked[..., None].expand(-1, -1, d))
        return self.head(x)
