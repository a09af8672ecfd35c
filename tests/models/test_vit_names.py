"""Non-ViT timm names are refused with one line before a model is built."""

import pytest

from priormim.errors import UserError
from priormim.models.mae import MaskedAutoencoder
from priormim.models.seg import create_vit_encoder
from priormim.models.vit_names import require_vit, timm_family


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "vit_small_patch16_224.augreg_in21k",
                                  "deit_tiny_patch16_224", "vit_base_r50_s16_224"])
def test_vits_pass(name):
    require_vit(name)


@pytest.mark.parametrize("name, family", [("resnet50", "resnet"), ("swin_tiny_patch4_window7_224", "swin_transformer"),
                                          ("eva02_tiny_patch14_224", "eva")])
def test_other_families_are_named_in_one_line(name, family):
    assert timm_family(name) == family
    with pytest.raises(UserError, match=rf"'{name}' is a timm {family} model, not a Vision Transformer") as err:
        require_vit(name, path="cfg.yaml")
    assert "\n" not in str(err.value) and str(err.value).startswith("cfg.yaml: ")


def test_unknown_name():
    with pytest.raises(UserError, match="not a timm model name"):
        require_vit("vit_nonexistent_42")


@pytest.mark.parametrize("name", ["resnet50", "swin_tiny_patch4_window7_224"])
def test_builders_refuse_before_building(name):
    # resnet50 used to fail with a TypeError about img_size, swin_* only at the first forward.
    with pytest.raises(UserError, match="not a Vision Transformer"):
        MaskedAutoencoder(encoder_name=name, img_size=32)
    with pytest.raises(UserError, match="not a Vision Transformer"):
        create_vit_encoder(name, encoder_path=None, img_size=32)
