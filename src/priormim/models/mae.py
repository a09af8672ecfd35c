"""Masked autoencoder on a timm Vision Transformer encoder (He et al., CVPR 2022).

The encoder is an unmodified ``timm`` ``VisionTransformer`` (any ViT by name, ``in_chans=1``
by default), so its weights export with timm's key names. Masking is decided *outside* the
model (see :mod:`priormim.masking`): ``forward`` takes a bool mask ``[B, L]`` (True = masked),
which keeps guided, gaze and random masking interchangeable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import timm
import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from priormim.masking import mask_to_indices, random_mask
from priormim.models.vit_names import require_vit


def patchify(imgs: Tensor, patch_size: int) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, L, p*p*C]`` with L = (H/p)*(W/p), row-major patches.

    Any channel count and non-square grids; H and W must be multiples of ``patch_size``.
    """
    b, c, h, w = imgs.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    gh, gw = h // p, w // p
    x = imgs.reshape(b, c, gh, p, gw, p)
    x = torch.einsum("bchpwq->bhwpqc", x)
    return x.reshape(b, gh * gw, p * p * c)


def unpatchify(x: Tensor, patch_size: int, grid_size: tuple[int, int], channels: int = 1) -> Tensor:
    """Inverse of :func:`patchify`: ``[B, L, p*p*C]`` -> ``[B, C, gh*p, gw*p]``."""
    b, n, d = x.shape
    gh, gw = grid_size
    p = patch_size
    if n != gh * gw or d != p * p * channels:
        raise ValueError(f"cannot unpatchify {tuple(x.shape)} to grid {grid_size}, patch {p}, {channels} channel(s)")
    x = x.reshape(b, gh, gw, p, p, channels)
    x = torch.einsum("bhwpqc->bchpwq", x)
    return x.reshape(b, channels, gh * p, gw * p)


