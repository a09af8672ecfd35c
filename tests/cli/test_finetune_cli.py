"""End to end: ``priormim finetune seg``, ``baseline vesselness``, ``predict``, ``evaluate``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from priormim.cli import main
from priormim.io import write_png


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Two OpenMP threads on a busy 2-core machine spin-wait (10x slower); tiny tensors
    gain nothing from a second thread anyway."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_folder(root: Path, n: int, *, h: int = 40, w: int = 36, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        mask = np.zeros((h, w), bool)
        r, c = int(rng.integers(3, h - 4)), int(rng.integers(3, w - 4))
        mask[r : r + 2, :] = True  # one horizontal and one vertical dark line
        mask[:, c : c + 2] = True
        image = np.clip(0.7 + 0.05 * rng.standard_normal((h, w)) - 0.35 * mask, 0, 1)
        write_png(root / "images" / f"im{i}.png", image)
        write_png(root / "masks" / f"im{i}.png", mask)
    return root


def tiny_encoder(path: Path) -> Path:
    kwargs = dict(img_size=32, patch_size=4, depth=2, embed_dim=32, num_heads=2)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, in_chans=1, num_classes=0, **kwargs)
    meta = {"priormim_model_name": "vit_tiny_patch16_224", "priormim_model_kwargs": json.dumps(kwargs),
            "priormim_norm_mean": "0.6", "priormim_norm_std": "0.2", "priormim_method": "vasomim"}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    return path


def test_finetune_seg_predict_evaluate_end_to_end(tmp_path, capsys):
    train, test = make_folder(tmp_path / "train", 5), make_folder(tmp_path / "test", 2, seed=1)
    enc = tiny_encoder(tmp_path / "enc.safetensors")
    out = tmp_path / "run"
    rc = main(["finetune", "seg", "--encoder", str(enc), "--train", str(train), "--test", str(test), "--out", str(out),
               "--seeds", "0", "1", "--img-size", "32", "--epochs", "2", "--batch-size", "2", "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "ViT (vasomim)" in printed and "±" in printed
    for seed in (0, 1):
        metrics = json.loads((out / f"seed{seed}" / "metrics.json").read_text())
        assert metrics["seed"] == seed and metrics["method"] == "ViT (vasomim)"
        assert metrics["norm"] == {"mean": 0.6, "std": 0.2}  # from the encoder file, not the data
        assert metrics["config"]["layer_decay"] == 0.75 and len(metrics["val_curve"]) == 2
        assert (out / f"seed{seed}" / "model.safetensors").is_file()
    assert "| ViT (vasomim) |" in (out / "results.md").read_text()
    assert (out / "results.csv").is_file() and (out / "split.json").is_file()

    # predict: masks at each image's own size + RGB overlays; a broken file is skipped
    images = tmp_path / "new"
    images.mkdir()
    write_png(images / "a.png", np.full((50, 30), 0.7))
    (images / "broken.png").write_bytes(b"not a png")
    assert main(["predict", "--model", str(out), "--images", str(images), "--out", str(tmp_path / "pred")]) == 0
    assert "skipped 1" in capsys.readouterr().out
    mask = np.asarray(Image.open(tmp_path / "pred" / "masks" / "a.png"))
    assert mask.shape == (50, 30) and set(np.unique(mask)) <= {0, 255}
    overlay = Image.open(tmp_path / "pred" / "overlays" / "a.png")
    assert overlay.mode == "RGB" and overlay.size == (30, 50 + 14)  # the image, then the legend strip
    legend = np.asarray(overlay)[50:]
    assert (legend[5, 5] == [255, 0, 0]).all()  # the red swatch the legend explains

    # evaluate: every seed on another labelled folder
    other = make_folder(tmp_path / "other", 2, h=48, w=48, seed=2)
    assert main(["evaluate", "--model", str(out), "--test", str(other), "--out", str(tmp_path / "ev")]) == 0
    for seed in (0, 1):
        m = json.loads((tmp_path / "ev" / f"seed{seed}" / "metrics.json").read_text())
        assert m["test"]["summary"]["dice"]["n"] == 2 and m["seed"] == seed
    assert (tmp_path / "ev" / "results.md").is_file()
    assert "training or validation images" not in (tmp_path / "ev" / "results.md").read_text()  # another folder
    # evaluating on the training folder is flagged (split.json), not silently scored
    assert main(["evaluate", "--model", str(out / "seed0"), "--test", str(train), "--out", str(tmp_path / "ev_train")]) == 0
    md = (tmp_path / "ev_train" / "results.md").read_text()
    assert "**Warning:** seed0: 5 of 5 images were this model's training or validation images" in md


def test_unet_and_baseline_share_the_results_format(tmp_path):
    data = make_folder(tmp_path / "data", 6)
    out = tmp_path / "unet"
    assert main(["finetune", "seg", "--model", "unet", "--unet-base", "4", "--data", str(data), "--out", str(out),
                 "--img-size", "32", "--epochs", "1", "--batch-size", "2", "--device", "cpu"]) == 0
    split = json.loads((out / "split.json").read_text())
    assert main(["baseline", "vesselness", "--data", str(data), "--border", "2", "--out", str(tmp_path / "sato")]) == 0
    base = json.loads((tmp_path / "sato" / "metrics.json").read_text())
    assert sorted(r["name"] for r in base["test"]["per_image"]) == split["test"]  # same test images
    from priormim.training.results import aggregate_runs

    rows = aggregate_runs([out / "seed0", tmp_path / "sato"])
    assert [r.method for r in rows] == ["U-Net (scratch)", base["method"]]


def test_rescore_from_the_command_line(tmp_path, capsys):
    data = make_folder(tmp_path / "data", 6)
    out = tmp_path / "unet"
    args = ["finetune", "seg", "--model", "unet", "--unet-base", "4", "--data", str(data), "--out", str(out),
            "--img-size", "32", "--epochs", "1", "--batch-size", "2", "--device", "cpu"]
    assert main(args) == 0
    first = json.loads((out / "seed0" / "metrics.json").read_text())
    assert first["postprocess"]["fov"] == "collimator" and first["val_dice_by_threshold"] is not None
    assert main([*args, "--rescore", "--fov", "none", "--threshold", "0.6"]) == 0
    again = json.loads((out / "seed0" / "metrics.json").read_text())
    assert again["postprocess"] == {"threshold": 0.6, "fov": "none", "fov_margin": 8}
    assert again["val_curve"] == first["val_curve"]  # not retrained
    capsys.readouterr()
    assert main([*args, "--threshold", "1.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--threshold" in err


@pytest.mark.parametrize("problem", ["missing_folder", "mask_size", "missing_mask"])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, problem):
    train = make_folder(tmp_path / "train", 3)
    test = make_folder(tmp_path / "test", 2)
    if problem == "missing_folder":
        test = tmp_path / "nope"
    elif problem == "mask_size":
        write_png(train / "masks" / "im1.png", np.zeros((10, 10), bool))
    else:
        (train / "masks" / "im2.png").unlink()
    rc = main(["finetune", "seg", "--model", "unet", "--unet-base", "4", "--train", str(train), "--test", str(test),
               "--out", str(tmp_path / "o"), "--img-size", "32", "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("priormim: error:")
    assert {"missing_folder": "nope", "mask_size": "im1.png", "missing_mask": "im2"}[problem] in err
    assert not (tmp_path / "o" / "seed0").exists()
