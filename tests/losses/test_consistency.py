import pytest
import torch
import torch.nn.functional as F
from torch import nn

from priormim.losses import consistency_loss, freeze


def test_consistency_matches_formula_and_gradients_reach_reconstruction_only():
    torch.manual_seed(0)
    seg = freeze(nn.Conv2d(1, 1, 3, padding=1))
    x = torch.rand(2, 1, 8, 8)
    x_hat = torch.rand(2, 1, 8, 8, requires_grad=True)
    loss = consistency_loss(seg, x, x_hat)
    expect = F.binary_cross_entropy_with_logits(seg(x_hat), torch.sigmoid(seg(x)))
    assert torch.isclose(loss, expect)
    loss.backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    assert all(p.grad is None for p in seg.parameters())


def test_identical_inputs_minimise_the_loss():
    torch.manual_seed(0)
    seg = freeze(nn.Conv2d(1, 1, 3, padding=1))
    x = torch.rand(1, 1, 8, 8)
    same = consistency_loss(seg, x, x)
    other = consistency_loss(seg, x, torch.rand(1, 1, 8, 8) * 5)
    assert same < other


def test_refuses_training_mode_segmentor():
    with pytest.raises(RuntimeError):
        consistency_loss(nn.Conv2d(1, 1, 1), torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4))
