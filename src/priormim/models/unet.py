"""A standard U-Net (Ronneberger et al. 2015) for training from scratch.

Four down / up levels, two 3x3 conv-BN-ReLU per level, max-pool down, transposed-conv up,
skip concatenation. ``same`` padding, so the output has the input's size; inputs whose sides
are not a multiple of 16 are padded and the logits cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from priormim.models.seg import DoubleConv, UpBlock


class UNet(nn.Module):
    """U-Net: ``[B, in_chans, H, W]`` -> ``[B, out_chans, H, W]`` logits.

    Args:
        in_chans: input channels (1 for X-ray images).
        out_chans: output channels (1 for binary vessel logits).
        base_channels: channels at full resolution; doubled at each of the ``levels`` downs
            (Ronneberger: 64; 32 is a reasonable CPU default).
        levels: number of down/up levels (4 in the original).
    """

    def __init__(self, *, in_chans: int = 1, out_chans: int = 1, base_channels: int = 32, levels: int = 4) -> None:
        super().__init__()
        chs = [base_channels * 2**i for i in range(levels + 1)]
        self.levels = levels
        self.inc = DoubleConv(in_chans, chs[0])
        self.downs = nn.ModuleList(DoubleConv(chs[i], chs[i + 1]) for i in range(levels))
        self.ups = nn.ModuleList(UpBlock(chs[i + 1], chs[i], chs[i]) for i in reversed(range(levels)))
        self.head = nn.Conv2d(chs[0], out_chans, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2**self.levels
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.head(y)[..., :h, :w]
