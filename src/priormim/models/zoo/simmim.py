"""SimMIM (Xie et al., "SimMIM: A Simple Framework for Masked Image Modeling", CVPR 2022)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from priormim.models.mae import _init_weights, encode_tokens
from priormim.models.zoo.base import PretrainOutput, ZooPretrainer

__all__ = ["SimMIM", "simmim_l1_loss"]


def simmim_l1_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute error over the pixels of the masked patches (SimMIM's loss).

    pred, target: ``[B, L, P]``; mask: bool ``[B, L]``. Visible patches do not count.
    """
    m = mask[..., None].float()
    err = (pred.float() - target.float()).abs() * m
    return err.sum() / (m.sum() * pred.shape[-1]).clamp_min(1.0)


class SimMIM(ZooPretrainer):
    """SimMIM: the encoder sees *every* patch, masked ones replaced by a learned mask token
    (before the position embedding); a linear head maps each output token to its patch's
    pixels; L1 loss on the masked pixels only. Pair with block masking (``masking.name=block``,
    ratio 0.6, 32-px blocks: ``mask_patch_size = 32 // patch_size``).

    Differences here: the ViT head is a per-token ``Linear(D, p*p*C)`` -- equal to SimMIM's
    1x1 convolution + pixel shuffle at the patch stride; targets are the engine's normalised
    grey levels (no per-patch normalisation, as in the paper).

    Shapes: images ``[B, C, H, W]``, mask bool ``[B, L]``; :meth:`forward_pred` -> ``[B, L, p*p*C]``.
    """

    def __init__(
        self,
        *,
        encoder_name: str = "vit_tiny_patch16_224",
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 1,
        encoder_kwargs: dict | None = None,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__(encoder_name=encoder_name, img_size=img_size, in_chans=in_chans,
                         encoder_kwargs=encoder_kwargs, drop_path_rate=drop_path_rate)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.head = nn.Linear(self.embed_dim, self.patch_size**2 * in_chans)
        self.head.apply(_init_weights)

    def forward_pred(self, images: Tensor, mask: Tensor) -> Tensor:
        """Pixel prediction for every patch ``[B, L, p*p*C]``."""
        x = encode_tokens(self.encoder, images, mask=mask, mask_token=self.mask_token)
        return self.head(x[:, self.num_prefix_tokens :])

    def forward(self, images: Tensor, mask: Tensor, *, progress: float = 0.0, scores: Tensor | None = None) -> PretrainOutput:
        loss = simmim_l1_loss(self.forward_pred(images, mask), self.patchify(images), mask)
        return PretrainOutput(loss=loss, terms={"loss_rec": loss})
