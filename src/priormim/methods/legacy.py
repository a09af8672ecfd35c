"""A method around a bare network, chosen by the network's class: for the older call
``compute_losses(model, images, mask, ...)`` (tests, benchmarks), which names no method.

The engine never uses this: it builds methods from the recipe (:func:`priormim.methods.build_method`).
"""

from __future__ import annotations

from torch import nn

from priormim.methods.base import PretrainMethod
from priormim.methods.mae import MAEMethod
from priormim.methods.vpmim import VPMIMMethod
from priormim.methods.zoo import ZooMethod
from priormim.models.mae import MaskedAutoencoder
from priormim.models.vpmim import VPMIMAutoencoder
from priormim.models.zoo import ZooPretrainer

# Most specific first: a VPMIMAutoencoder is a MaskedAutoencoder.
_BY_MODEL: tuple[tuple[type[nn.Module], type[PretrainMethod]], ...] = (
    (ZooPretrainer, ZooMethod),
    (VPMIMAutoencoder, VPMIMMethod),
    (MaskedAutoencoder, MAEMethod),
)


def method_for_model(model: nn.Module, **options) -> PretrainMethod:
    """The method class that trains ``model``'s class, built around it with ``options`` (its
    constructor's keyword arguments that the class takes; the others are dropped)."""
    import inspect

    for model_cls, method_cls in _BY_MODEL:
        if isinstance(model, model_cls):
            accepted = set()
            for klass in method_cls.__mro__:
                if "__init__" in vars(klass):
                    accepted |= set(inspect.signature(klass.__init__).parameters)
            return method_cls(model, **{k: v for k, v in options.items() if k in accepted})
    raise TypeError(f"no pretraining method trains a {type(model).__name__}")
