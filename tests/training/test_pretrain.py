import json
import shutil

import pytest
import timm
import torch

from priormim.config import load_config
from priormim.errors import UserError
from priormim.masking import random_mask
from priormim.training.checkpoint import load_checkpoint
from priormim.training.pretrain import build_model, compute_losses, pretrain



TINY_OVERRIDES: list[str] = []


@pytest.fixture(autouse=True)
def _tiny(tiny_overrides):
    TINY_OVERRIDES[:] = tiny_overrides


def _cfg(recipe, data, *extra):
    return load_config(recipe, [*TINY_OVERRIDES, f"data.images={data}", *extra])


def test_few_steps_lower_the_loss():
    torch.manual_seed(0)
    cfg = load_config("mae", TINY_OVERRIDES)
    model = build_model(cfg)
    x = torch.randn(4, 1, 32, 32)
    mask = random_mask(4, 64, 0.75, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        out = compute_losses(model, x, mask, segmentor=None, consistency_weight=1.0, norm_mean=0.0, norm_std=1.0)
        opt.zero_grad(); out.loss.backward(); opt.step()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_mae_run_writes_logs_checkpoints_and_timm_loadable_encoder(tiny_xca, tmp_path):
    cfg = _cfg("mae", tiny_xca / "images", "optim.epochs=2", "data.prior=none")
    res = pretrain(cfg, tmp_path / "run")
    assert [h["epoch"] for h in res.history] == [0, 1]
    for name in ("last.ckpt", "checkpoint-0002.ckpt", "config.yaml", "log.jsonl", "encoder.safetensors"):
        assert (tmp_path / "run" / name).exists(), name
    rec = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"loss", "loss_rec", "lr", "masked_vessel_share"} <= set(rec[0])
    ckpt = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)  # no pickled objects
    assert ckpt["config"]["method"] == "mae" and ckpt["epoch"] == 1
    enc = timm.create_model(
        "vit_tiny_patch16_224", pretrained=True, in_chans=1, num_classes=0, img_size=32,
        patch_size=4, depth=2, embed_dim=32, num_heads=2,
        pretrained_cfg_overlay=dict(file=str(res.encoder_path)),
    )
    model = build_model(cfg)
    model.load_state_dict(ckpt["model"])
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(enc.state_dict()[k], v), k  # strict, same names and values


def test_resume_continues_with_identical_losses(tiny_xca, tmp_path):
    extra = ("optim.epochs=3", "data.prior=none", "train.deterministic=true")
    full = pretrain(_cfg("mae", tiny_xca / "images", *extra), tmp_path / "full")
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(tmp_path / "full" / "checkpoint-0002.ckpt", part / "last.ckpt")
    resumed = pretrain(_cfg("mae", tiny_xca / "images", *extra), part, resume=True)
    assert load_checkpoint(part / "last.ckpt")["step"] == full.history[-1]["step"]
    assert len(resumed.history) == 3
    assert resumed.history[-1]["loss"] == pytest.approx(full.history[-1]["loss"], rel=1e-5)


def test_truncated_last_checkpoint_falls_back(tiny_xca, tmp_path):
    extra = ("optim.epochs=2", "data.prior=none")
    pretrain(_cfg("mae", tiny_xca / "images", *extra), tmp_path / "r")
    data = (tmp_path / "r" / "last.ckpt").read_bytes()
    (tmp_path / "r" / "last.ckpt").write_bytes(data[: len(data) // 2])
    (tmp_path / "r" / "checkpoint-0002.ckpt").unlink()
    res = pretrain(_cfg("mae", tiny_xca / "images", "optim.epochs=2", "data.prior=none"), tmp_path / "r", resume=True)
    assert [h["epoch"] for h in res.history] == [0, 1]  # resumed after checkpoint-0001


def test_vasomim_run_guides_masking_and_uses_consistency(tiny_xca, tmp_path):
    # The prior alone guides here (segmentor_weight=0): the official 0.5 blend with a 2-epoch
    # segmentor's near-flat map dilutes guidance (tests/training/test_parity.py covers the blend).
    cfg = _cfg("vasomim", tiny_xca / "images", "optim.epochs=2", "masking.mask_ratio=0.25",
               "masking.kwargs={beta_start: 1.0, beta_end: 1.0}", "masking.segmentor_weight=0")
    res = pretrain(cfg, tmp_path / "v")
    h = res.history[-1]
    assert "loss_cons" in h and h["loss_cons"] > 0
    assert h["beta"] == 1.0
    mae = pretrain(_cfg("mae", tiny_xca / "images", "optim.epochs=2", "masking.mask_ratio=0.25"), tmp_path / "m")
    # with beta = 1 most masked patches are vessel patches; random masking hits far fewer
    assert h["masked_vessel_share"] > mae.history[-1]["masked_vessel_share"] + 0.1
    assert (tmp_path / "v" / "segmentor.safetensors").exists()


def test_nan_loss_stops_with_clear_error(tiny_xca, tmp_path):
    cfg = _cfg("mae", tiny_xca / "images", "optim.epochs=1", "data.prior=none", "optim.lr=1e30")
    with pytest.raises(UserError, match="loss is"):
        pretrain(cfg, tmp_path / "nan")


def test_missing_data_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        pretrain(_cfg("mae", tmp_path / "nope", "data.prior=none"), tmp_path / "o")