def sincos_pos_embed_2d(embed_dim: int, grid_size: tuple[int, int], cls_token: bool = False) -> Tensor:
    """Fixed 2-D sine-cosine position embedding (MAE's), ``[(cls)+gh*gw, D]`` in row-major
    patch order; channels ``[:D/2]`` encode the column, ``[D/2:]`` the row, as in MAE."""
    if embed_dim % 4:
        raise ValueError("embed_dim must be divisible by 4 for a 2-D sin-cos embedding")
    gh, gw = grid_size
    gy, gx = np.meshgrid(np.arange(gh, dtype=np.float64), np.arange(gw, dtype=np.float64), indexing="ij")

    def one_axis(pos: np.ndarray, dim: int) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    # MAE's get_2d_sincos_pos_embed: np.meshgrid(grid_w, grid_h) puts the *column* index in
    # grid[0], so the first half of the channels encodes x (column), the second half y (row).
    emb = np.concatenate([one_axis(gx, embed_dim // 2), one_axis(gy, embed_dim // 2)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, embed_dim)), emb], axis=0)
    return torch.from_numpy(emb).float()


ENCODER_INITS = ("mae", "sincos", "timm")


def create_pretrain_encoder(
    encoder_name: str,
    *,
    img_size: int | tuple[int, int],
    in_chans: int,
    encoder_kwargs: dict | None = None,
    drop_path_rate: float = 0.0,
    init: str = "timm",
) -> nn.Module:
    """The head-less timm ``VisionTransformer`` every pretraining model here trains.

    ``init="mae"`` makes it MAE's encoder (see :func:`mae_init_encoder`): fixed 2-D sin-cos
    position embedding without gradient and MAE's weight init; ``"sincos"`` only fixes the
    position embedding (MoCo v3's and I-JEPA's ViTs) and keeps timm's weight init; ``"timm"``
    keeps timm's learnable trunc-normal position embedding. Raises UserError when
    ``encoder_name`` is not a timm ViT (checked before building), and ValueError when the ViT
    has no fixed patch grid, or for an unknown ``init``.
    """
    require_vit(encoder_name)
    if init not in ENCODER_INITS:
        raise ValueError(f"encoder init must be one of {', '.join(ENCODER_INITS)}, got '{init}'")
    encoder = timm.create_model(
        encoder_name,
        pretrained=False,
        num_classes=0,
        in_chans=in_chans,
        img_size=img_size,
        drop_path_rate=drop_path_rate,
        **dict(encoder_kwargs or {}),
    )
    if not hasattr(getattr(encoder, "patch_embed", None), "grid_size"):
        raise ValueError(f"{encoder_name} is not a ViT with a fixed patch grid")
    if init == "mae":
        mae_init_encoder(encoder)
    elif init == "sincos":
        fix_sincos_pos_embed(encoder)
    return encoder


def fix_sincos_pos_embed(encoder: nn.Module) -> nn.Module:
    """Set a timm ViT's ``pos_embed`` to fixed 2-D sin-cos (zeros at class-token positions) with
    ``requires_grad=False``, so the optimiser never sees it. Returns ``encoder``."""
    pos = getattr(encoder, "pos_embed", None)
    if pos is None:
        raise ValueError("a sin-cos position embedding needs a ViT with an absolute pos_embed")
    _, grid = encoder_geometry(encoder)
    n_extra = pos.shape[1] - grid[0] * grid[1]  # class-token position(s) timm puts in pos_embed
    table = sincos_pos_embed_2d(pos.shape[-1], grid)
    if n_extra:
        table = torch.cat([torch.zeros(n_extra, pos.shape[-1]), table], dim=0)
    with torch.no_grad():
        pos.copy_(table[None])
    pos.requires_grad_(False)
    return encoder


def mae_init_encoder(encoder: nn.Module) -> nn.Module:
    """Turn a timm ViT into MAE's encoder (facebookresearch/mae ``initialize_weights``), in place.

    * ``pos_embed`` = fixed 2-D sin-cos (zeros for the class token) with ``requires_grad=False``,
      so the optimiser never sees it (never updated, never weight-decayed);
    * patch-embedding conv: xavier-uniform on the weight viewed as ``[D, C*p*p]`` (a Linear);
    * class token ``N(0, 0.02)``; every Linear xavier-uniform with zero bias; LayerNorm 1 / 0.

    A timm ViT without a class-token position (``no_embed_class``) or with register tokens gets
    sin-cos on its patch positions only. Returns ``encoder``.
    """
    fix_sincos_pos_embed(encoder)
    encoder.apply(_init_weights)
    w = encoder.patch_embed.proj.weight
    with torch.no_grad():
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    for name in ("cls_token", "reg_token"):
        token = getattr(encoder, name, None)
        if isinstance(token, nn.Parameter):
            nn.init.normal_(token, std=0.02)
    return encoder


def encoder_geometry(encoder: nn.Module) -> tuple[int, tuple[int, int]]:
    """``(patch_size, (gh, gw))`` of a timm ViT."""
    pe = encoder.patch_embed
    return int(pe.patch_size[0]), (int(pe.grid_size[0]), int(pe.grid_size[1]))


def encode_tokens(
    encoder: nn.Module,
    imgs: Tensor,
    *,
    ids_keep: Tensor | None = None,
    mask: Tensor | None = None,
    mask_token: Tensor | None = None,
) -> Tensor:
    """Run a timm ViT on image tokens, the timm way (prefix tokens, position embeddings, norms).

    Args:
        encoder: a timm ``VisionTransformer``.
        imgs: ``[B, C, H, W]``.
        ids_keep: ``[B, n_keep]`` long: encode only these patches (MAE). None: all patches.
        mask, mask_token: bool ``[B, L]`` and ``[1, 1, D]``: replace the masked patch embeddings
            by ``mask_token`` before the position embedding (SimMIM); all patches are encoded.
    Returns:
        ``[B, prefix + n, D]`` after the final norm (n = n_keep, or L).
    """
    x = encoder.patch_embed(imgs)
    if mask is not None:
        if mask_token is None:
            raise ValueError("mask needs a mask_token")
        x = torch.where(mask[..., None], mask_token.to(x.dtype).expand_as(x), x)
    x = encoder._pos_embed(x)  # adds prefix (cls) tokens and position embeddings the timm way
    if ids_keep is not None:
        n_prefix = int(getattr(encoder, "num_prefix_tokens", 1))
        prefix, patches = x[:, :n_prefix], x[:, n_prefix:]
        patches = torch.gather(patches, 1, ids_keep[..., None].expand(-1, -1, patches.shape[-1]))
        x = torch.cat([prefix, patches], dim=1)
    x = encoder.norm_pre(x)
    x = encoder.blocks(x)
    return encoder.norm(x)


@dataclass
class MAEOutput:
    """What :meth:`MaskedAutoencoder.forward` returns.

    pred: ``[B, L, p*p*C]`` decoder prediction for every patch (normalised pixels when
        ``norm_pix_loss``). mask: bool ``[B, L]``. latent: ``[B, prefix + n_keep, D]`` encoder
        output. decoder_hidden: per-block decoder states ``[B, L, Dd]`` (patch tokens only,
        original order) when requested, for multi-scale heads such as VP-MIM's pyramid.
    """

    pred: Tensor
    mask: Tensor
    latent: Tensor
    decoder_hidden: list[Tensor] = field(default_factory=list)


class MaskedAutoencoder(nn.Module):
    """MAE with a timm ViT encoder (``self.encoder``) and a light transformer decoder.

    Args:
        encoder_name: any timm VisionTransformer name, e.g. ``vit_tiny_patch16_224`` (CPU) or
            ``vit_base_patch16_224`` (the papers').
        img_size: input size (square int or ``(H, W)``).
        in_chans: image channels (1 for X-ray).
        encoder_kwargs: extra ``timm.create_model`` overrides (``patch_size``, ``depth``, ...).
        decoder_embed_dim, decoder_depth, decoder_num_heads: decoder width/depth/heads.
        norm_pix_loss: targets are per-patch normalised pixels (MAE's better setting).
        encoder_init: ``"mae"`` (MAE's fixed sin-cos position embedding and init, the reference)
            or ``"timm"`` (timm's learnable position embedding and init).
    """

    def __init__(
        self,
        *,
        encoder_name: str = "vit_tiny_patch16_224",
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 1,
        encoder_kwargs: dict | None = None,
        decoder_embed_dim: int = 128,
        decoder_depth: int = 2,
        decoder_num_heads: int = 4,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = True,
        drop_path_rate: float = 0.0,
        encoder_init: str = "mae",
    ) -> None:
        super().__init__()
        self.encoder_name = encoder_name
        self.encoder_kwargs = dict(encoder_kwargs or {})
        self.encoder = create_pretrain_encoder(
            encoder_name, img_size=img_size, in_chans=in_chans, encoder_kwargs=self.encoder_kwargs,
            drop_path_rate=drop_path_rate, init=encoder_init,
        )
        self.in_chans = in_chans
        self.patch_size, self.grid_size = encoder_geometry(self.encoder)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_prefix_tokens = int(getattr(self.encoder, "num_prefix_tokens", 1))
        self.norm_pix_loss = norm_pix_loss
        embed_dim = self.encoder.embed_dim

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer(
            "decoder_pos_embed", sincos_pos_embed_2d(decoder_embed_dim, self.grid_size)[None], persistent=False
        )
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio=mlp_ratio, qkv_bias=True)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.patch_size**2 * in_chans)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks, self.decoder_norm]:
            m.apply(_init_weights)

    # -- pieces -------------------------------------------------------------------------------
    def patchify(self, imgs: Tensor) -> Tensor:
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: Tensor) -> Tensor:
        return unpatchify(x, self.patch_size, self.grid_size, self.in_chans)

    def forward_encoder(self, imgs: Tensor, mask: Tensor) -> Tensor:
        """Encode the visible patches. imgs ``[B, C, H, W]``, mask bool ``[B, L]`` -> ``[B, prefix+n_keep, D]``."""
        return encode_tokens(self.encoder, imgs, ids_keep=mask_to_indices(mask).ids_keep)

    def forward_decoder(self, latent: Tensor, mask: Tensor, *, return_hidden: bool = False) -> tuple[Tensor, list[Tensor]]:
        """Decode to every patch. latent ``[B, prefix+n_keep, D]`` -> ``([B, L, p*p*C], hidden)``."""
        x = self.decoder_embed(latent)
        prefix, visible = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        b, n_keep, d = visible.shape
        idx = mask_to_indices(mask)
        tokens = torch.cat([visible, self.mask_token.expand(b, self.num_patches - n_keep, d)], dim=1)
        tokens = torch.gather(tokens, 1, idx.ids_restore[..., None].expand(-1, -1, d))
        x = torch.cat([prefix, tokens + self.decoder_pos_embed], dim=1)
        hidden: list[Tensor] = []
        for blk in self.decoder_blocks:
            x = blk(x)
            if return_hidden:
                hidden.append(x[:, self.num_prefix_tokens :])
        x = self.decoder_norm(x)
        return self.decoder_pred(x[:, self.num_prefix_tokens :]), hidden

    def forward(
        self,
        imgs: Tensor,
        mask: Tensor | None = None,
        *,
        mask_ratio: float = 0.75,
        return_hidden: bool = False,
    ) -> MAEOutput:
        """imgs ``[B, C, H, W]``; mask bool ``[B, L]`` (True = masked), random if omitted."""
        if mask is None:
            mask = random_mask(imgs.shape[0], self.num_patches, mask_ratio, device=imgs.device)
        latent = self.forward_encoder(imgs, mask)
        pred, hidden = self.forward_decoder(latent, mask, return_hidden=return_hidden)
        return MAEOutput(pred=pred, mask=mask, latent=latent, decoder_hidden=hidden)

    def config(self) -> dict:
        """Plain-data description used in checkpoints and exports."""
        return {
            "encoder_name": self.encoder_name,
            "encoder_kwargs": self.encoder_kwargs,
            "img_size": list(self.encoder.patch_embed.img_size),
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
        }


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
