"""finetune seg follows the encoder's input size; evaluate flags seen images and degenerate models."""

import json
import logging

import numpy as np
import timm

from priormim.models.export import export_encoder
from priormim.training.finetune_seg import SegFinetuneConfig
from priormim.training.results import prediction_notes, seen_in_training


def _encoder(path, size=32):
    kwargs = {"img_size": size, "patch_size": 8, "depth": 1}
    enc = timm.create_model("vit_tiny_patch16_224", pretrained=False, in_chans=1, num_classes=0, **kwargs)
    return export_encoder(enc, path, model_name="vit_tiny_patch16_224", model_kwargs=kwargs, norm_mean=0.5,
                          norm_std=0.2, method="vasomim")


def test_finetune_defaults_to_the_encoders_size_and_warns_when_told_otherwise(tmp_path, caplog):
    enc = _encoder(tmp_path / "e.safetensors")
    base = dict(out=tmp_path / "o", train=tmp_path / "train", test=tmp_path / "test", encoder=enc)
    with caplog.at_level(logging.WARNING):
        assert SegFinetuneConfig(**base).resolved().img_size == 32  # not 224
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        assert SegFinetuneConfig(**base, img_size=224).resolved().img_size == 224
    assert "pretrained at 32 px and is fine-tuned at 224 px" in caplog.text and "--img-size 32" in caplog.text
    assert SegFinetuneConfig(out=tmp_path / "o", train=tmp_path / "train", test=tmp_path / "test").resolved().img_size == 224


def test_prediction_notes():
    truth = [np.zeros((10, 10), bool)]
    truth[0][4] = True
    assert "predicts 100% of the pixels as vessel" in prediction_notes([np.ones((10, 10), bool)], truth)[0]
    assert "almost no vessel" in prediction_notes([np.zeros((10, 10), bool)], truth)[0]
    assert prediction_notes([truth[0].copy()], truth) == []


def test_seen_in_training_reads_the_split_of_the_run(tmp_path):
    run, seed = tmp_path / "run", tmp_path / "run" / "seed0"
    seed.mkdir(parents=True)
    (run / "split.json").write_text(json.dumps({"source": {"data": str(tmp_path / "data")},
                                                "train": ["a.png"], "val": ["b.png"], "test": ["c.png"]}))
    names = {"a.png", "b.png", "c.png"}
    assert seen_in_training(seed, tmp_path / "data", names) == ["a.png", "b.png"]
    assert seen_in_training(seed, tmp_path / "elsewhere", names) == []  # same names, another data set
    assert seen_in_training(tmp_path, tmp_path / "data", names) == []  # no split.json
