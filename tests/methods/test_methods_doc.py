"""docs/methods.md: its example method and recipe, extracted from the page and run as they are."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from priormim.config import known_methods, load_config
from priormim.data.synth_xca import write_synthetic_xca
from priormim.methods import METHODS, build_method, unregister_method

DOC = Path(__file__).resolve().parents[2] / "docs" / "methods.md"
TINY = [
    "model.img_size=32",
    "model.encoder_kwargs={patch_size: 4, depth: 1, embed_dim: 32, num_heads: 2}",
    "model.decoder_embed_dim=16", "model.decoder_depth=1", "model.decoder_num_heads=2",
    "optim.batch_size=4", "optim.warmup_epochs=0", "optim.epochs=2", "optim.blr=1e-3",
    "train.progress=false", "train.log_every=1", "train.device=cpu",
]


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", DOC.read_text(encoding="utf-8"), flags=re.S | re.M)


@pytest.fixture
def example():
    (code,) = _blocks("python")  # the page has exactly one runnable block: the method
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)  # registers l1mae
    try:
        yield namespace
    finally:
        unregister_method("l1mae")


def test_the_example_is_about_thirty_lines():
    (code,) = _blocks("python")
    assert 20 <= len(code.strip().splitlines()) <= 40


def test_example_method_registers_builds_and_trains(example, tmp_path):
    assert "l1mae" in METHODS and "l1mae" in known_methods()
    (recipe,) = _blocks("yaml")
    path = tmp_path / "l1mae.yaml"
    path.write_text(recipe)
    write_synthetic_xca(tmp_path / "xca", n=8, size=48, seed=0)
    cfg = load_config(path, [*TINY, f"data.images={tmp_path / 'xca' / 'images'}"])
    method = build_method(cfg)
    assert type(method) is example["L1MAE"]

    from priormim.training.pretrain import pretrain

    res = pretrain(cfg, tmp_path / "run")
    assert res.encoder_path is not None and res.encoder_path.exists()
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss_l1" in r and "epoch_time_s" not in r]
    assert len(steps) == 4  # 8 images, batch 4, 2 epochs
    assert all(r["loss"] == r["loss_l1"] for r in steps)
    assert res.history[-1]["masked_share"] == pytest.approx(0.75, abs=0.02)
    assert res.history[-1]["loss_l1"] < res.history[0]["loss_l1"] * 1.5  # trains without blowing up


def test_unregistered_method_is_refused_by_the_config(tmp_path):
    from priormim.errors import UserError

    assert "l1mae" not in known_methods()
    with pytest.raises(UserError, match="known methods"):
        load_config("mae", ["method=l1mae"])
