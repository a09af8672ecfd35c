"""VesselSegmentor: arch choice, save/load round trip, files saved before the arch key."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from priormim.errors import UserError
from priormim.models.segmentor import VesselSegmentor, load_segmentor
from priormim.models.unet import UNet
from priormim.models.unext import UNeXt


def test_default_arch_is_unext_s():
    seg = VesselSegmentor()
    assert seg.arch == "unext_s" and isinstance(seg.net, UNeXt)
    assert isinstance(VesselSegmentor(arch="unet", base_channels=4).net, UNet)
    with pytest.raises(ValueError, match="unknown segmentor arch"):
        VesselSegmentor(arch="resnet")


def test_normalises_its_input_itself():
    torch.manual_seed(0)
    seg = VesselSegmentor(norm_mean=0.3, norm_std=0.2).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(seg(x), seg.net((x - 0.3) / 0.2))


@pytest.mark.parametrize("arch", ["unext_s", "unet"])
def test_save_load_round_trip(arch, tmp_path):
    torch.manual_seed(0)
    seg = VesselSegmentor(arch=arch, base_channels=4, levels=2, norm_mean=0.4, norm_std=0.3)
    seg(torch.rand(2, 1, 64, 64))  # BatchNorm running statistics must travel too
    seg.eval()
    path = seg.save(tmp_path / "s.safetensors")
    loaded = load_segmentor(path).eval()
    assert loaded.arch == arch and type(loaded.net) is type(seg.net)
    x = torch.rand(2, 1, 48, 80)
    with torch.no_grad():
        assert torch.equal(loaded(x), seg(x))
    assert float(loaded.norm_mean) == pytest.approx(0.4) and float(loaded.norm_std) == pytest.approx(0.3)


def test_file_saved_before_the_arch_key_loads_as_the_unet(tmp_path):
    # What VesselSegmentor.save wrote before UNeXt: a U-Net state under "net.", the norm buffers
    # and metadata with base_channels and levels only.
    torch.manual_seed(0)
    unet = UNet(in_chans=1, out_chans=1, base_channels=4, levels=3).eval()
    state = {f"net.{k}": v.contiguous() for k, v in unet.state_dict().items()}
    state["norm_mean"], state["norm_std"] = torch.tensor(0.5), torch.tensor(0.25)
    path = tmp_path / "old.safetensors"
    save_file(state, str(path), metadata={"priormim_segmentor": json.dumps({"base_channels": 4, "levels": 3})})
    seg = load_segmentor(path).eval()
    assert seg.arch == "unet" and isinstance(seg.net, UNet) and seg.base_channels == 4
    x = torch.rand(1, 1, 40, 40)
    with torch.no_grad():
        assert torch.equal(seg(x), unet((x - 0.5) / 0.25))


def test_unknown_arch_or_mismatched_weights_are_user_errors(tmp_path):
    seg = VesselSegmentor(arch="unet", base_channels=4)
    state = {k: v.contiguous() for k, v in seg.state_dict().items()}
    bad_arch = tmp_path / "a.safetensors"
    save_file(state, str(bad_arch), metadata={"priormim_segmentor": json.dumps({"arch": "vit"})})
    with pytest.raises(UserError, match="unknown to this priormim"):
        load_segmentor(bad_arch)
    wrong = tmp_path / "w.safetensors"  # U-Net weights labelled as UNeXt-S
    save_file(state, str(wrong), metadata={"priormim_segmentor": json.dumps({"arch": "unext_s"})})
    with pytest.raises(UserError, match="do not fit"):
        load_segmentor(wrong)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(UserError, match="not a priormim segmentor"):
        load_segmentor(tmp_path / "junk.safetensors")
