"""Pretraining methods: one protocol (:class:`PretrainMethod`), one registry (:data:`METHODS`).

A method is one module (a :class:`PretrainMethod` subclass that owns its network and its loss),
one registry entry (:func:`register_method`) and one YAML recipe (``method: NAME`` plus the
``model.*`` / ``masking.*`` / ``optim.*`` it needs). The engine (:mod:`priormim.training.pretrain`)
builds ``build_method(cfg)`` and calls it only through the protocol; see ``docs/methods.md``
for a complete example.

Built in: ``mae``, ``vasomim``, ``vasomim_guidance_only``, ``vasomim_consistency_only``, ``vpmim``
(:mod:`priormim.methods.mae`, :mod:`priormim.methods.vpmim`) and the zoo (:mod:`priormim.methods.zoo`).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from priormim.config import PretrainConfig, register_method_name, unregister_method_name
from priormim.errors import UserError
from priormim.methods.base import LossOutput, MaskGuide, MethodOutput, PretrainMethod, StepInfo, detach_terms
from priormim.methods.mae import MAEMethod, segmentor_probs
from priormim.methods.vpmim import VPMIMMethod
from priormim.methods.zoo import ScoredZooMethod, ZooMethod
from priormim.models.zoo import AMT, HPM, ZOO_MODELS

#: A registry entry: ``(recipe, model or None) -> method`` (a subclass's ``from_config``).
MethodFactory = Callable[[PretrainConfig, "nn.Module | None"], PretrainMethod]

#: ``cfg.method`` -> factory.
METHODS: dict[str, MethodFactory] = {}


def register_method(name: str, method: type[PretrainMethod] | MethodFactory, *, replace: bool = False) -> None:
    """Make ``method: NAME`` in a recipe build ``method`` (a :class:`PretrainMethod` subclass, built
    by its ``from_config``, or a factory ``(cfg, model=None) -> PretrainMethod``).

    Register before loading the recipe: :func:`priormim.config.validate_config` accepts the
    packaged recipes' methods and the registered ones. ``replace`` allows re-registering a name.
    """
    if name in METHODS and not replace:
        raise ValueError(f"method {name!r} is already registered (pass replace=True to replace it)")
    factory = method.from_config if isinstance(method, type) else method
    METHODS[name] = factory
    register_method_name(name)


def unregister_method(name: str) -> None:
    """Remove a method registered with :func:`register_method` (tests, notebooks)."""
    METHODS.pop(name, None)
    unregister_method_name(name)


def build_method(cfg: PretrainConfig, model: nn.Module | None = None) -> PretrainMethod:
    """The method of recipe ``cfg`` (its network built from ``cfg`` unless ``model`` is given)."""
    factory = METHODS.get(cfg.method)
    if factory is None:
        raise UserError(f"unknown method '{cfg.method}' (registered: {', '.join(sorted(METHODS))}); "
                        "register it with priormim.methods.register_method")
    return factory(cfg, model)


def mae_family(cfg: PretrainConfig, model: nn.Module | None = None) -> PretrainMethod:
    """Registry entry of mae, vasomim, its ablations and vpmim: VP-MIM when ``model.pyramid_scales``
    is set, else :class:`MAEMethod` (the recipe decides consistency and guidance)."""
    if cfg.model.pyramid_scales:
        return VPMIMMethod.from_config(cfg, model)
    return MAEMethod.from_config(cfg, model)


for _name in ("mae", "vasomim", "vasomim_guidance_only", "vasomim_consistency_only", "vpmim"):
    register_method(_name, mae_family)
for _name, _cls in ZOO_MODELS.items():
    register_method(_name, (ScoredZooMethod if _cls in (AMT, HPM) else ZooMethod).of(_cls))

__all__ = [
    "METHODS",
    "LossOutput",
    "MAEMethod",
    "MaskGuide",
    "MethodOutput",
    "PretrainMethod",
    "ScoredZooMethod",
    "StepInfo",
    "VPMIMMethod",
    "ZooMethod",
    "build_method",
    "detach_terms",
    "register_method",
    "segmentor_probs",
    "unregister_method",
]
