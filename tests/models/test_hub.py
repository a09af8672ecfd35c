"""priormim.load_encoder / save_pretrained / from_pretrained, offline on local files."""

import json
import socket

import pytest
import timm
import torch
from safetensors.torch import save_file

import priormim
from priormim.errors import UserError
from priormim.models.export import export_encoder

KWARGS = {"img_size": 32, "patch_size": 8, "depth": 1}
MEAN, STD = 0.41, 0.13


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def exported(tmp_path):
    torch.manual_seed(0)
    enc = timm.create_model("vit_tiny_patch16_224", pretrained=False, in_chans=1, num_classes=0, **KWARGS)
    path = export_encoder(enc, tmp_path / "encoder.safetensors", model_name="vit_tiny_patch16_224",
                          model_kwargs=KWARGS, norm_mean=MEAN, norm_std=STD, method="vasomim")
    return enc, path


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _check_data_config(model):
    cfg = timm.data.resolve_model_data_config(model)
    assert tuple(cfg["input_size"]) == (1, 32, 32)
    assert tuple(cfg["mean"]) == pytest.approx((MEAN,)) and tuple(cfg["std"]) == pytest.approx((STD,))
    assert cfg["crop_pct"] == 1.0


def test_load_encoder_sets_input_size_and_grey_levels(exported):
    enc, path = exported
    model = priormim.load_encoder(path)
    assert _same_weights(model, enc) and not model.training
    _check_data_config(model)
    assert not model.pretrained_cfg.get("url") and not model.pretrained_cfg.get("hf_hub_id")  # no ImageNet source
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 192)
    assert model.priormim_metadata.method == "vasomim"


def test_load_encoder_refuses_files_without_metadata(tmp_path, exported):
    enc, _ = exported
    bare = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(bare))
    with pytest.raises(UserError, match="no priormim metadata"):
        priormim.load_encoder(bare)
    with pytest.raises(UserError, match="does not exist"):
        priormim.load_encoder(tmp_path / "missing.safetensors")


def test_load_encoder_refuses_non_vit_metadata(tmp_path, exported):
    enc, _ = exported
    path = export_encoder(enc, tmp_path / "r.safetensors", model_name="resnet50", model_kwargs=KWARGS,
                          norm_mean=MEAN, norm_std=STD, method="mae")
    with pytest.raises(UserError, match="not a Vision Transformer"):
        priormim.load_encoder(path)


def test_save_pretrained_round_trip_through_timm_local_dir(tmp_path, exported):
    enc, path = exported
    folder = priormim.save_pretrained(path, tmp_path / "hub")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224"
    assert config["pretrained_cfg"]["input_size"] == [1, 32, 32] and config["pretrained_cfg"]["mean"] == [MEAN]
    assert config["priormim"]["method"] == "vasomim"
    # timm's own offline loader, no priormim code involved
    plain = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert _same_weights(plain, enc)
    _check_data_config(plain)
    # ours, and the folder's weights file still works as an exported encoder (finetune --encoder)
    for model in (priormim.from_pretrained(folder), priormim.load_encoder(folder),
                  priormim.load_encoder(folder / "model.safetensors")):
        assert _same_weights(model, enc)
        _check_data_config(model)
        assert model.priormim_metadata.norm.mean == pytest.approx(MEAN)


def test_save_pretrained_of_a_loaded_model(tmp_path, exported):
    enc, path = exported
    folder = priormim.save_pretrained(priormim.load_encoder(path), tmp_path / "hub2")
    assert _same_weights(priormim.from_pretrained(folder), enc)
    with pytest.raises(UserError, match="needs a model from priormim.load_encoder"):
        priormim.save_pretrained(enc, tmp_path / "hub3")  # a bare timm model has no grey levels


def test_from_pretrained_refuses_a_non_model_folder(tmp_path):
    with pytest.raises(UserError, match="is not a model folder"):
        priormim.from_pretrained(tmp_path)
