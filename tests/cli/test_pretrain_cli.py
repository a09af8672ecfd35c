"""The pretraining-side commands end to end, and their one-line errors."""

import pytest
import timm
import torch

from priormim.cli import main
from priormim.data.synth_xca import write_synthetic_xca

TINY = [
    "model.img_size=32",
    "model.encoder_kwargs={patch_size: 4, depth: 2, embed_dim: 32, num_heads: 2}",
    "model.decoder_embed_dim=16", "model.decoder_depth=1", "model.decoder_num_heads=2",
    "optim.batch_size=4", "optim.warmup_epochs=0", "data.num_workers=0", "train.progress=false",
    "consistency.segmentor_epochs=1", "consistency.segmentor_base_channels=4",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_xca")
    write_synthetic_xca(root, n=6, size=40, seed=1)
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # corrupt image
    return root


def _one_line_error(capsys, needle):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("priormim: error:"), err
    assert needle in err[0]
    return err[0]


def test_pretrain_vasomim_skips_corrupt_image_then_export_loads_in_timm(data, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["pretrain", "--config", "vasomim", "--data", str(data / "images"), "--out", str(run),
               "optim.epochs=1", *TINY])
    assert rc == 0
    assert (data / "priors" / "vessel" / "manifest.json").exists()
    assert not (data / "priors" / "vessel" / "broken.png").exists()  # skipped, not cached
    assert (run / "segmentor.safetensors").exists()
    out = tmp_path / "exported.safetensors"
    assert main(["export", "--run", str(run), "--out", str(out), "--hub", str(tmp_path / "hub")]) == 0
    assert "priormim.load_encoder(" in capsys.readouterr().out
    hub = timm.create_model(f"local-dir:{tmp_path / 'hub'}", pretrained=True)  # offline, timm alone
    assert timm.data.resolve_model_data_config(hub)["input_size"] == (1, 32, 32)
    enc = timm.create_model("vit_tiny_patch16_224", pretrained=True, in_chans=1, num_classes=0, img_size=32,
                            patch_size=4, depth=2, embed_dim=32, num_heads=2,
                            pretrained_cfg_overlay=dict(file=str(out)))
    assert enc(torch.zeros(1, 1, 32, 32)).shape == (1, 32)


def test_missing_folder(tmp_path, capsys):
    assert main(["pretrain", "--config", "mae", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), *TINY]) == 2
    _one_line_error(capsys, "nope")


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["pretrain", "--config", "mae", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), *TINY]) == 2
    _one_line_error(capsys, "empty")


def test_unknown_config_key(data, tmp_path, capsys):
    assert main(["pretrain", "--config", "mae", "--data", str(data / "images"), "--out", str(tmp_path / "o"),
                 "optim.epoch=3"]) == 2
    _one_line_error(capsys, "optim.epoch")


def test_unwritable_output(data, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["pretrain", "--config", "mae", "--data", str(data / "images"), "--out", str(blocker / "run"),
                 "data.prior=none", *TINY]) == 2
    _one_line_error(capsys, "file")


def test_export_without_checkpoint(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "e.safetensors")]) == 2
    _one_line_error(capsys, "no valid checkpoint")


@pytest.mark.parametrize("extra, arch", [([], "unext_s"), (["--recipe", "priormim"], "unet"),
                                         (["--arch", "unet", "--lr", "3e-3"], "unet")])
def test_train_segmentor_cli(data, tmp_path, capsys, extra, arch):
    out = tmp_path / "seg.safetensors"
    assert main(["train-segmentor", "--images", str(data / "images"), "--priors", str(tmp_path / "pri"),
                 "--out", str(out), "--epochs", "1", "--img-size", "32", "--base-channels", "4", *extra]) == 0
    assert f"{arch} segmentor" in capsys.readouterr().out
    from priormim.models.segmentor import load_segmentor

    seg = load_segmentor(out)
    assert seg.arch == arch
    assert seg(torch.rand(1, 1, 32, 32)).shape == (1, 1, 32, 32)
