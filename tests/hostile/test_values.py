"""Hostile values: config keys, command-line numbers, resume settings, masks on other scales,
odd pixel formats, diverged models. One row per case (the ``ROWS`` table and ``case_*``), run
by :func:`harness.run_case`; every error is one line naming the key or file and the fix."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from harness import SEG, Case, pretrain, run_case, seg_folders, xca
from PIL import Image

from priormim.cli import main

# (override, what the one-line error must say): each refused by config validation before any work.
CONFIG_ROWS = [
    ("method=simim", ["'method' is 'simim'", "did you mean 'simmim'"]),
    ("model.encoder_kwargs={patch_size:4,depth:2}", ["'patch_size:4'", "space after the colon"]),
    ("optim.accum_iter=0", ["optim.accum_iter", ">= 1"]),
    ("masking.mask_ratio=0", ["masking.mask_ratio", "(0, 1)"]),
    ("masking.mask_ratio=1", ["masking.mask_ratio", "(0, 1)"]),
    ("data.crop_scale=[2,3]", ["data.crop_scale", "0 < min <= max <= 1"]),
    ("data.crop_scale=[0.9,0.2]", ["data.crop_scale", "0 < min <= max <= 1"]),
    ("optim.epochs=0", ["optim.epochs", ">= 1"]),
    ("optim.epochs=-1", ["optim.epochs", ">= 1"]),
    ("train.save_every=0", ["train.save_every", ">= 1"]),
    ("train.log_every=0", ["train.log_every", ">= 1"]),
    ("optim.blr=nan", ["optim.blr", "finite"]),
    ("optim.lr=-1", ["optim.lr", "finite"]),
    ("model.img_size=30", ["model.img_size", "multiple of the patch size 4"]),
    ("model.in_chans=3", ["model.in_chans", "model.in_chans=1"]),
    ("optim.batch_size=0", ["optim.batch_size", ">= 1"]),
    ("data.norm_std=0", ["data.norm_std", "finite"]),
]


def _config_case(override: str, needles: list[str]):
    def build(tmp):
        d = xca(tmp, n=2)
        return Case(pretrain(d / "images", tmp / "run", override), "error", needles, protect=[d],
                    check=lambda: (tmp / "run").exists() and pytest.fail("a run folder was written"))
    return build


def case_config_yaml_is_a_folder(tmp):
    (tmp / "recipe.yaml").mkdir()
    return Case(["pretrain", "--config", str(tmp / "recipe.yaml"), "--data", str(tmp), "--out", str(tmp / "r")],
                "error", ["recipe.yaml", "is a folder"])


def case_config_yaml_is_binary(tmp):
    (tmp / "recipe.yaml").write_bytes(bytes(range(256)) * 4)
    return Case(["pretrain", "--config", str(tmp / "recipe.yaml"), "--data", str(tmp), "--out", str(tmp / "r")],
                "error", ["recipe.yaml"])


# -- command-line numbers --------------------------------------------------------------------------
def _seg(tmp, *extra):
    train, test = seg_folders(tmp)
    return ["finetune", "seg", "--train", str(train), "--test", str(test), "--out", str(tmp / "o"), *SEG, *extra], [train, test]


def case_seg_lr_nan(tmp):
    argv, inputs = _seg(tmp, "--lr", "nan")
    return Case(argv, "error", ["--lr", "finite"], protect=inputs)


def case_seg_lr_negative(tmp):
    argv, inputs = _seg(tmp, "--lr", "-1")
    return Case(argv, "error", ["--lr", "finite"], protect=inputs)


def case_seg_img_size_zero(tmp):
    argv, inputs = _seg(tmp)
    argv[argv.index("--img-size") + 1] = "0"
    return Case(argv, "error", ["--img-size must be >= 16"], protect=inputs)


def case_seg_val_is_test(tmp):
    argv, inputs = _seg(tmp)
    return Case(argv + ["--val", argv[argv.index("--test") + 1]], "error", ["--val and --test are the same"], protect=inputs)


def _cls(tmp, *extra):
    return ["finetune", "cls", "--encoder", "none", "--train", str(tmp), "--test", str(tmp), "--out", str(tmp / "o"),
            "--device", "cpu", *extra]


def case_cls_img_size_zero(tmp):
    return Case(_cls(tmp, "--img-size", "0"), "error", ["--img-size must be >= 16"])


def case_cls_unknown_optimizer(tmp):
    return Case(_cls(tmp, "--opt", "bogus"), "error", ["--opt 'bogus'", "timm optimizer"])


def case_cls_val_is_test(tmp):
    (tmp / "v").mkdir()
    return Case(["finetune", "cls", "--encoder", "none", "--train", str(tmp), "--test", str(tmp / "v"), "--val",
                 str(tmp / "v"), "--out", str(tmp / "o"), "--device", "cpu"], "error", ["--val and --test are the same"])


@pytest.mark.parametrize("flag", ["--img-size", "--batch-size", "--base-channels"])
def test_train_segmentor_zero(flag, tmp_path, capsys, caplog, monkeypatch):
    def build(tmp):
        d = xca(tmp, n=2)
        return Case(["train-segmentor", "--images", str(d / "images"), "--out", str(tmp / "s.safetensors"), flag, "0"],
                    "error", [flag, ">= 1"], protect=[d])
    run_case(build, tmp_path, capsys, caplog, monkeypatch)


def case_predict_batch_size_zero(tmp):
    train, _ = seg_folders(tmp)
    return Case(["predict", "--model", str(tmp), "--images", str(train), "--out", str(tmp / "p"), "--batch-size", "0"],
                "error", ["--batch-size must be >= 1"], protect=[train])


# -- resume --------------------------------------------------------------------------------------
def _started(tmp):
    d = xca(tmp)
    run = tmp / "run"
    assert main(pretrain(d / "images", run, "data.prior=none", "optim.batch_size=4")) == 0
    return d, run


def case_resume_with_another_batch_size(tmp):
    d, run = _started(tmp)
    return Case(pretrain(d / "images", run, "data.prior=none", "optim.batch_size=2", "optim.epochs=2") + ["--resume"],
                "error", ["optim.batch_size is 2", "started with 4", "optim.batch_size=4"], protect=[d, run])


def case_resume_with_another_mask_ratio(tmp):
    d, run = _started(tmp)
    return Case(pretrain(d / "images", run, "data.prior=none", "optim.batch_size=4", "optim.epochs=2",
                         "masking.mask_ratio=0.5") + ["--resume"], "error", ["masking.mask_ratio"], protect=[d, run])


def case_resume_with_another_depth(tmp):
    d, run = _started(tmp)
    return Case(pretrain(d / "images", run, "data.prior=none", "optim.batch_size=4", "optim.epochs=2",
                         "model.encoder_kwargs={patch_size: 4, depth: 3, embed_dim: 32, num_heads: 2}") + ["--resume"],
                "error", ["model.encoder_kwargs"], protect=[d, run])


def case_resume_from_a_torch_file_that_is_not_a_checkpoint(tmp):
    d = xca(tmp)
    (tmp / "run").mkdir()
    torch.save({"weight": torch.zeros(3)}, tmp / "run" / "last.ckpt")
    return Case(pretrain(d / "images", tmp / "run", "data.prior=none") + ["--resume"], "error",
                ["last.ckpt", "not a priormim pretraining checkpoint"], protect=[d, tmp / "run"])


def case_resume_extends_epochs(tmp):
    d, run = _started(tmp)

    def check():
        recs = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
        steps = [(r["epoch"], r["step"], "lr" in r and "epoch_time_s" in r) for r in recs]
        assert len(steps) == len(set(steps)) and {r["epoch"] for r in recs} == {0, 1}

    return Case(pretrain(d / "images", run, "data.prior=none", "optim.batch_size=4", "optim.epochs=2") + ["--resume"],
                "ok", ["resumed from"], check=check, protect=[d])


# -- masks on other scales, odd pixel formats ----------------------------------------------------
def _rescale_masks(folder, fg: int, dtype=np.uint8):
    for m in sorted((folder / "masks").iterdir()):
        arr = np.asarray(Image.open(m)) > 0
        Image.fromarray((arr * fg).astype(dtype)).save(m)


def _mask_case(fg: int, dtype=np.uint8):
    def build(tmp):
        train, test = seg_folders(tmp)
        for f in (train, test):
            _rescale_masks(f, fg, dtype)

        def check():
            m = json.loads((tmp / "o" / "seed0" / "metrics.json").read_text())
            dice = m["test"]["summary"]["dice"]["mean"]
            assert 0.0 < dice < 1.0, dice  # neither "empty vs empty" (1.0) nor "all missed" (0.0)

        return Case(["finetune", "seg", "--train", str(train), "--test", str(test), "--out", str(tmp / "o"), *SEG],
                    "ok", [], check=check, protect=[train, test])
    return build


case_masks_0_1 = _mask_case(1)
case_masks_0_100 = _mask_case(100)
case_masks_0_65535_16bit = _mask_case(65535, np.uint16)


def case_prior_decompression_bomb(tmp):
    import PIL.Image

    d = xca(tmp)
    Image.fromarray(np.zeros((120, 120), np.uint8)).save(d / "images" / "huge.png")  # 14400 px > 2 x 5000
    return Case(["prior", "vessel", "--images", str(d / "images"), "--out", str(tmp / "pri"), "--sigmas", "1",
                 "--border", "2", "--no-progress"], "ok", ["huge.png", "too large to decode safely"],
                patches=[(PIL.Image, "MAX_IMAGE_PIXELS", 5000)], protect=[d])


def case_seg_decompression_bomb(tmp):
    import PIL.Image

    train, test = seg_folders(tmp)
    Image.fromarray(np.zeros((120, 120), np.uint8)).save(train / "images" / "huge.png")
    Image.fromarray(np.zeros((120, 120), np.uint8)).save(train / "masks" / "huge.png")
    return Case(["finetune", "seg", "--train", str(train), "--test", str(test), "--out", str(tmp / "o"), *SEG], "ok",
                ["huge", "too large to decode safely"], patches=[(PIL.Image, "MAX_IMAGE_PIXELS", 5000)], protect=[train, test])


CASES = {name[len("case_"):]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}
CASES.update({f"config[{o}]": _config_case(o, n) for o, n in CONFIG_ROWS})


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_value(name, tmp_path, capsys, caplog, monkeypatch):
    run_case(CASES[name], tmp_path, capsys, caplog, monkeypatch)


# -- library-level rows: readers and metrics -----------------------------------------------------
def test_cmyk_jpeg_reads_as_its_grey_levels(tmp_path):
    from priormim.io import read_gray

    grey = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    Image.fromarray(grey).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    got = read_gray(tmp_path / "c.jpg")
    assert np.corrcoef(got.ravel(), grey.ravel())[0, 1] > 0.99 and got.mean() > 0.3


def test_signed_16bit_tiff_keeps_its_negative_values(tmp_path):
    from priormim.io import read_gray

    arr = np.tile(np.linspace(-1000, 1000, 32).astype(np.int16), (32, 1))
    Image.fromarray(arr).save(tmp_path / "s.tif")
    got = read_gray(tmp_path / "s.tif")
    assert got.min() == pytest.approx(0) and got.max() == pytest.approx(1)
    assert np.all(np.diff(got[0]) > 0)  # the negative half is a ramp, not clipped flat


@pytest.mark.parametrize("fg,dtype", [(1, np.uint8), (100, np.uint8), (255, np.uint8), (65535, np.uint16)])
def test_read_mask_any_two_value_scale(fg, dtype, tmp_path):
    from priormim.io import read_mask

    m = np.zeros((10, 10), dtype)
    m[2:5, 3:7] = fg
    Image.fromarray(m).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").sum() == 12


def test_binary_auc_refuses_nan_scores():
    from priormim.evaluation.metrics import binary_auc

    with pytest.raises(ValueError, match="NaN"):
        binary_auc(torch.full((4,), float("nan")), torch.tensor([0, 1, 0, 1]))


def test_diverged_segmenter_is_an_error_not_dsc_zero():
    from priormim.errors import UserError
    from priormim.training.finetune_seg import NormStats, predict_logits

    class Diverged(torch.nn.Module):
        def forward(self, x):
            return torch.full_like(x, float("nan"))

    with pytest.raises(UserError, match="training diverged"):
        predict_logits(Diverged(), [np.zeros((16, 16), np.float32)], img_size=16, norm=NormStats(mean=0.5, std=0.2))


@pytest.mark.parametrize("arr", [np.array([["a", "b"], ["c", "d"]]), np.full((4, 4), 3e38, np.float32)])
def test_gaze_prior_wrong_dtype_or_overflowing_sum(arr, tmp_path):
    from priormim.errors import UserError
    from priormim.priors.gaze_cache import gaze_prior_path, load_gaze_prior

    path = gaze_prior_path(tmp_path, tmp_path / "x.png")
    np.save(path, arr)
    if arr.dtype.kind == "f":
        got = load_gaze_prior(tmp_path, tmp_path / "x.png")
        assert np.isfinite(got).all() and got.sum() == pytest.approx(1.0, rel=1e-5)
    else:
        with pytest.raises(UserError, match="not a gaze prior"):
            load_gaze_prior(tmp_path, tmp_path / "x.png")
