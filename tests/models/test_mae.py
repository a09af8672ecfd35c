import pytest
import torch

from priormim.masking import random_mask
from priormim.models.mae import MaskedAutoencoder, patchify, sincos_pos_embed_2d, unpatchify

TINY = dict(encoder_name="vit_tiny_patch16_224", img_size=32, encoder_kwargs={"patch_size": 4, "depth": 2,
            "embed_dim": 32, "num_heads": 2}, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


@pytest.mark.parametrize("c,h,w,p", [(1, 8, 12, 4), (3, 16, 16, 8), (2, 4, 8, 2)])
def test_patchify_roundtrip_any_channels_nonsquare(c, h, w, p):
    x = torch.randn(2, c, h, w)
    y = patchify(x, p)
    assert y.shape == (2, (h // p) * (w // p), p * p * c)
    assert torch.equal(unpatchify(y, p, (h // p, w // p), c), x)


def test_patchify_matches_hand_layout():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = patchify(x, 2)
    # patch 0 = top-left 2x2 block, row-major pixels; patch 1 = top-right block
    assert y[0, 0].tolist() == [0, 1, 4, 5]
    assert y[0, 1].tolist() == [2, 3, 6, 7]
    assert y[0, 2].tolist() == [8, 9, 12, 13]


def test_patchify_rejects_bad_size():
    with pytest.raises(ValueError):
        patchify(torch.zeros(1, 1, 10, 8), 4)


def test_sincos_nonsquare_shape_and_distinct():
    e = sincos_pos_embed_2d(16, (2, 3))
    assert e.shape == (6, 16)
    assert torch.unique(e, dim=0).shape[0] == 6


def test_forward_shapes_and_only_visible_tokens_encoded():
    torch.manual_seed(0)
    model = MaskedAutoencoder(**TINY)
    assert model.grid_size == (8, 8) and model.patch_size == 4
    x = torch.randn(3, 1, 32, 32)
    mask = random_mask(3, 64, 0.75)
    out = model(x, mask)
    assert out.pred.shape == (3, 64, 16)
    assert out.latent.shape == (3, 1 + 16, 32)  # cls + 25% of 64 patches
    assert torch.equal(out.mask, mask)


def test_masked_patch_content_does_not_leak_into_encoder():
    torch.manual_seed(0)
    model = MaskedAutoencoder(**TINY).eval()
    x = torch.randn(1, 1, 32, 32)
    mask = random_mask(1, 64, 0.75, generator=torch.Generator().manual_seed(1))
    x2 = x.clone()
    patches = patchify(x2, 4)
    patches[mask] = 100.0  # change only the hidden patches
    x2 = unpatchify(patches, 4, (8, 8), 1)
    with torch.no_grad():
        assert torch.allclose(model(x, mask).latent, model(x2, mask).latent)


def test_encoder_is_plain_timm_vit():
    import timm

    model = MaskedAutoencoder(**TINY)
    ref = timm.create_model("vit_tiny_patch16_224", num_classes=0, in_chans=1, img_size=32, **TINY["encoder_kwargs"])
    assert set(model.encoder.state_dict()) == set(ref.state_dict())
