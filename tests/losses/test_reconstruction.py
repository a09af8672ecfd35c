import torch

from priormim.losses import denormalize_prediction, masked_reconstruction_loss, normalize_patches


def test_loss_only_counts_masked_patches_hand_computed():
    pred = torch.zeros(1, 3, 2)
    target = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]])
    mask = torch.tensor([[True, False, True]])
    # masked errors: patch0 = 1, patch2 = 9 -> mean 5
    loss = masked_reconstruction_loss(pred, target, mask, norm_pix_loss=False)
    assert torch.isclose(loss, torch.tensor(5.0))


def test_uniform_weights_reproduce_mae_loss_and_weights_shift_it():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 8, 4), torch.randn(2, 8, 4)
    mask = torch.rand(2, 8) > 0.5
    base = masked_reconstruction_loss(pred, target, mask)
    uniform = masked_reconstruction_loss(pred, target, mask, weights=torch.full((2, 8), 3.0))
    assert torch.isclose(base, uniform)
    w = torch.zeros(2, 8)
    idx = mask.nonzero()[0]
    w[idx[0], idx[1]] = 1.0
    only = masked_reconstruction_loss(pred, target, mask, weights=w)
    t = normalize_patches(target)
    expect = (pred[idx[0], idx[1]] - t[idx[0], idx[1]]).pow(2).mean()
    assert torch.isclose(only, expect)


def test_norm_pix_roundtrip():
    target = torch.randn(2, 5, 16) * 3 + 1
    assert torch.allclose(denormalize_prediction(normalize_patches(target), target), target, atol=1e-4)
    n = normalize_patches(target)
    assert torch.allclose(n.mean(-1), torch.zeros(2, 5), atol=1e-5)
