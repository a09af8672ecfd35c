"""VP-MIM: pyramid reconstruction weighted by recalibrated gaze (:func:`priormim.models.vpmim.vpmim_loss`).

Any MAE-family recipe with ``model.pyramid_scales`` runs this method; ``gaze_weighting.enabled``
weights the loss by the per-patch gaze heat (the data prior), recalibrated with the encoder's
class-token attention (``gaze_weighting.alpha``, ``gaze_weighting.gamma``). The masking guidance
is MAE's (:meth:`MAEMethod.guide`: the data prior, blended with a segmentor if one is attached).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from priormim.config import PretrainConfig
from priormim.methods.base import LossOutput, MaskGuide, StepInfo
from priormim.methods.mae import MAEMethod, build_mae
from priormim.models.vpmim import VPMIMAutoencoder, vpmim_loss

__all__ = ["VPMIMMethod"]


class VPMIMMethod(MAEMethod):
    """VP-MIM around a :class:`VPMIMAutoencoder`.

    Args:
        model: the pyramid autoencoder.
        gaze_weighting: weight the loss by ``patch_prior`` (recalibrated gaze); off: plain
            multi-scale reconstruction.
        gaze_alpha, gaze_gamma: see :func:`~priormim.losses.gaze_weighting.recalibrate_gaze` and
            :func:`~priormim.losses.gaze_weighting.gaze_loss_weights`.
        **mae_options: :class:`MAEMethod`'s (guidance by a segmentor; VP-MIM has no consistency term).
    """

    def __init__(self, model: nn.Module, *, gaze_weighting: bool = False, gaze_alpha: float = 0.5,
                 gaze_gamma: float = 1.0, **mae_options: Any) -> None:
        super().__init__(model, **mae_options)
        self.gaze_weighting = bool(gaze_weighting)
        self.gaze_alpha = float(gaze_alpha)
        self.gaze_gamma = float(gaze_gamma)

    @classmethod
    def options(cls, cfg: PretrainConfig) -> dict[str, Any]:
        g = cfg.gaze_weighting
        return {**super().options(cfg), "gaze_weighting": g.enabled, "gaze_alpha": g.alpha, "gaze_gamma": g.gamma}

    @classmethod
    def build_model(cls, cfg: PretrainConfig) -> nn.Module:
        m = cfg.model
        return build_mae(cfg, VPMIMAutoencoder, pyramid_scales=m.pyramid_scales, pyramid_weights=m.pyramid_weights)

    def loss(self, images: Tensor, mask: Tensor, *, patch_prior: Tensor, guide: MaskGuide,
             step: StepInfo) -> LossOutput:
        heat = patch_prior if self.gaze_weighting else None
        res = vpmim_loss(self.model, images, mask, heat, alpha=self.gaze_alpha, gamma=self.gaze_gamma)
        return LossOutput(loss=res.loss, terms={k: v.detach() for k, v in res.terms.items()})
