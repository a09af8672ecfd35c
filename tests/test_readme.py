"""The README's encoder snippet runs as written against a tiny exported encoder."""

import re
from pathlib import Path

import pytest
import timm
import torch

from priormim.models.export import export_encoder

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block(containing: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    hits = [b for b in blocks if containing in b]
    assert len(hits) == 1, f"expected one python block in README.md using {containing!r}, found {len(hits)}"
    return hits[0]


def test_readme_encoder_snippet(tmp_path, monkeypatch):
    code = _python_block("load_encoder(")
    kwargs = {"img_size": 32, "patch_size": 8, "depth": 1}  # what a small recipe's metadata holds
    torch.manual_seed(0)
    enc = timm.create_model("vit_tiny_patch16_224", pretrained=False, in_chans=1, num_classes=0, **kwargs)
    export_encoder(enc, tmp_path / "RUN" / "encoder.safetensors", model_name="vit_tiny_patch16_224",
                   model_kwargs=kwargs, norm_mean=0.37, norm_std=0.11, method="vasomim")
    monkeypatch.chdir(tmp_path)  # the snippet names RUN/encoder.safetensors, relative to the working folder
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 - the point is to run the README literally

    for name in ("enc", "enc_timm"):
        model = ns[name]
        cfg = timm.data.resolve_model_data_config(model)
        assert tuple(cfg["input_size"]) == (1, 32, 32), name
        assert tuple(cfg["mean"]) == pytest.approx((0.37,)) and tuple(cfg["std"]) == pytest.approx((0.11,)), name
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in enc.state_dict().items()), name
    assert tuple(ns["x"].shape) == (1, 1, 32, 32)
    assert tuple(ns["features"].shape) == (1, 192)
