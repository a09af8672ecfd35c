"""The method zoo: pretraining baselines trained by the same engine as MAE and VasoMIM.

Every model is a plain ``nn.Module`` with a timm ``VisionTransformer`` as ``encoder`` (the only
part that is exported), ``patch_size`` and ``grid_size``, and computes its loss in
``forward(images, mask, *, progress, scores=None) -> PretrainOutput``; see
:mod:`priormim.models.zoo.base` for the engine hooks (``mask_scores``, ``after_optimizer_step``)
and ``docs/zoo.md`` for each method.
"""

from priormim.models.zoo.base import EMATeacher, PretrainOutput, ZooPretrainer
from priormim.models.zoo.chexworld import CheXWorldJEPA
from priormim.models.zoo.contrastive import DINO, MoCoV3
from priormim.models.zoo.crossmae import CrossMAE
from priormim.models.zoo.mae_variants import AMT, HPM, DeblurMIM
from priormim.models.zoo.simmim import SimMIM

#: ``cfg.method`` -> model class (the engine's registry of zoo methods).
ZOO_MODELS: dict[str, type[ZooPretrainer]] = {
    "simmim": SimMIM,
    "amt": AMT,
    "hpm": HPM,
    "deblurmim": DeblurMIM,
    "crossmae": CrossMAE,
    "mocov3": MoCoV3,
    "dino": DINO,
    "chexworld": CheXWorldJEPA,
}

__all__ = [
    "AMT",
    "DINO",
    "HPM",
    "ZOO_MODELS",
    "CheXWorldJEPA",
    "CrossMAE",
    "DeblurMIM",
    "EMATeacher",
    "MoCoV3",
    "PretrainOutput",
    "SimMIM",
    "ZooPretrainer",
]
