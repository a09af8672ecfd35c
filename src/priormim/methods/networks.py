"""Networks of the MAE family built from a recipe's ``model.*`` block (the methods' default)."""

from __future__ import annotations

from typing import Any

from priormim.config import PretrainConfig
from priormim.errors import UserError
from priormim.models.mae import MaskedAutoencoder
from priormim.models.run import mae_kwargs

__all__ = ["build_mae"]


def build_mae(cfg: PretrainConfig, cls: type[MaskedAutoencoder] = MaskedAutoencoder, **extra: Any) -> MaskedAutoencoder:
    """``cls(**mae_kwargs(cfg), **extra)``; refuses ``model.method_kwargs`` (zoo methods only)."""
    if cfg.model.method_kwargs:
        from priormim.models.zoo import ZOO_MODELS

        raise UserError(f"model.method_kwargs is for the zoo methods ({', '.join(ZOO_MODELS)}); "
                        f"method '{cfg.method}' takes none")
    try:
        return cls(**mae_kwargs(cfg), **extra)
    except ValueError as exc:
        raise UserError(f"model: {exc}") from exc
