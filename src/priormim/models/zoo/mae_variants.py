"""Baselines that keep MAE's encoder-decoder and change the input, the mask or the loss:
DeblurringMIM, AMT and HPM. Each wraps a :class:`~priormim.models.mae.MaskedAutoencoder`
(``self.mae``) and exposes its timm encoder as ``self.encoder``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from priormim.losses.gaze_weighting import cls_attention
from priormim.losses.reconstruction import masked_reconstruction_loss, normalize_patches
from priormim.masking import random_mask
from priormim.masking.base import top_n_mask
from priormim.models.mae import MaskedAutoencoder, _init_weights
from priormim.models.zoo.augment import gaussian_blur
from priormim.models.zoo.base import PretrainOutput, ZooPretrainer

__all__ = ["AMT", "DeblurMIM", "HPM", "relative_loss_ranking", "throw_lowest"]


class _MAEBased(ZooPretrainer):
    """A zoo model around a full MAE (``self.mae``); ``encoder`` is ``self.mae.encoder``."""

    def __init__(self, **mae_kwargs: Any) -> None:
        super().__init__(
            encoder_name=mae_kwargs.get("encoder_name", "vit_tiny_patch16_224"),
            in_chans=mae_kwargs.get("in_chans", 1),
            encoder_kwargs=mae_kwargs.get("encoder_kwargs"),
            build_encoder=False,
        )
        self.mae = MaskedAutoencoder(**mae_kwargs)
        self._set_geometry(self.mae.encoder)
        self.norm_pix_loss = self.mae.norm_pix_loss

    @property
    def encoder(self) -> nn.Module:  # type: ignore[override]
        return self.mae.encoder


# -- DeblurringMIM -----------------------------------------------------------------------------
class DeblurMIM(_MAEBased):
    """DeblurringMIM (Kang et al., "Deblurring Masked Autoencoder is Better Recipe for Ultrasound
    Image Recognition", MICCAI 2023): MAE whose encoder sees a Gaussian-blurred image while the
    decoder reconstructs the *sharp* masked patches.

    Differences here: a fixed isotropic Gaussian (``blur_sigma`` pixels of the model input,
    reflect padding) rather than the paper's ultrasound-specific blur settings; MAE's decoder
    and norm-pix MSE loss otherwise unchanged.

    Args:
        blur_sigma: Gaussian standard deviation in input pixels (> 0).
        **mae_kwargs: every :class:`MaskedAutoencoder` argument.
    """

    def __init__(self, *, blur_sigma: float = 1.5, **mae_kwargs: Any) -> None:
        super().__init__(**mae_kwargs)
        if not blur_sigma > 0:
            raise ValueError(f"blur_sigma must be > 0, got {blur_sigma}")
        self.blur_sigma = float(blur_sigma)

    def blur(self, images: Tensor) -> Tensor:
        """The encoder's input: ``[B, C, H, W]`` -> blurred ``[B, C, H, W]``."""
        return gaussian_blur(images, self.blur_sigma, max_sigma=self.blur_sigma)

    def forward(self, images: Tensor, mask: Tensor, *, progress: float = 0.0, scores: Tensor | None = None) -> PretrainOutput:
        """images ``[B, C, H, W]`` (sharp), mask bool ``[B, L]`` -> MSE on sharp masked patches."""
        out = self.mae(self.blur(images), mask)
        loss = masked_reconstruction_loss(out.pred, self.patchify(images), mask, norm_pix_loss=self.norm_pix_loss)
        return PretrainOutput(loss=loss, terms={"loss_rec": loss})


# -- AMT ---------------------------------------------------------------------------------------
def throw_lowest(mask: Tensor, scores: Tensor, throw_ratio: float) -> tuple[Tensor, Tensor]:
    """AMT's throwing: drop the least-scored share of the visible and of the masked patches.

    ``int(n_keep * throw_ratio)`` lowest-scored visible patches and ``int(n_mask * throw_ratio)``
    lowest-scored masked patches are thrown: neither encoded nor counted in the loss. Throwing
    the same share from each group keeps every row's counts equal (batched gathers).

    Args:
        mask: bool ``[B, L]``, True = masked. scores: float ``[B, L]`` (higher = more attended).
        throw_ratio: in ``[0, 1)``.
    Returns:
        ``(hidden, target)``: bool ``[B, L]``. ``hidden`` = not encoded (masked or thrown);
        ``target`` = masked and not thrown (the patches the loss covers).
    """
    if not 0.0 <= throw_ratio < 1.0:
        raise ValueError(f"throw_ratio must be in [0, 1), got {throw_ratio}")
    n_mask = int(mask[0].sum()) if mask.shape[0] else 0
    n_keep = mask.shape[1] - n_mask
    s = scores.float()
    low = torch.finfo(s.dtype).min
    thrown_visible = top_n_mask(torch.where(mask, low, -s), int(n_keep * throw_ratio))
    thrown_masked = top_n_mask(torch.where(mask, -s, low), int(n_mask * throw_ratio))
    return mask | thrown_visible, mask & ~thrown_masked


class AMT(_MAEBased):
    """AMT, Attention-driven Masking and Throwing (Liu et al., "Good helper is around you:
    Attention-driven Masked Image Modeling", AAAI 2023), on MAE.

    After a warm-up share of training (``warmup_share``; random masking before it), the
    engine asks :meth:`mask_scores` for the class-token attention of the encoder's last block
    on the whole image (no gradient) and masks with the ``score`` strategy (the most-attended
    patches take ``hard_share`` of the mask budget, the rest is uniform). :meth:`forward` then
    *throws* the least-attended ``throw_ratio`` of the visible and of the masked patches
    (:func:`throw_lowest`): thrown patches are not encoded and not in the loss.

    Differences here: the attention is recomputed every step from the current encoder
    (the paper refreshes it at intervals); masking is top-k + uniform rather than sampling
    proportional to attention; thrown patches still pass through the decoder as mask tokens
    (only the encoder saves compute); throwing is per group so counts stay batched.

    Args:
        warmup_share: share of training with random masking and no throwing, in ``[0, 1]``.
        throw_ratio: share of visible and of masked patches thrown, in ``[0, 1)``.
        **mae_kwargs: every :class:`MaskedAutoencoder` argument.
    """

    def __init__(self, *, warmup_share: float = 0.25, throw_ratio: float = 0.25, **mae_kwargs: Any) -> None:
        super().__init__(**mae_kwargs)
        if not 0.0 <= warmup_share <= 1.0:
            raise ValueError(f"warmup_share must be in [0, 1], got {warmup_share}")
        if not 0.0 <= throw_ratio < 1.0:
            raise ValueError(f"throw_ratio must be in [0, 1), got {throw_ratio}")
        self.warmup_share = float(warmup_share)
        self.throw_ratio = float(throw_ratio)

    @torch.no_grad()
    def mask_scores(self, images: Tensor, *, progress: float) -> Tensor | None:
        """Class-token attention ``[B, L]`` (rows sum to 1), or None during the warm-up."""
        if progress < self.warmup_share:
            return None
        return cls_attention(self.encoder, images)

    def forward(self, images: Tensor, mask: Tensor, *, progress: float = 0.0, scores: Tensor | None = None) -> PretrainOutput:
        """images ``[B, C, H, W]``, mask bool ``[B, L]``, scores ``[B, L]`` or None (no throwing)."""
        hidden, target = mask, mask
        if scores is not None and self.throw_ratio > 0:
            hidden, target = throw_lowest(mask, scores, self.throw_ratio)
        out = self.mae(images, hidden)
        loss = masked_reconstruction_loss(out.pred, self.patchify(images), target, norm_pix_loss=self.norm_pix_loss)
        thrown = hidden & ~target
        return PretrainOutput(loss=loss, terms={"loss_rec": loss, "thrown_share": thrown.float().mean()})


# -- HPM ---------------------------------------------------------------------------------------
def relative_loss_ranking(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """HPM's relative loss: for every ordered pair (i, j) of masked patches of an image with
    ``target_i != target_j``, binary cross-entropy of ``sigmoid(pred_i - pred_j)`` against
    ``target_i > target_j``, averaged over pairs. Only the order of the predicted losses is learnt.

    Args: pred, target: float ``[B, L]`` (predicted and detached true per-patch losses);
        mask: bool ``[B, L]``, same count per row (the pairs are drawn among these).
    Returns: scalar.
    """
    n_mask = int(mask[0].sum()) if mask.shape[0] else 0
    if n_mask < 2:
        return pred.sum() * 0.0
    ids = torch.argsort(mask.to(torch.int8), dim=1, stable=True, descending=True)[:, :n_mask]
    p = torch.gather(pred.float(), 1, ids)
    t = torch.gather(target.float(), 1, ids)
    logits = p[:, :, None] - p[:, None, :]  # [B, n, n]
    label = (t[:, :, None] > t[:, None, :]).float()
    valid = (t[:, :, None] != t[:, None, :]).float()
    bce = F.binary_cross_entropy_with_logits(logits, label, reduction="none")
    return (bce * valid).sum() / valid.sum().clamp_min(1.0)


class HPM(_MAEBased):
    """HPM, Hard Patches Mining (Wang et al., CVPR 2023), on MAE.

    A loss predictor (``loss_head``: LayerNorm + Linear on the last decoder block's state)
    predicts each masked patch's reconstruction error, trained with the *relative* loss
    (:func:`relative_loss_ranking` against the detached per-patch MSE); the total loss is
    ``L_rec + pred_weight * L_pred``. :meth:`mask_scores` predicts the error of every patch
    (no gradient) and the ``score`` masking strategy masks the predicted-hardest patches for a
    share of the budget that grows over training (``masking.kwargs.hard_share_start/end``),
    the rest uniformly (HPM's easy-to-hard schedule).

    Differences here: the predictor is a head on MAE's decoder (the paper uses a separate
    decoder branch); the scores come from two complementary 50% random masks of the current
    model, so every patch is scored as a masked token, as the head is trained.

    Args:
        pred_weight: weight of the loss-prediction term.
        **mae_kwargs: every :class:`MaskedAutoencoder` argument.
    """

    def __init__(self, *, pred_weight: float = 1.0, **mae_kwargs: Any) -> None:
        super().__init__(**mae_kwargs)
        if pred_weight < 0:
            raise ValueError(f"pred_weight must be >= 0, got {pred_weight}")
        self.pred_weight = float(pred_weight)
        dd = self.mae.decoder_pred.in_features
        self.loss_head = nn.Sequential(nn.LayerNorm(dd), nn.Linear(dd, 1))
        self.loss_head.apply(_init_weights)

    def _predicted_loss(self, images: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(pixel prediction [B, L, p*p*C], predicted loss [B, L])`` under ``mask``."""
        out = self.mae(images, mask, return_hidden=True)
        return out.pred, self.loss_head(out.decoder_hidden[-1]).squeeze(-1)

    @torch.no_grad()
    def mask_scores(self, images: Tensor, *, progress: float) -> Tensor:
        """Predicted reconstruction loss of every patch ``[B, L]`` (float32)."""
        half = random_mask(images.shape[0], self.num_patches, 0.5, device=images.device)
        _, a = self._predicted_loss(images, half)
        _, b = self._predicted_loss(images, ~half)
        return torch.where(half, a, b).float()

    def forward(self, images: Tensor, mask: Tensor, *, progress: float = 0.0, scores: Tensor | None = None) -> PretrainOutput:
        """images ``[B, C, H, W]``, mask bool ``[B, L]`` -> ``L_rec + pred_weight * L_pred``."""
        if not self.mae.decoder_blocks:
            raise ValueError("HPM needs at least one decoder block (model.decoder_depth >= 1)")
        pred, loss_pred = self._predicted_loss(images, mask)
        target = self.patchify(images)
        if self.norm_pix_loss:
            target = normalize_patches(target)
        per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)  # [B, L]
        m = mask.float()
        l_rec = (per_patch * m).sum() / m.sum().clamp_min(1.0)
        l_pred = relative_loss_ranking(loss_pred, per_patch.detach(), mask)
        loss = l_rec + self.pred_weight * l_pred
        return PretrainOutput(loss=loss, terms={"loss_rec": l_rec, "loss_pred": l_pred})
