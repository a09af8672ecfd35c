"""The pretraining-method protocol: what the engine calls, and nothing else.

A method is an ``nn.Module`` that owns its network (``self.model``: checkpointed, optimised, its
``encoder`` exported) and its whole loss. The engine wraps the method once for DDP and calls::

    out = method(images, prior, step=StepInfo(...))      # -> MethodOutput(loss, terms, mask, ...)
    (out.loss / accum).backward(); optimizer.step()
    method.after_optimizer_step(progress)                # default: nothing (EMA teachers override)

:meth:`PretrainMethod.forward` is a template, the one path of a batch: per-patch prior ->
:meth:`~PretrainMethod.guide` (what the masking is guided by; default: the data prior) -> the
run's masking strategy -> :meth:`~PretrainMethod.loss` (under the run's AMP policy). A new
method usually overrides :meth:`~PretrainMethod.loss` only; see ``docs/methods.md``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from priormim.config import PretrainConfig
from priormim.masking import MaskingContext, patch_prob_from_prior
from priormim.methods.networks import build_mae

__all__ = ["LossOutput", "MaskGuide", "MethodOutput", "PretrainMethod", "StepInfo"]


@dataclass
class StepInfo:
    """What the engine knows about the current step (everything but the batch).

    masking: the run's masking strategy, called as ``masking(MaskingContext) -> bool [B, L]``.
    progress: the masking schedule's progress in ``[0, 1]`` (per epoch; see ``masking_progress``).
    step_progress: share of training done at this step, in ``[0, 1]`` (model schedules, EMA).
    generator: the mask generator (None: the global RNG).
    amp: the run's AMP policy, a factory of autocast contexts (``nullcontext``: full precision).
    """

    masking: Callable[[MaskingContext], Tensor] | None = None
    progress: float = 0.0
    step_progress: float = 0.0
    generator: torch.Generator | None = None
    amp: Callable[[], AbstractContextManager] = contextlib.nullcontext


@dataclass
class MaskGuide:
    """What the masking is guided by, from :meth:`PretrainMethod.guide`.

    scores: ``[B, L]`` float per-patch scores the masking strategy reads as ``patch_prior``
        (None: the strategy masks at random).
    aux: per-batch tensors the method computed on the way and reuses in :meth:`~PretrainMethod.loss`
        (e.g. VasoMIM's segmentor target ``seg_target`` ``[B, 1, H, W]``), by name.
    """

    scores: Tensor | None
    aux: dict[str, Tensor | None] = field(default_factory=dict)


@dataclass
class LossOutput:
    """A method's loss: the scalar ``loss`` to back-propagate and named scalar ``terms`` (detached,
    for logging; ``terms["loss"]`` is the loss itself)."""

    loss: Tensor
    terms: dict[str, Tensor]


@dataclass
class MethodOutput:
    """One batch through a method: ``loss`` and ``terms`` (as :class:`LossOutput`), the ``mask``
    bool ``[B, L]`` (True = masked), the masking context ``ctx`` and ``patch_prior`` ``[B, L]``
    (per-patch share of the data prior, for logging)."""

    loss: Tensor
    terms: dict[str, Tensor]
    mask: Tensor
    ctx: MaskingContext
    patch_prior: Tensor


class PretrainMethod(nn.Module):
    """Base class of every pretraining method.

    Subclasses implement :meth:`loss`; they may override :meth:`guide` (masking scores) and
    :meth:`after_optimizer_step` (e.g. an EMA teacher), whose defaults are the data prior and
    nothing. :meth:`from_config` builds the method from a recipe (default: an MAE of the recipe's
    ``model.*`` block); register it with :func:`priormim.methods.register_method`.

    ``model`` is the network: its ``state_dict`` is the checkpoint's ``"model"``, its parameters
    are optimised, ``model.encoder`` is exported, and it has ``patch_size`` and ``grid_size``.
    A frozen segmentor (:meth:`attach_segmentor`) is held outside the module tree: it is in
    neither the state dict nor the parameters (nor DDP's buckets).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._frozen: tuple[nn.Module, float, float] | None = None  # (segmentor, norm mean, norm std)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: PretrainConfig, model: nn.Module | None = None) -> PretrainMethod:
        """The method for recipe ``cfg``, around ``model`` (built by :meth:`build_model` if None)."""
        return cls(model if model is not None else cls.build_model(cfg))

    @classmethod
    def build_model(cls, cfg: PretrainConfig) -> nn.Module:
        """The network for ``cfg``; default: :class:`~priormim.models.mae.MaskedAutoencoder` of ``model.*``."""
        return build_mae(cfg)

    def attach_segmentor(self, segmentor: nn.Module, *, norm_mean: float, norm_std: float) -> None:
        """Give the method the run's frozen segmentor (it takes ``[0, 1]`` images; model inputs
        are ``(x - norm_mean) / norm_std``). Kept out of the module tree on purpose."""
        self._frozen = (segmentor, float(norm_mean), float(norm_std))

    @property
    def segmentor(self) -> nn.Module | None:
        return None if self._frozen is None else self._frozen[0]

    # -- geometry ----------------------------------------------------------------------------------
    @property
    def patch_size(self) -> int:
        return self.model.patch_size

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.model.grid_size

    # -- the protocol ------------------------------------------------------------------------------
    def forward(self, images: Tensor, prior: Tensor, *, step: StepInfo) -> MethodOutput:
        """One batch, forward only: images ``[B, C, H, W]`` normalised, prior ``[B, 1, H, W]`` in [0, 1]."""
        patch_prior = patch_prob_from_prior(prior, self.patch_size)
        guide = self.guide(images, prior, patch_prior, step=step)
        ctx = MaskingContext(batch_size=images.shape[0], grid_size=self.grid_size, device=images.device,
                             patch_prior=guide.scores, progress=step.progress, generator=step.generator)
        mask = step.masking(ctx)
        with step.amp():
            out = self.loss(images, mask, patch_prior=patch_prior, guide=guide, step=step)
        return MethodOutput(loss=out.loss, terms=out.terms, mask=mask, ctx=ctx, patch_prior=patch_prior)

    def guide(self, images: Tensor, prior: Tensor, patch_prior: Tensor, *, step: StepInfo) -> MaskGuide:
        """What the masking is guided by; default: the data prior's per-patch share ``patch_prior``."""
        return MaskGuide(scores=patch_prior)

    def loss(self, images: Tensor, mask: Tensor, *, patch_prior: Tensor, guide: MaskGuide,
             step: StepInfo) -> LossOutput:
        """The method's loss for ``images`` ``[B, C, H, W]`` under ``mask`` bool ``[B, L]``."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss()")

    def after_optimizer_step(self, progress: float) -> None:
        """Called after every ``optimizer.step()`` with the share of training done; default: nothing."""

    def extra_repr(self) -> str:
        return "" if self._frozen is None else "segmentor attached"


def detach_terms(terms: dict[str, Any], loss: Tensor) -> dict[str, Tensor]:
    """``terms`` detached, with ``terms["loss"]`` the detached ``loss`` (last)."""
    out = {k: v.detach() for k, v in terms.items()}
    out["loss"] = loss.detach()
    return out
