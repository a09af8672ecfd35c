"""Which torch device a command runs on (one rule and one set of messages for every command)."""

from __future__ import annotations

import torch

from priormim.errors import UserError

__all__ = ["resolve_device"]


def resolve_device(name: str | torch.device, local_rank: int = 0) -> torch.device:
    """``auto`` -> this process's GPU if there is one, else CPU; UserError for a bad name."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for but no CUDA GPU is available; use --device cpu or auto")
    return dev
