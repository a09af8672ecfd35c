"""Shared pieces of the masking strategies: mask-count convention, indices, interface, registry.

A mask is a bool tensor ``[B, L]`` (``True`` = masked, ``L`` = number of patches in
row-major order over the patch grid) with exactly :func:`num_masked` ``True`` per row.
Every pure masking function is batched (no per-row Python loop) and accepts an optional
``torch.Generator``; the generator must live on the same device as the tensors it draws.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar, TypeVar

import torch
from torch import Tensor

__all__ = [
    "MaskIndices",
    "MaskingContext",
    "MaskingStrategy",
    "build_masking",
    "linear_schedule",
    "mask_to_indices",
    "masking_names",
    "num_masked",
    "register_masking",
]


def check_mask_ratio(mask_ratio: float) -> float:
    """Return ``mask_ratio`` as float; raise ValueError unless it lies in ``[0, 1)``."""
    r = float(mask_ratio)
    if not 0.0 <= r < 1.0:  # also rejects NaN
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio!r}")
    return r


def check_unit(name: str, value: float) -> float:
    """Return ``value`` as float; raise ValueError unless it lies in ``[0, 1]``."""
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v


def num_masked(num_patches: int, mask_ratio: float) -> int:
    """Number of masked patches per row, MAE's convention.

    ``len_keep = int(L * (1 - mask_ratio))`` and ``n_mask = L - len_keep``, so that a mask from
    any strategy here keeps exactly as many tokens as ``mae.models_mae.random_masking``.
    """
    if int(num_patches) != num_patches or num_patches < 1:
        raise ValueError(f"num_patches must be a positive int, got {num_patches!r}")
    r = check_mask_ratio(mask_ratio)
    return int(num_patches) - int(num_patches * (1 - r))


def linear_schedule(progress: float, start: float = 0.0, end: float = 0.5) -> float:
    """Weak-to-strong schedule: ``start + (end - start) * clamp(progress, 0, 1)``.

    ``progress`` is the fraction of training done (epoch / epochs, or step / steps).
    """
    p = float(progress)
    if math.isnan(p):
        raise ValueError("progress must be a number in [0, 1], got NaN")
    p = min(max(p, 0.0), 1.0)
    return float(start) + (float(end) - float(start)) * p


# --------------------------------------------------------------------------- helpers
def check_2d(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] < 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a [B, L] tensor with L >= 1, got {shape}")


def as_float(x: Tensor) -> Tensor:
    """Float view for key arithmetic: halves and ints go to float32 so ties stay rare."""
    if x.dtype in (torch.float32, torch.float64):
        return x
    return x.float()


def check_non_negative(name: str, x: Tensor) -> None:
    """Raise ValueError unless every entry of ``x`` is finite and >= 0 (one pass, one sync)."""
    if x.numel() == 0:
        return
    lo, hi = torch.aminmax(x)  # NaN propagates into both
    if not bool((lo >= 0) & (hi < float("inf"))):
        raise ValueError(f"{name} must be finite and non-negative")


def scatter_true(shape: tuple[int, int], index: Tensor, device: torch.device) -> Tensor:
    """Bool ``[B, L]`` with True at ``index`` (``[B, k]`` long) in every row."""
    out = torch.zeros(shape, dtype=torch.bool, device=device)
    return out.scatter_(1, index, True)


def top_n_mask(keys: Tensor, n: int) -> Tensor:
    """Bool ``[B, L]``: True at the ``n`` largest ``keys`` of each row (same n for every row)."""
    if n == 0:
        return torch.zeros(keys.shape, dtype=torch.bool, device=keys.device)
    idx = torch.topk(keys, n, dim=1, largest=True, sorted=False).indices
    return scatter_true(tuple(keys.shape), idx, keys.device)


def top_n_random_ties(values: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
    """Bool ``[B, L]``: the ``n`` largest ``values`` per row, ties broken uniformly at random.

    ``topk`` alone resolves ties by position (all-equal rows would always pick the same
    patches). Instead: ``t`` = the n-th largest value per row; every patch above ``t`` is
    taken and the remaining slots go to uniformly random patches equal to ``t``.
    """
    B, L = values.shape
    if n == 0:
        return torch.zeros((B, L), dtype=torch.bool, device=values.device)
    t = torch.topk(values, n, dim=1, sorted=False).values.amin(dim=1, keepdim=True)
    u = torch.rand((B, L), generator=generator, device=values.device)
    # Above t: 2 (always in), equal to t: u in [0, 1) (random order), below t: -1 (never).
    keys = torch.where(values > t, 2.0, torch.where(values == t, u, -1.0))
    return top_n_mask(keys, n)


def fill_uniform(chosen: Tensor, n_mask: int, generator: torch.Generator | None) -> Tensor:
    """Complete ``chosen`` (bool ``[B, L]``, at most ``n_mask`` True per row) to exactly
    ``n_mask`` True per row, adding patches uniformly at random among the unchosen ones.

    Chosen patches get keys in ``[1, 2]`` and the others in ``[0, 1)``, so one top-n keeps
    every chosen patch and a uniformly random subset of the rest.
    """
    u = torch.rand(chosen.shape, generator=generator, device=chosen.device)
    return top_n_mask(u + chosen.to(u.dtype), n_mask)


def random_mask(
    batch_size: int,
    num_patches: int,
    mask_ratio: float,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniform random mask, bool ``[batch_size, num_patches]``, exactly
    ``num_masked(num_patches, mask_ratio)`` True per row.

    Same draw as MAE's ``random_masking``: per-patch noise ``torch.rand(B, L)``, the
    ``len_keep`` lowest-noise patches stay visible. With the same generator state the mask
    equals MAE's. ``device`` defaults to the generator's device (CPU without one).
    """
    if int(batch_size) != batch_size or batch_size < 0:
        raise ValueError(f"batch_size must be a non-negative int, got {batch_size!r}")
    n_mask = num_masked(num_patches, mask_ratio)
    if device is None and generator is not None:
        device = generator.device  # a CUDA generator implies CUDA masks
    noise = torch.rand((int(batch_size), int(num_patches)), generator=generator, device=device)
    return top_n_mask(noise, n_mask)  # highest noise = masked, as MAE keeps the lowest


