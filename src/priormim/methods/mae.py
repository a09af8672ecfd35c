"""MAE, VasoMIM and its two ablations: one method, ``L = L_rec + lambda * L_cons``.

* ``mae``: masked reconstruction only (MAE's loss, :func:`masked_reconstruction_loss`).
* ``vasomim``: plus the anatomical consistency term through the frozen segmentor ``S``
  (``consistency.enabled``, weight ``consistency.weight``) and masking guided by
  ``(1 - w) * vessel prior + w * sigmoid(S(crop))`` (``masking.segmentor_weight`` = w).
* ``vasomim_guidance_only`` / ``vasomim_consistency_only``: one of the two.

What differs between them is configuration, not code: the recipe says whether the consistency
term is on and how much the segmentor guides the masking. ``model.pyramid_scales`` makes any of
these names a VP-MIM run (:mod:`priormim.methods.vpmim`), as it always has.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from priormim.config import PretrainConfig
from priormim.losses import consistency_loss, denormalize_prediction, masked_reconstruction_loss, soft_target_entropy
from priormim.masking import blend_guidance, patch_prob_from_prior
from priormim.methods.base import LossOutput, MaskGuide, PretrainMethod, StepInfo
from priormim.methods.networks import build_mae

__all__ = ["MAEMethod", "build_mae", "segmentor_probs"]


def segmentor_probs(segmentor: nn.Module, imgs: Tensor, *, norm_mean: float, norm_std: float) -> Tensor:
    """``sigmoid(S(x))`` ``[B, 1, H, W]`` float32 of the frozen segmentor on the current crops.

    ``imgs`` are the normalised model inputs; the segmentor takes ``[0, 1]`` images.
    """
    with torch.no_grad():
        return torch.sigmoid(segmentor(imgs.float() * norm_std + norm_mean).float())


class MAEMethod(PretrainMethod):
    """MAE / VasoMIM: reconstruction, plus consistency through the attached segmentor.

    Args:
        model: a :class:`MaskedAutoencoder`.
        consistency: add ``consistency_weight * L_cons`` (needs :meth:`attach_segmentor`).
        segmentor_weight: share ``w`` of ``sigmoid(S(crop))`` in the masking guidance (0: the
            data prior alone; needs a segmentor when > 0).
    """

    def __init__(self, model: nn.Module, *, consistency: bool = False, consistency_weight: float = 1.0,
                 segmentor_weight: float = 0.0) -> None:
        super().__init__(model)
        self.consistency = bool(consistency)
        self.consistency_weight = float(consistency_weight)
        self.segmentor_weight = float(segmentor_weight)

    @classmethod
    def options(cls, cfg: PretrainConfig) -> dict[str, Any]:
        return {"consistency": cfg.consistency.enabled, "consistency_weight": cfg.consistency.weight,
                "segmentor_weight": cfg.masking.segmentor_weight}

    @classmethod
    def from_config(cls, cfg: PretrainConfig, model: nn.Module | None = None) -> MAEMethod:
        return cls(model if model is not None else cls.build_model(cfg), **cls.options(cfg))

    def guide(self, images: Tensor, prior: Tensor, patch_prior: Tensor, *, step: StepInfo) -> MaskGuide:
        """The frozen segmentor (if any) runs once on the crops: ``sigmoid(S(x))`` is blended into
        the guidance (official VasoMIM: 0.5 * vessel prior + 0.5 * sigmoid(S(crop))) and is the
        consistency loss's target."""
        if self._frozen is None:
            return MaskGuide(scores=patch_prior)
        segmentor, mean, std = self._frozen
        with step.amp():
            seg_target = segmentor_probs(segmentor, images, norm_mean=mean, norm_std=std)
        scores = patch_prior
        if self.segmentor_weight > 0:
            scores = patch_prob_from_prior(blend_guidance(prior, seg_target, self.segmentor_weight), self.patch_size)
        return MaskGuide(scores=scores, aux={"seg_target": seg_target})

    def loss(self, images: Tensor, mask: Tensor, *, patch_prior: Tensor, guide: MaskGuide,
             step: StepInfo) -> LossOutput:
        """``L_rec`` (+ ``lambda * L_cons`` on the full de-normalised prediction)."""
        model = self.model
        out = model(images, mask)
        target = model.patchify(images)
        l_rec = masked_reconstruction_loss(out.pred, target, mask, norm_pix_loss=model.norm_pix_loss)
        terms = {"loss_rec": l_rec.detach()}
        loss = l_rec
        if self.consistency and self._frozen is not None:
            segmentor, mean, std = self._frozen
            pred = out.pred.float()
            if model.norm_pix_loss:
                pred = denormalize_prediction(pred, target.float())
            # The segmentor works on [0, 1] images; undo the data set's normalisation.
            recon = model.unpatchify(pred) * std + mean
            original = images.float() * std + mean
            seg_target = guide.aux.get("seg_target")
            if seg_target is None:
                with torch.no_grad():
                    seg_target = torch.sigmoid(segmentor(original).float())
            l_cons = consistency_loss(segmentor, original, recon, target=seg_target)
            loss = loss + self.consistency_weight * l_cons
            terms["loss_cons"] = l_cons.detach()
            # BCE minus the targets' entropy (a KL): 0 when S agrees, unlike L_cons itself.
            terms["loss_cons_kl"] = (l_cons - soft_target_entropy(seg_target)).detach()
        terms["loss"] = loss.detach()
        return LossOutput(loss=loss, terms=terms)

