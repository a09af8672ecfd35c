"""UNeXt (Valanarasu & Patel, MICCAI 2022): a conv + tokenised-MLP U-Net for fast segmentation.

VasoMIM's official code uses ``UNext_S`` as the frozen vessel segmentor of its anatomical
consistency loss. The layout, for an input of ``H x W``:

* three conv stages: 3x3 conv -> BatchNorm -> 2x2 max-pool -> ReLU (ReLU and max-pool commute,
  so this is the paper's conv-BN-ReLU-pool); outputs at ``H/2, H/4, H/8``;
* two tokenised MLP stages: an overlapping patch embedding (3x3 conv, stride 2, LayerNorm) then
  one shifted-MLP block (:class:`ShiftedMLPBlock`) and a LayerNorm; outputs at ``H/16, H/32``;
* a mirrored decoder: 3x3 conv -> BN -> bilinear x2 -> ReLU, then the skip is *added*; the first
  two decoder stages are followed by a shifted-MLP block and a LayerNorm; the last stage has no
  BN and no skip; a 1x1 conv head gives the logits.

Five stride-2 steps, so sides must be multiples of 32 inside the network; :class:`UNeXt` pads
other sizes (replicate, bottom/right) up to the next multiple of 32 (at least 64) and crops the
logits back, so any ``H, W >= 1`` works (the consistency loss sees crops of e.g. 64-224 px).
Multiples of 32 from 64 up run unpadded.

Widths: the reference ``archs.py`` (jeya-maria-jose/UNeXt-pytorch) builds ``UNext_S`` with conv
widths 8, 16, 32 and token widths 64, 128 (MLP ratio 1, shift size 5); with one input channel
that is 253 k parameters (the paper's table says 0.30 M). The full ``UNext`` uses 16, 32, 128 and
160, 256 (1.47 M).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DIVISOR = 32  # 3 max-pools + 2 stride-2 patch embeddings


def _padded(n: int) -> int:
    """The side the network runs at: the next multiple of 32, at least 64 (a 2x2 bottleneck, so
    BatchNorm in training mode has more than one value per channel even at batch 1)."""
    return max(2 * DIVISOR, -(-n // DIVISOR) * DIVISOR)


def _shift_offsets(channels: int, shift_size: int, device: torch.device) -> Tensor:
    """Per-channel shift in ``[-shift_size // 2, shift_size // 2]``: the channels are split into
    ``shift_size`` consecutive groups of ``ceil(C / shift_size)`` (as ``torch.chunk`` splits
    them), group ``g`` moves by ``g - shift_size // 2``. Returns ``[C]`` long."""
    group = math.ceil(channels / shift_size)
    return torch.arange(channels, device=device) // group - shift_size // 2


def shift_tokens(x: Tensor, *, dim: int, shift_size: int = 5) -> Tensor:
    """Shift each channel group of a channels-last map along one spatial axis, zero-filling.

    Args:
        x: ``[B, H, W, C]`` token map.
        dim: 1 (the H axis: rows move) or 2 (the W axis: columns move).
        shift_size: number of channel groups; group ``g`` moves by ``g - shift_size // 2``.

    Returns ``[B, H, W, C]`` with ``out[..., i, ..., c] = x[..., i - s_c, ..., c]`` where that
    index is inside the map and 0 elsewhere (no wrap-around). One gather for the whole batch.
    """
    if dim not in (1, 2):
        raise ValueError(f"dim must be 1 (H) or 2 (W), got {dim}")
    pad = shift_size // 2
    size, channels = x.shape[dim], x.shape[-1]
    offsets = _shift_offsets(channels, shift_size, x.device)  # [C]
    # Zero-pad the axis so every source index i - s_c lands in [0, size + 2 pad).
    pad_arg = (0, 0, 0, 0, pad, pad) if dim == 1 else (0, 0, pad, pad)
    xp = F.pad(x, pad_arg)
    src = torch.arange(size, device=x.device)[:, None] - offsets[None, :] + pad  # [size, C]
    shape = [1, 1, 1, channels]
    shape[dim] = size
    index = src.reshape(shape).expand(*x.shape[:dim], size, *x.shape[dim + 1:])
    return torch.gather(xp, dim, index)


class ShiftedMLP(nn.Module):
    """Shift along H -> Linear -> depth-wise 3x3 conv -> GELU -> shift along W -> Linear.

    The reference code shifts the H axis (rows) first and the W axis second; the paper words it
    as "width, then height". Either way one MLP sees each axis' neighbourhood in turn.
    ``[B, H, W, C] -> [B, H, W, C]``.
    """

    def __init__(self, dim: int, *, hidden: int | None = None, shift_size: int = 5) -> None:
        super().__init__()
        hidden = hidden or dim
        self.shift_size = shift_size
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc1(shift_tokens(x, dim=1, shift_size=self.shift_size))
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.act(x)
        return self.fc2(shift_tokens(x, dim=2, shift_size=self.shift_size))


class ShiftedMLPBlock(nn.Module):
    """Pre-norm residual block ``x + ShiftedMLP(LayerNorm(x))`` on ``[B, H, W, C]``."""

    def __init__(self, dim: int, *, mlp_ratio: float = 1.0, shift_size: int = 5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = ShiftedMLP(dim, hidden=int(dim * mlp_ratio), shift_size=shift_size)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mlp(self.norm(x))


class TokenStage(nn.Module):
    """Encoder tokenised stage: overlapping patch embedding (3x3 conv, stride 2, LayerNorm),
    a shifted-MLP block, LayerNorm. ``[B, C_in, H, W] -> [B, C_out, H/2, W/2]``."""

    def __init__(self, in_ch: int, out_ch: int, *, mlp_ratio: float = 1.0, shift_size: int = 5) -> None:
        super().__init__()
        self.embed = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1)
        self.embed_norm = nn.LayerNorm(out_ch)
        self.block = ShiftedMLPBlock(out_ch, mlp_ratio=mlp_ratio, shift_size=shift_size)
        self.norm = nn.LayerNorm(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        t = self.embed_norm(self.embed(x).permute(0, 2, 3, 1))
        return self.norm(self.block(t)).permute(0, 3, 1, 2)


class UpStage(nn.Module):
    """Decoder stage: 3x3 conv -> BN (optional) -> bilinear x2 -> ReLU.
    ``[B, C_in, h, w] -> [B, C_out, 2h, 2w]``."""

    def __init__(self, in_ch: int, out_ch: int, *, bn: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_ch) if bn else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(F.interpolate(self.bn(self.conv(x)), scale_factor=2.0, mode="bilinear", align_corners=False))


class UNeXt(nn.Module):
    """UNeXt: ``[B, in_chans, H, W]`` -> ``[B, out_chans, H, W]`` logits, any ``H, W``.

    Args:
        in_chans: input channels (1 for X-ray images).
        out_chans: output channels (1 for binary vessel logits).
        conv_channels: widths of the three conv stages (``UNext_S``: 8, 16, 32).
        token_channels: widths of the two tokenised MLP stages (``UNext_S``: 64, 128).
        mlp_ratio: hidden width of the shifted MLP relative to its input (1 in the reference).
        shift_size: channel groups of the token shift (5: shifts -2..2).
    """

    def __init__(
        self,
        *,
        in_chans: int = 1,
        out_chans: int = 1,
        conv_channels: Sequence[int] = (8, 16, 32),
        token_channels: Sequence[int] = (64, 128),
        mlp_ratio: float = 1.0,
        shift_size: int = 5,
    ) -> None:
        super().__init__()
        c1, c2, c3 = (int(c) for c in conv_channels)
        t1, t2 = (int(c) for c in token_channels)
        self.enc = nn.ModuleList(
            # pool before ReLU (they commute): the ReLU then runs on a quarter of the pixels
            nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.MaxPool2d(2), nn.ReLU(inplace=True))
            for i, o in ((in_chans, c1), (c1, c2), (c2, c3))
        )
        self.tok1 = TokenStage(c3, t1, mlp_ratio=mlp_ratio, shift_size=shift_size)
        self.tok2 = TokenStage(t1, t2, mlp_ratio=mlp_ratio, shift_size=shift_size)
        # Decoder mirrors the encoder; the first two stages keep a shifted-MLP block.
        self.up1 = UpStage(t2, t1)
        self.dblock1 = ShiftedMLPBlock(t1, mlp_ratio=mlp_ratio, shift_size=shift_size)
        self.dnorm1 = nn.LayerNorm(t1)
        self.up2 = UpStage(t1, c3)
        self.dblock2 = ShiftedMLPBlock(c3, mlp_ratio=mlp_ratio, shift_size=shift_size)
        self.dnorm2 = nn.LayerNorm(c3)
        self.up3 = UpStage(c3, c2)
        self.up4 = UpStage(c2, c1)
        self.up5 = UpStage(c1, c1, bn=False)
        self.head = nn.Conv2d(c1, out_chans, kernel_size=1)
        self._init_token_layers()

    def _init_token_layers(self) -> None:
        # As in the reference: truncated-normal Linear layers, fan-out-scaled normal convs in the
        # tokenised stages; the plain conv stages keep PyTorch's default init.
        for stage in (self.tok1, self.tok2, self.dblock1, self.dblock2):
            for m in stage.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Conv2d):
                    fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                    nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                    nn.init.zeros_(m.bias)

    @staticmethod
    def _tokens(x: Tensor, block: nn.Module, norm: nn.Module) -> Tensor:
        """``[B, C, H, W]`` through a channels-last block and LayerNorm, back to ``[B, C, H, W]``."""
        return norm(block(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        ph, pw = _padded(h) - h, _padded(w) - w
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        s1 = self.enc[0](x)  # H/2
        s2 = self.enc[1](s1)  # H/4
        s3 = self.enc[2](s2)  # H/8
        s4 = self.tok1(s3)  # H/16
        y = self.tok2(s4)  # H/32 bottleneck
        y = self._tokens(self.up1(y) + s4, self.dblock1, self.dnorm1)  # H/16
        y = self._tokens(self.up2(y) + s3, self.dblock2, self.dnorm2)  # H/8
        y = self.up3(y) + s2  # H/4
        y = self.up4(y) + s1  # H/2
        y = self.up5(y)  # H
        return self.head(y)[..., :h, :w]


def unext_s(*, in_chans: int = 1, out_chans: int = 1) -> UNeXt:
    """UNeXt-S, the reference ``UNext_S`` widths (~0.25 M parameters with one input channel)."""
    return UNeXt(in_chans=in_chans, out_chans=out_chans, conv_channels=(8, 16, 32), token_channels=(64, 128))


def unext(*, in_chans: int = 1, out_chans: int = 1) -> UNeXt:
    """Full UNeXt, the reference ``UNext`` widths (~1.5 M parameters)."""
    return UNeXt(in_chans=in_chans, out_chans=out_chans, conv_channels=(16, 32, 128), token_channels=(160, 256))
