"""The frozen vessel segmentor behind VasoMIM's anatomical consistency loss.

A small segmentation network trained on the vessel prior's pseudo-labels: UNeXt-S by default
(what the official VasoMIM code uses), or priormim's earlier small U-Net. It takes images in
``[0, 1]`` and normalises them itself (buffers ``norm_mean``/``norm_std``), so it can judge
reconstructions from any MAE without knowing that MAE's input normalisation.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from priormim.errors import UserError
from priormim.models.unet import UNet
from priormim.models.unext import unext, unext_s

SEGMENTOR_ARCHS = ("unext_s", "unext", "unet")
# Files written before the ``arch`` key existed hold the U-Net.
LEGACY_ARCH = "unet"


def build_segmentor_net(arch: str, *, base_channels: int = 8, levels: int = 3) -> nn.Module:
    """The bare network ``[B, 1, H, W] -> [B, 1, H, W]`` logits; ``base_channels``/``levels``
    only shape the U-Net (the UNeXt widths are fixed by the variant)."""
    if arch == "unext_s":
        return unext_s(in_chans=1, out_chans=1)
    if arch == "unext":
        return unext(in_chans=1, out_chans=1)
    if arch == "unet":
        return UNet(in_chans=1, out_chans=1, base_channels=base_channels, levels=levels)
    raise ValueError(f"unknown segmentor arch {arch!r}; choose one of {', '.join(SEGMENTOR_ARCHS)}")


class VesselSegmentor(nn.Module):
    """``[B, 1, H, W]`` images in [0, 1] -> vessel logits ``[B, 1, H, W]`` (any ``H, W``).

    Args:
        arch: ``unext_s`` (default, VasoMIM's choice), ``unext`` or ``unet``.
        base_channels, levels: U-Net width and depth (ignored by the UNeXt variants).
        norm_mean, norm_std: the data set's grey-level statistics, applied inside ``forward``.
    """

    def __init__(
        self,
        *,
        arch: str = "unext_s",
        base_channels: int = 8,
        levels: int = 3,
        norm_mean: float = 0.5,
        norm_std: float = 0.25,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.base_channels = base_channels
        self.levels = levels
        self.net = build_segmentor_net(arch, base_channels=base_channels, levels=levels)
        self.register_buffer("norm_mean", torch.tensor(float(norm_mean)))
        self.register_buffer("norm_std", torch.tensor(float(norm_std)))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.norm_mean) / self.norm_std)

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save

        from priormim.io import atomic_write_bytes

        path = Path(path)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        spec = {"arch": self.arch, "base_channels": self.base_channels, "levels": self.levels}
        atomic_write_bytes(path, save(state, metadata={"priormim_segmentor": json.dumps(spec)}))  # one-line WriteError on a full disk
        return path


def load_segmentor(path: str | Path) -> VesselSegmentor:
    """A saved :class:`VesselSegmentor` (in train mode, like a fresh module; freeze it to use it)."""
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["priormim_segmentor"])
        state = load_file(str(path))
    except (OSError, KeyError, ValueError, SafetensorError) as exc:  # JSONDecodeError is a ValueError
        raise UserError(f"not a priormim segmentor file ({type(exc).__name__}); train one with `priormim train-segmentor`", path) from exc
    arch = meta.get("arch", LEGACY_ARCH)
    if arch not in SEGMENTOR_ARCHS:
        raise UserError(f"segmentor arch {arch!r} is unknown to this priormim (knows {', '.join(SEGMENTOR_ARCHS)}); "
                        "retrain it with `priormim train-segmentor`", path)
    model = VesselSegmentor(arch=arch, base_channels=int(meta.get("base_channels", 8)), levels=int(meta.get("levels", 3)))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"segmentor weights do not fit its {arch} network; retrain it with `priormim train-segmentor`",
                        path) from exc
    return model
