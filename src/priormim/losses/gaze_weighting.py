"""VP-MIM's recalibrated gaze weighting of the reconstruction loss.

Radiologist gaze says which patches matter; the encoder's own class-token attention says
which patches the network currently finds informative. VP-MIM recalibrates the gaze heat
with that attention and turns the result into per-patch loss weights:

1. :func:`cls_attention` -- ``A [B, L]``: the class token's attention over the patch tokens in
   the encoder's last block (head average, rows sum to 1), from a no-grad unmasked forward.
2. :func:`recalibrate_gaze` -- ``H' = normalise(H * (alpha + (1 - alpha) * A / mean(A)))``.
3. :func:`gaze_loss_weights` -- ``w = 1 + gamma * H' / mean(H')``, rescaled to mean 1 per row,
   passed to :func:`priormim.losses.masked_reconstruction_loss` as ``weights``.

The VP-MIM paper (J. Southern Medical University, 2026) is not public in full: the exact
forms above (mean-1 rescaling of ``A`` and ``H'``, head averaging, renormalisation over patch
tokens) are this library's choices, documented in ``docs/vpmim.md``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["cls_attention", "recalibrate_gaze", "gaze_loss_weights", "attention_entropy", "normalize_rows"]


def normalize_rows(x: Tensor) -> Tensor:
    """Divide each row of ``[B, L]`` by its sum; all-zero rows stay zero (no NaN)."""
    total = x.sum(dim=-1, keepdim=True)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, x / safe, torch.zeros_like(x))


def _mean_one(x: Tensor) -> Tensor:
    """Rescale each row of non-negative ``[B, L]`` to mean 1 (``L * x / sum(x)``); zero rows stay zero."""
    return normalize_rows(x) * x.shape[-1]


def _check_rows(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a [B, L] tensor, got {shape}")
    if x.numel() and bool((x < 0).any()):
        raise ValueError(f"{name} must be non-negative")


@torch.no_grad()
def cls_attention(encoder: nn.Module, imgs: Tensor) -> Tensor:
    """Class-token attention over the patch tokens in the last block of a timm ViT.

    Runs the *unmasked* image through ``patch_embed``, ``_pos_embed``, ``norm_pre`` and every
    block but the last, then recomputes the last block's attention logits from
    ``attn.qkv(norm1(x))`` exactly as timm does (``q_norm``/``k_norm``, ``scale``). For each
    head the softmax is taken over all keys, the prefix (class/register) columns are dropped
    and the rest renormalised -- i.e. a softmax restricted to patch keys -- and the heads are
    averaged with equal weight. The encoder runs in eval mode (no dropout / drop-path); its
    train/eval flags are restored afterwards. No gradient is recorded.

    Args:
        encoder: a timm ``VisionTransformer`` with a class token (``encoder.cls_token``) and
            blocks whose ``attn`` has ``qkv``, ``num_heads`` (timm's ``Attention``).
        imgs: ``[B, C, H, W]`` images as the encoder sees them.
    Returns:
        float32 ``[B, L]`` (L = patch tokens, row-major), each row summing to 1.
    Raises:
        ValueError: the encoder has no class token or its last block is not timm-style attention.
    """
    if getattr(encoder, "cls_token", None) is None:
        raise ValueError("cls_attention needs a ViT with a class token (encoder.cls_token is None)")
    blocks = getattr(encoder, "blocks", None)
    if blocks is None or len(blocks) == 0:
        raise ValueError("cls_attention needs a ViT with at least one block in encoder.blocks")
    last = blocks[-1]
    attn = getattr(last, "attn", None)
    if attn is None or not hasattr(attn, "qkv") or not hasattr(attn, "num_heads") or not hasattr(last, "norm1"):
        raise ValueError(f"the last block ({type(last).__name__}) has no timm-style attn.qkv / norm1")
    n_prefix = int(getattr(encoder, "num_prefix_tokens", 1))
    num_heads = int(attn.num_heads)
    head_dim = int(getattr(attn, "head_dim", attn.qkv.out_features // (3 * num_heads)))
    scale = float(getattr(attn, "scale", head_dim**-0.5))

    modes = [(m, m.training) for m in encoder.modules()]
    encoder.eval()
    try:
        x = encoder.patch_embed(imgs)
        x = encoder._pos_embed(x)  # prefix tokens first (cls at index 0), then patches
        x = encoder.norm_pre(x)
        for blk in blocks[:-1]:
            x = blk(x)
        x = last.norm1(x)
        b, n, _ = x.shape
        qkv = attn.qkv(x).reshape(b, n, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)  # [3, B, h, N, hd]
        q, k = qkv[0], qkv[1]
        q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        if q_norm is not None:
            q = q_norm(q)
        if k_norm is not None:
            k = k_norm(k)
        # Only the class-token query row is needed: [B, h, 1, hd] @ [B, h, hd, N]; in float32
        # even under autocast, so rows sum to 1 to float precision.
        with torch.autocast(device_type=imgs.device.type, enabled=False):
            logits = (q[:, :, :1].float() * scale) @ k.float().transpose(-2, -1)
            probs = logits.softmax(dim=-1)[:, :, 0, n_prefix:]  # [B, h, L]
            probs = probs / probs.sum(dim=-1, keepdim=True).clamp_min(1e-30)
            return probs.mean(dim=1)
    finally:
        for m, mode in modes:
            m.training = mode


def recalibrate_gaze(heat: Tensor, attn: Tensor | None, *, alpha: float = 0.5) -> Tensor:
    """Recalibrate gaze heat with the model's attention: ``H' = normalise(H * (alpha + (1-alpha) * A~))``.

    ``A~ = A / mean(A)`` per row (i.e. ``L * A`` for rows summing to 1), so a patch with average
    attention keeps factor 1 and ``alpha`` is a true mix; with the raw ``A`` (values ~1/L) the
    attention term would vanish next to ``alpha``. The rescaling does not change the two
    extremes: ``alpha = 1`` gives ``normalise(H)``, ``alpha = 0`` gives ``normalise(H * A)``.

    Args:
        heat: ``[B, L]`` non-negative gaze heat per patch (any scale, e.g.
            :func:`priormim.masking.patch_prob_from_prior`).
        attn: ``[B, L]`` non-negative attention (e.g. :func:`cls_attention`); an all-zero row
            counts as uniform attention. May be None only when ``alpha == 1``.
        alpha: share of the raw gaze in ``[0, 1]``.
    Returns:
        ``[B, L]`` rows summing to 1; all-zero heat rows stay all zero.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    _check_rows("heat", heat)
    heat = heat.float()
    if attn is None:
        if alpha != 1.0:
            raise ValueError("attn is required unless alpha == 1")
        return normalize_rows(heat)
    _check_rows("attn", attn)
    if attn.shape != heat.shape:
        raise ValueError(f"attn {tuple(attn.shape)} and heat {tuple(heat.shape)} differ in shape")
    a = attn.float()
    zero_row = a.sum(dim=-1, keepdim=True) <= 0
    a = torch.where(zero_row, torch.ones_like(a), _mean_one(a))
    return normalize_rows(heat * (alpha + (1.0 - alpha) * a))


def gaze_loss_weights(recal: Tensor, *, gamma: float = 1.0) -> Tensor:
    """Per-patch loss weights from recalibrated heat: ``w = 1 + gamma * L * H'``, mean 1 per row.

    ``H'`` is first rescaled to mean 1 per row (``L * H'`` for rows summing to 1), so ``gamma``
    is scale-free: it means the same for any grid size, e.g. heat spread evenly over half the
    patches weighs those ``(1 + 2 gamma) / (1 + gamma)`` and the rest ``1 / (1 + gamma)``
    whatever ``L`` is. The weights are then divided by their row mean (``1 + gamma``), so
    every image keeps the same total weight; uniform heat and all-zero rows give all ones
    (the plain MAE loss).

    Args:
        recal: ``[B, L]`` non-negative (e.g. :func:`recalibrate_gaze`).
        gamma: gaze emphasis, ``>= 0`` (0 = MAE's uniform loss).
    Returns:
        float32 ``[B, L]`` positive weights with row mean 1.
    """
    if not float(gamma) >= 0.0 or not math.isfinite(float(gamma)):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma}")
    _check_rows("recal", recal)
    w = 1.0 + gamma * _mean_one(recal.float())
    return w / w.mean(dim=-1, keepdim=True)


def attention_entropy(attn: Tensor) -> Tensor:
    """Mean normalised entropy ``-sum(A log A) / log L`` of ``[B, L]`` rows summing to 1, in ``[0, 1]``.

    A cheap training diagnostic: 1 = uniform attention, near 0 = attention on a few patches.
    """
    a = attn.float()
    ent = -(a * a.clamp_min(1e-12).log()).sum(dim=-1)
    return (ent / math.log(max(a.shape[-1], 2))).mean()
