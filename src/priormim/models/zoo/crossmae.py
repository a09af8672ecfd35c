"""CrossMAE (Fu et al., "Rethinking Patch Dependence for Masked Autoencoders", 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import Tensor, nn

from priormim.losses.reconstruction import normalize_patches
from priormim.masking import mask_to_indices
from priormim.models.mae import _init_weights, encode_tokens, sincos_pos_embed_2d
from priormim.models.zoo.base import PretrainOutput, ZooPretrainer

__all__ = ["CrossAttention", "CrossAttentionBlock", "CrossMAE"]


class CrossAttention(nn.Module):
    """Multi-head attention from queries ``[B, Nq, D]`` to a context ``[B, Nk, D]`` -> ``[B, Nq, D]``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"decoder width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, nq, d = x.shape
        h = self.num_heads
        q = self.q(x).reshape(b, nq, h, d // h).transpose(1, 2)
        k, v = self.kv(context).reshape(b, context.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, h, Nq, d/h]
        return self.proj(out.transpose(1, 2).reshape(b, nq, d))


class CrossAttentionBlock(nn.Module):
    """Pre-norm ``x + CrossAttn(norm(x), norm(context))``, then ``x + MLP(norm(x))``.

    There is no self-attention: each query's output depends only on itself and the context.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.attn(self.norm_q(x), self.norm_kv(context))
        return x + self.mlp(self.norm2(x))


class CrossMAE(ZooPretrainer):
    """CrossMAE: MAE's encoder on the visible patches; the decoder's queries are mask tokens
    (+ position embedding) for a random subset of the masked patches, and each decoder block
    only *cross*-attends from those queries to the (projected) visible-token features -- no
    self-attention among decoder tokens -- so any subset can be reconstructed independently.
    Loss: MSE (norm-pix by default) on the predicted subset.

    Differences here: every decoder block reads the encoder's last layer (the paper's
    inter-block feature fusion of several encoder layers is left out).

    Args:
        prediction_ratio: share of *all* patches that are reconstructed (the paper's
            prediction ratio; 0.25 with mask ratio 0.75 = a third of the masked patches),
            capped at the number of masked patches; at least one patch.
        decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio: decoder shape.
        norm_pix_loss: per-patch normalised targets.
        encoder_name, img_size, in_chans, encoder_kwargs, drop_path_rate, encoder_init: as MAE's
            (MAE's fixed sin-cos position embedding and init by default, as the CrossMAE code).

    Shapes: images ``[B, C, H, W]``, mask bool ``[B, L]``; :meth:`forward_decoder` ->
    ``[B, n_pred, p*p*C]`` for ``ids_pred`` ``[B, n_pred]``.
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
        prediction_ratio: float = 0.25,
        encoder_init: str = "mae",
    ) -> None:
        super().__init__(encoder_name=encoder_name, img_size=img_size, in_chans=in_chans,
                         encoder_kwargs=encoder_kwargs, drop_path_rate=drop_path_rate,
                         encoder_init=encoder_init)
        if not 0.0 < prediction_ratio <= 1.0:
            raise ValueError(f"prediction_ratio must be in (0, 1], got {prediction_ratio}")
        if decoder_depth < 1:
            raise ValueError("CrossMAE needs at least one decoder block (model.decoder_depth >= 1)")
        self.prediction_ratio = float(prediction_ratio)
        self.norm_pix_loss = norm_pix_loss
        dd = decoder_embed_dim
        self.decoder_embed = nn.Linear(self.embed_dim, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_2d(dd, self.grid_size)[None], persistent=False)
        self.decoder_blocks = nn.ModuleList(
            CrossAttentionBlock(dd, decoder_num_heads, mlp_ratio) for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(dd)
        self.decoder_pred = nn.Linear(dd, self.patch_size**2 * in_chans)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in [self.decoder_embed, *self.decoder_blocks, self.decoder_norm, self.decoder_pred]:
            m.apply(_init_weights)

    def choose_targets(self, mask: Tensor) -> Tensor:
        """Random subset of each row's masked patches: long ``[B, n_pred]``."""
        ids_masked = mask_to_indices(mask).ids_masked
        n_mask = ids_masked.shape[1]
        n_pred = max(1, min(n_mask, round(self.prediction_ratio * self.num_patches)))
        order = torch.argsort(torch.rand(ids_masked.shape, device=mask.device), dim=1)[:, :n_pred]
        return torch.gather(ids_masked, 1, order)

    def forward_decoder(self, latent: Tensor, ids_keep: Tensor, ids_pred: Tensor) -> Tensor:
        """latent ``[B, prefix + n_keep, D]``, ids_keep ``[B, n_keep]``, ids_pred ``[B, n_pred]``
        -> pixel prediction ``[B, n_pred, p*p*C]`` for the patches ``ids_pred``."""
        ctx = self.decoder_embed(latent)
        dd = ctx.shape[-1]
        pos = self.decoder_pos_embed.expand(ctx.shape[0], -1, -1)
        p = self.num_prefix_tokens
        visible_pos = torch.gather(pos, 1, ids_keep[..., None].expand(-1, -1, dd))
        ctx = torch.cat([ctx[:, :p], ctx[:, p:] + visible_pos], dim=1)
        x = self.mask_token + torch.gather(pos, 1, ids_pred[..., None].expand(-1, -1, dd))
        for blk in self.decoder_blocks:
            x = blk(x, ctx)
        return self.decoder_pred(self.decoder_norm(x))

    def forward(self, images: Tensor, mask: Tensor, *, progress: float = 0.0, scores: Tensor | None = None) -> PretrainOutput:
        ids_keep = mask_to_indices(mask).ids_keep
        latent = encode_tokens(self.encoder, images, ids_keep=ids_keep)
        ids_pred = self.choose_targets(mask)
        pred = self.forward_decoder(latent, ids_keep, ids_pred)
        target = self.patchify(images)
        if self.norm_pix_loss:
            target = normalize_patches(target)
        target = torch.gather(target, 1, ids_pred[..., None].expand(-1, -1, target.shape[-1]))
        loss = (pred.float() - target.float()).pow(2).mean()
        return PretrainOutput(loss=loss, terms={"loss_rec": loss})
