"""CheXWorld-style latent prediction (I-JEPA core)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from priormim.masking import mask_to_indices
from priormim.models.mae import encode_tokens
from priormim.models.zoo.base import EMATeacher, PretrainOutput, TokenPredictor, ZooPretrainer, cosine_momentum

__all__ = ["CheXWorldJEPA"]


class CheXWorldJEPA(ZooPretrainer):
    """Latent-space prediction in the style of CheXWorld (Yue et al., "CheXWorld: Exploring
    Image World Modeling for Radiograph Representation Learning", CVPR 2025), whose local
    anatomical-structure task is I-JEPA (Assran et al., CVPR 2023).

    The context ``encoder`` sees only the visible patches; an EMA target encoder (momentum
    0.996 -> 1, cosine) sees the whole image; a narrow transformer predictor
    (:class:`~priormim.models.zoo.base.TokenPredictor`, width ``decoder_embed_dim``) fills in
    the masked positions from the context tokens. Loss: smooth L1 between the predictions and
    the layer-normed target features of the masked patches.

    Differences here: only CheXWorld's local-structure (I-JEPA) task -- no global layout or
    domain-variation branches; the mask comes from the engine (``block`` masking with large
    blocks in the recipe) rather than I-JEPA's multi-block sampler; the exported encoder is the
    context encoder (``encoder``), not the EMA target.

    Args:
        decoder_embed_dim, decoder_depth, decoder_num_heads: predictor width, depth, heads.
        momentum: initial EMA momentum of the target encoder.
        encoder_name, img_size, in_chans, encoder_kwargs, drop_path_rate: as MAE's.

    Shapes: images ``[B, C, H, W]``, mask bool ``[B, L]`` (True = to predict).
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
        drop_path_rate: float = 0.0,
        momentum: float = 0.996,
        encoder_init: str = "sincos",  # I-JEPA's ViT: fixed 2-D sin-cos position embedding
    ) -> None:
        super().__init__(encoder_name=encoder_name, img_size=img_size, in_chans=in_chans,
                         encoder_kwargs=encoder_kwargs, drop_path_rate=drop_path_rate,
                         encoder_init=encoder_init)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.predictor = TokenPredictor(
            self.embed_dim, self.embed_dim, self.grid_size, dim=decoder_embed_dim, depth=decoder_depth,
            num_heads=decoder_num_heads, num_prefix_tokens=self.num_prefix_tokens,
        )
        self.teacher = EMATeacher(self.encoder)

    @torch.no_grad()
    def targets(self, images: Tensor) -> Tensor:
        """Layer-normed target-encoder features of every patch ``[B, L, D]`` (no gradient)."""
        h = encode_tokens(self.teacher[0], images)[:, self.num_prefix_tokens :].float()
        return F.layer_norm(h, h.shape[-1:])

    def forward(self, images: Tensor, mask: Tensor, *, progress: float = 0.0, scores: Tensor | None = None) -> PretrainOutput:
        idx = mask_to_indices(mask)
        context = encode_tokens(self.encoder, images, ids_keep=idx.ids_keep)
        pred = self.predictor(context, mask)  # [B, n_mask, D]
        target = self.targets(images)
        target = torch.gather(target, 1, idx.ids_masked[..., None].expand(-1, -1, target.shape[-1]))
        loss = F.smooth_l1_loss(pred.float(), target)
        return PretrainOutput(loss=loss, terms={"loss_latent": loss})

    def after_optimizer_step(self, progress: float) -> None:
        """EMA update of the target encoder after ``optimizer.step()``."""
        self.teacher.update(self.encoder, momentum=cosine_momentum(progress, self.momentum))
