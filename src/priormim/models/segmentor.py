"""The frozen vessel segmentor behind VasoMIM's anatomical consistency loss.

A small U-Net trained on the vessel prior's pseudo-labels. It takes images in ``[0, 1]`` and
normalises them itself (buffers ``norm_mean``/``norm_std``), so it can judge reconstructions
from any MAE without knowing that MAE's input normalisation.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from priormim.errors import UserError
from priormim.models.unet import UNet


class VesselSegmentor(nn.Module):
    """``[B, 1, H, W]`` images in [0, 1] -> vessel logits ``[B, 1, H, W]``."""

    def __init__(self, *, base_channels: int = 8, levels: int = 3, norm_mean: float = 0.5, norm_std: float = 0.25) -> None:
        super().__init__()
        self.base_channels = base_channels
        self.levels = levels
        self.net = UNet(in_chans=1, out_chans=1, base_channels=base_channels, levels=levels)
        self.register_buffer("norm_mean", torch.tensor(float(norm_mean)))
        self.register_buffer("norm_std", torch.tensor(float(norm_std)))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.norm_mean) / self.norm_std)

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save

        from priormim.io import atomic_write_bytes

        path = Path(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {"priormim_segmentor": json.dumps({"base_channels": self.base_channels, "levels": self.levels})}
        atomic_write_bytes(path, save(state, metadata=meta))  # one-line WriteError on a full disk
        return path


def load_segmentor(path: str | Path) -> VesselSegmentor:
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["priormim_segmentor"])
        state = load_file(str(path))
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise UserError(f"not a priormim segmentor file ({type(exc).__name__}); train one with `priormim train-segmentor`", path) from exc
    model = VesselSegmentor(**meta)
    model.load_state_dict(state)
    return model
