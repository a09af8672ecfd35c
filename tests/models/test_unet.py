"""U-Net baseline: shapes, padding, width."""

from __future__ import annotations

import pytest
import torch

from priormim.models.unet import UNet


@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (1, 1, 40, 36), (1, 1, 21, 50)])
def test_unet_output_matches_input_shape(shape):
    model = UNet(base_channels=8).eval()
    with torch.no_grad():
        out = model(torch.randn(*shape))
    assert out.shape == shape


def test_unet_has_four_levels_and_configurable_width():
    small, wide = UNet(base_channels=4), UNet(base_channels=8)
    assert len(small.downs) == 4 and len(small.ups) == 4
    assert small.downs[-1][0].out_channels == 4 * 16  # bottleneck = base * 2**4
    n_small = sum(p.numel() for p in small.parameters())
    n_wide = sum(p.numel() for p in wide.parameters())
    assert 3.5 < n_wide / n_small < 4.5  # conv weights scale with width squared
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in small.modules())


def test_unet_gradients_reach_first_layer():
    model = UNet(base_channels=4)
    model(torch.randn(2, 1, 32, 32)).sum().backward()
    assert model.inc[0].weight.grad is not None and model.inc[0].weight.grad.abs().sum() > 0
