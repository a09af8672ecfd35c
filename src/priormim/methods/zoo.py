"""The method zoo (SimMIM, AMT, HPM, DeblurringMIM, CrossMAE, MoCo v3, DINO, CheXWorld-style).

Each zoo model (:mod:`priormim.models.zoo`) computes its whole loss in its own ``forward(images,
mask, progress=, scores=)``; :class:`ZooMethod` adapts that to the protocol, and
:class:`ScoredZooMethod` (AMT, HPM) masks by the model's own ``mask_scores`` instead of the data
prior. The EMA teachers (MoCo v3, DINO, CheXWorld) update in the model's
``after_optimizer_step``, which every zoo model has (a no-op by default).
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from priormim.config import PretrainConfig
from priormim.errors import UserError
from priormim.methods.base import LossOutput, MaskGuide, PretrainMethod, StepInfo, detach_terms
from priormim.models.run import mae_kwargs
from priormim.models.zoo import ZooPretrainer

__all__ = ["ScoredZooMethod", "ZooMethod", "build_zoo_model"]


def build_zoo_model(cls: type[ZooPretrainer], cfg: PretrainConfig) -> ZooPretrainer:
    """``cls`` with the ``model.*`` options it takes (see :func:`~priormim.models.run.mae_kwargs`)
    and ``model.method_kwargs``.

    Zoo methods compute their own loss, so VasoMIM's consistency loss, VP-MIM's gaze weighting
    and pyramid heads are refused rather than silently ignored.
    """
    if (cfg.consistency.enabled or cfg.gaze_weighting.enabled or cfg.model.pyramid_scales
            or cfg.masking.segmentor_weight > 0):
        raise UserError(f"method '{cfg.method}' has its own loss and masking: set consistency.enabled=false, "
                        "gaze_weighting.enabled=false, masking.segmentor_weight=0 and no model.pyramid_scales")
    base = mae_kwargs(cfg)
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())  # wraps a whole MAE
    own = sorted(n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in base)
    unknown = sorted(set(cfg.model.method_kwargs) - set(own))
    if unknown:
        raise UserError(f"unknown model.method_kwargs '{unknown[0]}' for method '{cfg.method}' "
                        f"(valid: {', '.join(own) or 'none'})")
    kwargs = {k: v for k, v in base.items() if takes_any or k in params}
    try:
        return cls(**kwargs, **cfg.model.method_kwargs)
    except ValueError as exc:
        raise UserError(f"model ({cfg.method}): {exc}") from exc


class ZooMethod(PretrainMethod):
    """A zoo model, whose ``forward`` is its loss. ``model_cls`` names the model class to build."""

    model_cls: type[ZooPretrainer] = ZooPretrainer

    @classmethod
    def of(cls, model_cls: type[ZooPretrainer]) -> type[ZooMethod]:
        """The method class of one zoo model (a registry entry)."""
        return type(f"{model_cls.__name__}Method", (cls,), {"model_cls": model_cls, "__module__": cls.__module__})

    @classmethod
    def build_model(cls, cfg: PretrainConfig) -> nn.Module:
        return build_zoo_model(cls.model_cls, cfg)

    def loss(self, images: Tensor, mask: Tensor, *, patch_prior: Tensor, guide: MaskGuide,
             step: StepInfo) -> LossOutput:
        res = self.model(images, mask, progress=step.step_progress, scores=guide.aux.get("scores"))
        return LossOutput(loss=res.loss, terms=detach_terms(res.terms, res.loss))

    def after_optimizer_step(self, progress: float) -> None:
        self.model.after_optimizer_step(progress)


class ScoredZooMethod(ZooMethod):
    """A zoo model that masks by its own per-patch scores (AMT attention, HPM predicted loss):
    ``model.mask_scores(images, progress=)`` ``[B, L]`` or None (random masking, e.g. warm-up)."""

    def guide(self, images: Tensor, prior: Tensor, patch_prior: Tensor, *, step: StepInfo) -> MaskGuide:
        with step.amp(), torch.no_grad():
            scores = self.model.mask_scores(images, progress=step.step_progress)
            scores = None if scores is None else scores.detach().float()
        return MaskGuide(scores=scores, aux={"scores": scores})