# --------------------------------------------------------------------------- indices
@dataclass
class MaskIndices:
    """Index form of a mask, MAE convention.

    Attributes:
        ids_keep: ``[B, n_keep]`` long, visible patches in ascending patch order.
        ids_masked: ``[B, n_mask]`` long, masked patches in ascending patch order.
        ids_restore: ``[B, L]`` long; ``torch.gather(cat([kept, masked], 1), 1, ids_restore)``
            (expanded over the channel dim) puts tokens back in patch order.
    """

    ids_keep: Tensor
    ids_masked: Tensor
    ids_restore: Tensor


def mask_to_indices(mask: Tensor) -> MaskIndices:
    """Convert a bool mask ``[B, L]`` to :class:`MaskIndices`.

    ``ids_shuffle = stable argsort(mask.int())`` (visible first, each group in ascending patch
    order) and ``ids_restore = argsort(ids_shuffle)``, as in MAE's ``random_masking``.
    Raises ValueError if the rows do not all have the same number of masked patches.
    """
    check_2d("mask", mask)
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    counts = mask.sum(dim=1)
    n_mask = int(counts[0]) if mask.shape[0] > 0 else 0
    if mask.shape[0] > 0 and not bool((counts == n_mask).all()):
        raise ValueError(
            "all rows of mask must have the same number of masked patches, got counts "
            f"{sorted(set(counts.tolist()))}"
        )
    n_keep = mask.shape[1] - n_mask
    ids_shuffle = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    return MaskIndices(
        ids_keep=ids_shuffle[:, :n_keep],
        ids_masked=ids_shuffle[:, n_keep:],
        ids_restore=ids_restore,
    )


# --------------------------------------------------------------------------- interface
@dataclass
class MaskingContext:
    """What a strategy may use to build a batch of masks.

    Attributes:
        batch_size: B.
        grid_size: patch grid ``(gh, gw)``; ``L = gh * gw``.
        device: where the mask is created when there is no ``patch_prior``.
        patch_prior: optional ``[B, L]`` float per-patch prior (vessel share, gaze heat,
            predicted loss, attention ...); guided strategies draw on its device.
        progress: training progress in ``[0, 1]`` for weak-to-strong schedules.
        generator: optional ``torch.Generator`` on the drawing device.
    """

    batch_size: int
    grid_size: tuple[int, int]
    device: torch.device | str = "cpu"
    patch_prior: Tensor | None = None
    progress: float = 0.0
    generator: torch.Generator | None = None

    @property
    def num_patches(self) -> int:
        return int(self.grid_size[0]) * int(self.grid_size[1])

    def checked_prior(self) -> Tensor | None:
        """``patch_prior`` after checking that it is ``[batch_size, num_patches]``."""
        p = self.patch_prior
        if p is not None and tuple(p.shape) != (self.batch_size, self.num_patches):
            raise ValueError(
                f"patch_prior must have shape [batch_size, gh*gw] = "
                f"[{self.batch_size}, {self.num_patches}], got {tuple(p.shape)}"
            )
        return p


class MaskingStrategy(ABC):
    """A masking strategy: ``strategy(ctx) -> bool [B, L]`` with exactly
    ``num_masked(L, strategy.mask_ratio)`` True per row.

    Subclasses are dataclasses whose fields are their hyper-parameters, so ``repr`` shows the
    configuration and :func:`build_masking` can check keyword names.
    """

    mask_ratio: float
    needs_prior: ClassVar[bool] = False  # True if the strategy uses ctx.patch_prior

    @abstractmethod
    def __call__(self, ctx: MaskingContext) -> Tensor:
        """Return a bool mask ``[ctx.batch_size, gh * gw]``."""

    def random_fallback(self, ctx: MaskingContext) -> Tensor:
        """MAE's uniform masking for a batch that has no prior; bool ``[B, L]``."""
        return random_mask(
            ctx.batch_size, ctx.num_patches, self.mask_ratio, device=ctx.device, generator=ctx.generator
        )

    def state(self, ctx: MaskingContext) -> dict[str, float]:
        """Scalars worth logging at this point of training, e.g. ``{"beta": 0.3}``."""
        return {}


# --------------------------------------------------------------------------- registry
_REGISTRY: dict[str, type[MaskingStrategy]] = {}
_S = TypeVar("_S", bound=type[MaskingStrategy])


def register_masking(name: str) -> Callable[[_S], _S]:
    """Class decorator adding a :class:`MaskingStrategy` dataclass to :func:`build_masking`."""

    def deco(cls: _S) -> _S:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"masking strategy {name!r} is already registered")
        _REGISTRY[name] = cls
        return cls

    return deco


def masking_names() -> list[str]:
    """Names accepted by :func:`build_masking`."""
    return sorted(_REGISTRY)


def build_masking(name: str, **kwargs: object) -> MaskingStrategy:
    """Build a strategy by name (``"random"``, ``"anatomy"``, ``"gaze"``, ``"block"``,
    ``"score"``) with its hyper-parameters as keyword arguments.

    Raises ValueError for an unknown name (listing the valid ones) or unknown keyword
    arguments (naming them and the accepted ones).
    """
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown masking strategy {name!r}; valid: {', '.join(masking_names())}")
    accepted = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown argument(s) for masking {name!r}: {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted)}"
        )
    return cls(**kwargs)
