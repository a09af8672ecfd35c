"""UNeXt-S: size, shapes at any input size, gradients to the input, the token shift."""

from __future__ import annotations

import pytest
import torch

from priormim.losses import consistency_loss, freeze
from priormim.models.unext import UNeXt, shift_tokens, unext, unext_s


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_unext_s_is_about_a_quarter_million_parameters():
    n = _n_params(unext_s())
    assert 0.25e6 <= n <= 0.45e6, n
    assert _n_params(unext()) > 4 * n  # the full variant is the wide one
    # the reference widths: conv 8-16-32, tokens 64-128
    m = unext_s()
    assert [s[0].out_channels for s in m.enc] == [8, 16, 32]
    assert (m.tok1.embed.out_channels, m.tok2.embed.out_channels) == (64, 128)


@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (1, 1, 96, 160), (1, 1, 50, 77), (2, 1, 33, 20), (1, 1, 1, 1)])
def test_output_shape_equals_input_shape(shape):
    torch.manual_seed(0)
    model = unext_s()
    out = model(torch.randn(*shape))  # train mode: BatchNorm must cope with small inputs at batch 1
    assert out.shape == shape
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(*shape)).shape == shape


def test_odd_sizes_are_replicate_padded_bottom_right_and_cropped_back():
    # 60 px runs as 64 px (replicate-padded at the bottom/right), so its logits are the top-left
    # 60 x 60 of the logits of that padded image, which runs unpadded.
    torch.manual_seed(0)
    model = unext_s().eval()
    x = torch.rand(1, 1, 60, 60)
    padded = torch.nn.functional.pad(x, (0, 4, 0, 4), mode="replicate")
    with torch.no_grad():
        assert torch.allclose(model(x), model(padded)[..., :60, :60], atol=1e-6)


def test_gradient_reaches_the_input_through_a_frozen_unext_s():
    torch.manual_seed(0)
    seg = freeze(unext_s())
    x = torch.rand(2, 1, 64, 96)
    recon = torch.rand(2, 1, 64, 96, requires_grad=True)
    loss = consistency_loss(seg, x, recon)
    loss.backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    assert torch.isfinite(recon.grad).all()
    assert all(p.grad is None for p in seg.parameters())


def test_eval_mode_is_deterministic_and_batch_independent():
    torch.manual_seed(0)
    model = unext_s()
    model(torch.rand(4, 1, 64, 64))  # move the BatchNorm running statistics off their init
    model.eval()
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        a, b = model(x), model(x)
        alone = model(x[1:2])
    assert torch.equal(a, b)
    assert torch.allclose(a[1:2], alone, atol=1e-5)


def _shift_by_hand(x: torch.Tensor, dim: int, shift_size: int) -> torch.Tensor:
    """Plain-loop reference: channels in ``shift_size`` chunks (``torch.chunk`` sizes), chunk ``g``
    moved by ``g - shift_size // 2`` along ``dim``, zeros where nothing moves in."""
    B, H, W, C = x.shape
    out = torch.zeros_like(x)
    chunks = torch.arange(C).chunk(shift_size)
    for g, chans in enumerate(chunks):
        s = g - shift_size // 2
        for c in chans.tolist():
            for b in range(B):
                for i in range(H):
                    for j in range(W):
                        si, sj = (i - s, j) if dim == 1 else (i, j - s)
                        if 0 <= si < H and 0 <= sj < W:
                            out[b, i, j, c] = x[b, si, sj, c]
    return out


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("channels", [5, 7, 12, 3])
def test_shift_matches_a_hand_written_reference(dim, channels):
    x = torch.randn(2, 6, 5, channels)
    assert torch.equal(shift_tokens(x, dim=dim, shift_size=5), _shift_by_hand(x, dim, 5))


def test_shift_on_a_known_column():
    # 5 channels, one per group: channel c moves by c - 2 along H, zero-filled, no wrap-around.
    x = torch.arange(1.0, 6.0)[None, :, None, None].expand(1, 5, 1, 5).contiguous()  # x[0, i, 0, c] = i + 1
    out = shift_tokens(x, dim=1, shift_size=5)[0, :, 0, :]
    expect = torch.tensor([
        [3, 2, 1, 0, 0],
        [4, 3, 2, 1, 0],
        [5, 4, 3, 2, 1],
        [0, 5, 4, 3, 2],
        [0, 0, 5, 4, 3],
    ], dtype=torch.float32)
    assert torch.equal(out, expect)


def test_custom_widths():
    model = UNeXt(in_chans=2, out_chans=3, conv_channels=(4, 8, 8), token_channels=(16, 16)).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 2, 64, 32)).shape == (1, 3, 64, 32)
