"""VP-MIM: visual prior-guided masked image modeling for chest X-rays (J. Southern Medical University, 2026).

Two pieces on top of :class:`~priormim.models.mae.MaskedAutoencoder` (gaze-guided masking
lives in :mod:`priormim.masking.gaze`):

* **Pyramid attentive reconstruction.** Besides the full-resolution patch pixels, the decoder
  predicts each patch at 1/2 and 1/4 resolution (``pyramid_scales=(1, 2, 4)``). Scale 1 is
  MAE's own ``decoder_pred`` on the last decoder block; each coarser scale is read from an
  earlier decoder block through a :class:`PyramidHead` (LayerNorm -> spatial attention gate ->
  Linear).
* **Recalibrated gaze weighting.** Per-patch loss weights from gaze heat recalibrated by the
  encoder's class-token attention (:mod:`priormim.losses.gaze_weighting`).

The paper is not public in full, so the pyramid layout, the gate and the weighting are this
library's documented defaults (``docs/vpmim.md``). With ``pyramid_scales=(1,)`` and no gaze the
model and loss reduce exactly to MAE. The encoder stays a plain timm ``VisionTransformer``,
so it exports like MAE's.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from priormim.losses.gaze_weighting import attention_entropy, cls_attention, gaze_loss_weights, recalibrate_gaze
from priormim.losses.reconstruction import masked_reconstruction_loss, normalize_patches
from priormim.models.mae import MAEOutput, MaskedAutoencoder, _init_weights, patchify

__all__ = [
    "PyramidHead",
    "SpatialAttentionGate",
    "VPMIMAutoencoder",
    "VPMIMLoss",
    "VPMIMOutput",
    "default_source_blocks",
    "pool_patches",
    "pyramid_targets",
    "vpmim_loss",
]


# -- targets -------------------------------------------------------------------------------------
def pool_patches(patches: Tensor, patch_size: int, factor: int, channels: int = 1) -> Tensor:
    """Average-pool every patch by ``factor``: ``[B, L, p*p*C]`` -> ``[B, L, (p/factor)^2*C]``.

    Works on :func:`~priormim.models.mae.patchify` layout (row-major pixels, channel last) and
    keeps it, so the result equals ``patchify(avg_pool2d(imgs, factor), p // factor)``.
    """
    b, n, d = patches.shape
    p, s = int(patch_size), int(factor)
    if s < 1 or p % s:
        raise ValueError(f"pyramid scale {factor} must be a positive divisor of the patch size {p}")
    if d != p * p * channels:
        raise ValueError(f"patches have {d} values, expected {p}*{p}*{channels}")
    if s == 1:
        return patches
    q = p // s
    x = patches.reshape(b, n, q, s, q, s, channels).mean(dim=(3, 5))
    return x.reshape(b, n, q * q * channels)


def pyramid_targets(
    imgs: Tensor, patch_size: int, scales: Sequence[int] = (1, 2, 4), *, norm_pix_loss: bool = False
) -> list[Tensor]:
    """Per-patch targets at several resolutions.

    Args:
        imgs: ``[B, C, H, W]``, H and W multiples of ``patch_size``.
        patch_size: ``p``; every scale must divide it.
        scales: pooling factors; scale ``s`` averages ``s x s`` pixel blocks inside each patch.
        norm_pix_loss: normalise each patch by the mean/std of its *full-resolution* pixels
            before pooling (pooling is linear, so the coarse target is exactly the downsampled
            fine target; it also stays defined when a coarse patch has a single value).
    Returns:
        one ``[B, L, (p/s)^2 * C]`` tensor per scale, in ``scales`` order.
    """
    c = imgs.shape[1]
    full = patchify(imgs, patch_size)
    if norm_pix_loss:
        full = normalize_patches(full.float())
    return [pool_patches(full, patch_size, s, c) for s in scales]


# -- heads ---------------------------------------------------------------------------------------
class SpatialAttentionGate(nn.Module):
    """Per-token gate from the patch-token grid: ``g = sigmoid(conv_kxk(GELU(conv_1x1(X))))``.

    ``X`` is the token grid ``[B, D, gh, gw]``; the 1x1 conv reduces ``D`` to ``D / reduction``
    and the ``k x k`` conv (zero padding) maps to one channel, so each token's gate sees its
    ``k x k`` neighbourhood (``kernel_size=1``: a per-token MLP). Our choice; the paper's exact
    gate is not public.
    """

    def __init__(self, dim: int, grid_size: tuple[int, int], *, reduction: int = 4, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"gate kernel_size must be a positive odd number, got {kernel_size}")
        hidden = max(1, dim // max(1, reduction))
        self.grid_size = tuple(grid_size)
        self.reduce = nn.Conv2d(dim, hidden, kernel_size=1)
        self.spatial = nn.Conv2d(hidden, 1, kernel_size=kernel_size, padding=kernel_size // 2)
        for conv in (self.reduce, self.spatial):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens ``[B, L, D]`` (row-major grid) -> gate ``[B, L, 1]`` in ``(0, 1)``."""
        b, n, d = tokens.shape
        gh, gw = self.grid_size
        grid = tokens.transpose(1, 2).reshape(b, d, gh, gw)
        g = self.spatial(F.gelu(self.reduce(grid)))  # [B, 1, gh, gw]
        return torch.sigmoid(g).flatten(2).transpose(1, 2)


class PyramidHead(nn.Module):
    """Decoder tokens -> one coarse scale's pixels: ``Linear(g * LayerNorm(h))``.

    The gate comes *after* the LayerNorm: a per-token scalar applied before it would be
    divided out again (``LN(g h) = LN(h)``), so the gate would do nothing.
    """

    def __init__(
        self, dim: int, out_dim: int, grid_size: tuple[int, int], *, gate_reduction: int = 4, gate_kernel_size: int = 3
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.gate = SpatialAttentionGate(dim, grid_size, reduction=gate_reduction, kernel_size=gate_kernel_size)
        self.pred = nn.Linear(dim, out_dim)
        self.norm.apply(_init_weights)
        self.pred.apply(_init_weights)

    def forward(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """hidden ``[B, L, D]`` -> (prediction ``[B, L, out_dim]``, gate ``[B, L]``)."""
        z = self.norm(hidden)
        g = self.gate(z)
        return self.pred(g * z), g.squeeze(-1)


def default_source_blocks(num_scales: int, decoder_depth: int) -> tuple[int, ...]:
    """Decoder block feeding each scale (finest first): the last block, then one block earlier
    per coarser scale, clipped at block 0 (a shallow decoder reuses its earliest block).

    E.g. 3 scales: depth 8 -> ``(7, 6, 5)``, depth 2 -> ``(1, 0, 0)``, depth 1 -> ``(0, 0, 0)``.
    """
    return tuple(max(decoder_depth - 1 - i, 0) for i in range(num_scales))


# -- model ---------------------------------------------------------------------------------------
@dataclass
class VPMIMOutput(MAEOutput):
    """:class:`MAEOutput` plus the pyramid.

    pyramid_preds: one ``[B, L, (p/s)^2*C]`` per scale in ``model.pyramid_scales`` order;
        ``pyramid_preds[0] is pred`` (scale 1, MAE's head).
    pyramid_gates: the spatial gate ``[B, L]`` in ``(0, 1)`` of each coarser scale (for
        inspection; ``len == len(scales) - 1``).
    """

    pyramid_preds: list[Tensor] = field(default_factory=list)
    pyramid_gates: list[Tensor] = field(default_factory=list)


class VPMIMAutoencoder(MaskedAutoencoder):
    """MAE with VP-MIM's pyramid attentive reconstruction heads.

    Args:
        pyramid_scales: strictly increasing pooling factors starting with 1, each dividing
            the patch size. Default ``(1, 2, 4)``: full, 1/2 and 1/4 resolution.
        pyramid_weights: loss weight per scale; default ``1 / s`` (``(1, 0.5, 0.25)``).
        source_blocks: decoder block index per scale (negative counts from the end); the
            entry for scale 1 must be the last block (it is MAE's ``decoder_pred`` on the final
            decoder state). Default :func:`default_source_blocks`.
        gate_reduction, gate_kernel_size: :class:`SpatialAttentionGate` settings.
        **mae_kwargs: every :class:`MaskedAutoencoder` argument (encoder_name, img_size, ...).

    Attributes: ``pyramid_heads`` (``nn.ModuleList``, head ``i`` serves ``pyramid_scales[i + 1]``),
    ``pyramid_scales``, ``pyramid_weights``, ``source_blocks`` (non-negative indices).
    """

    def __init__(
        self,
        *,
        pyramid_scales: Sequence[int] = (1, 2, 4),
        pyramid_weights: Sequence[float] | None = None,
        source_blocks: Sequence[int] | None = None,
        gate_reduction: int = 4,
        gate_kernel_size: int = 3,
        **mae_kwargs: Any,
    ) -> None:
        super().__init__(**mae_kwargs)
        scales = tuple(int(s) for s in pyramid_scales)
        if not scales or scales[0] != 1 or any(a >= b for a, b in zip(scales, scales[1:])):
            raise ValueError(f"pyramid_scales must be strictly increasing and start with 1, got {pyramid_scales}")
        for s in scales:
            if self.patch_size % s:
                raise ValueError(f"pyramid scale {s} does not divide the patch size {self.patch_size}")
        if self.norm_pix_loss and scales[-1] == self.patch_size:
            # A per-patch normalised patch has mean 0, so its 1-value pooled target is always 0.
            warnings.warn(
                f"pyramid scale {scales[-1]} equals the patch size: under norm_pix_loss its target is constant 0",
                stacklevel=2,
            )
        weights = tuple(float(w) for w in (pyramid_weights if pyramid_weights is not None else [1.0 / s for s in scales]))
        if len(weights) != len(scales) or any(w < 0 for w in weights):
            raise ValueError(f"pyramid_weights must be {len(scales)} non-negative numbers, got {pyramid_weights}")
        depth = len(self.decoder_blocks)
        if depth == 0 and len(scales) > 1:
            raise ValueError("coarse pyramid scales need at least one decoder block")
        if source_blocks is None:
            blocks = default_source_blocks(len(scales), depth)
        else:
            if len(source_blocks) != len(scales):
                raise ValueError(f"source_blocks needs one block per scale ({len(scales)}), got {source_blocks}")
            if any(not -depth <= int(i) < depth for i in source_blocks):
                raise ValueError(f"source_blocks {source_blocks} out of range for decoder depth {depth}")
            blocks = tuple(int(i) % depth for i in source_blocks)
            if blocks[0] != depth - 1:
                raise ValueError("source_blocks[0] (scale 1, MAE's head) must be the last decoder block")
        self.pyramid_scales = scales
        self.pyramid_weights = weights
        self.source_blocks = blocks
        self.gate_reduction = gate_reduction
        self.gate_kernel_size = gate_kernel_size
        dd = self.decoder_pred.in_features
        self.pyramid_heads = nn.ModuleList(
            PyramidHead(
                dd, (self.patch_size // s) ** 2 * self.in_chans, self.grid_size,
                gate_reduction=gate_reduction, gate_kernel_size=gate_kernel_size,
            )
            for s in scales[1:]
        )

    def forward(
        self,
        imgs: Tensor,
        mask: Tensor | None = None,
        *,
        mask_ratio: float = 0.75,
        return_hidden: bool = False,
    ) -> VPMIMOutput:
        """imgs ``[B, C, H, W]``; mask bool ``[B, L]`` (True = masked), random if omitted."""
        # The MAE forward, asking for decoder states whenever there are coarse heads to feed.
        out = super().forward(imgs, mask, mask_ratio=mask_ratio,
                              return_hidden=return_hidden or len(self.pyramid_heads) > 0)
        preds, gates = [out.pred], []
        for head, blk in zip(self.pyramid_heads, self.source_blocks[1:]):
            p, g = head(out.decoder_hidden[blk])
            preds.append(p)
            gates.append(g)
        return VPMIMOutput(
            pred=out.pred,
            mask=out.mask,
            latent=out.latent,
            decoder_hidden=out.decoder_hidden if return_hidden else [],
            pyramid_preds=preds,
            pyramid_gates=gates,
        )

    def config(self) -> dict:
        cfg = super().config()
        cfg.update(
            pyramid_scales=list(self.pyramid_scales),
            pyramid_weights=list(self.pyramid_weights),
            source_blocks=list(self.source_blocks),
            gate_reduction=self.gate_reduction,
            gate_kernel_size=self.gate_kernel_size,
        )
        return cfg


# -- loss ----------------------------------------------------------------------------------------
@dataclass
class VPMIMLoss:
    """loss: scalar to backpropagate. terms: detached scalars for logging (see :func:`vpmim_loss`)."""

    loss: Tensor
    terms: dict[str, Tensor]


def vpmim_loss(
    model: VPMIMAutoencoder,
    imgs: Tensor,
    mask: Tensor,
    patch_heat: Tensor | None,
    *,
    alpha: float = 0.5,
    gamma: float = 1.0,
    forward: nn.Module | None = None,
) -> VPMIMLoss:
    """VP-MIM objective ``sum_s w_s * L_rec^s`` with recalibrated-gaze patch weights.

    Each ``L_rec^s`` is :func:`masked_reconstruction_loss` on the masked patches with the
    same per-patch weights :func:`gaze_loss_weights` ``(recalibrate_gaze(H, A, alpha), gamma)``,
    ``A = cls_attention(model.encoder, imgs)`` (an extra no-grad unmasked encoder pass, skipped
    when ``alpha == 1``). Rows without gaze get uniform weights. Under ``norm_pix_loss`` the
    coarse targets are pooled from the full-resolution normalised patch (see
    :func:`pyramid_targets`).

    Args:
        model: the (unwrapped) :class:`VPMIMAutoencoder`.
        imgs: ``[B, C, H, W]``; mask: bool ``[B, L]``, True = masked.
        patch_heat: ``[B, L]`` non-negative gaze heat per patch (e.g.
            :func:`priormim.masking.patch_prob_from_prior`) or None (plain multi-scale MAE).
        alpha, gamma: see :func:`recalibrate_gaze` and :func:`gaze_loss_weights`.
        forward: module to call for the forward pass (the DDP-wrapped model); default ``model``.
    Returns:
        :class:`VPMIMLoss`; terms: ``loss``, ``loss_rec`` (scale 1, weighted), ``loss_s{s}``
        per coarser scale; with ``patch_heat`` also ``loss_rec_unweighted`` (scale 1, MAE's
        loss, comparable across methods), ``gaze_rows`` (share of images with gaze) and, when
        ``alpha < 1``, ``cls_attn_entropy`` (mean normalised entropy of ``A``, 1 = uniform).
    """
    out = (forward or model)(imgs, mask)
    if not isinstance(out, VPMIMOutput):
        raise TypeError(f"vpmim_loss needs a VPMIMAutoencoder, got output {type(out).__name__}")
    b, n = mask.shape
    terms: dict[str, Tensor] = {}
    weights = None
    if patch_heat is not None:
        if patch_heat.shape != (b, n):
            raise ValueError(f"patch_heat must be [B, L] = {(b, n)}, got {tuple(patch_heat.shape)}")
        attn = cls_attention(model.encoder, imgs) if alpha < 1 else None
        weights = gaze_loss_weights(recalibrate_gaze(patch_heat, attn, alpha=alpha), gamma=gamma)
        terms["gaze_rows"] = (patch_heat.sum(dim=-1) > 0).float().mean()
        if attn is not None:
            terms["cls_attn_entropy"] = attention_entropy(attn)

    c = imgs.shape[1]
    full = model.patchify(imgs)
    # Scale 1 goes through the exact MAE loss call, so scales=(1,) without gaze is MAE.
    l_rec = masked_reconstruction_loss(out.pred, full, mask, norm_pix_loss=model.norm_pix_loss, weights=weights)
    loss = model.pyramid_weights[0] * l_rec
    terms["loss_rec"] = l_rec.detach()
    if weights is not None:
        unweighted = masked_reconstruction_loss(out.pred.detach(), full, mask, norm_pix_loss=model.norm_pix_loss)
        terms["loss_rec_unweighted"] = unweighted
    if len(model.pyramid_scales) > 1:
        base = normalize_patches(full.float()) if model.norm_pix_loss else full
        for s, w_s, pred_s in zip(model.pyramid_scales[1:], model.pyramid_weights[1:], out.pyramid_preds[1:]):
            target_s = pool_patches(base, model.patch_size, s, c)
            l_s = masked_reconstruction_loss(pred_s, target_s, mask, norm_pix_loss=False, weights=weights)
            loss = loss + w_s * l_s
            terms[f"loss_s{s}"] = l_s.detach()
    terms["loss"] = loss.detach()
    return VPMIMLoss(loss=loss, terms=terms)
