"""The fine-tunings on the shared loop skeleton (issue 13): per-seed log.jsonl + TensorBoard,
the resume fingerprint naming a changed setting, the AMP option checked, predict's bar."""

from __future__ import annotations

import json

import numpy as np
import pytest

from priormim.errors import UserError
from priormim.io import write_png
from priormim.training.finetune_seg import SegFinetuneConfig, finetune_segmentation


def _seg_folder(root, n: int = 8):
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        mask = np.zeros((32, 32), bool)
        mask[:, 10 + i % 5 : 14 + i % 5] = True
        img = np.clip(0.7 - 0.4 * mask + 0.05 * rng.standard_normal((32, 32)), 0, 1)
        write_png(root / "images" / f"c{i}.png", img)
        write_png(root / "masks" / f"c{i}.png", mask.astype(np.uint8) * 255)
    return root


SEG = dict(model="unet", unet_base_channels=4, img_size=32, epochs=3, batch_size=2, warmup_epochs=0, seeds=(0,),
           device="cpu", progress=False)


def test_seg_logs_per_seed_and_resume_names_a_changed_setting(tmp_path, monkeypatch):
    import priormim.training.seg.loop as seg_loop

    data = _seg_folder(tmp_path / "data")
    real_save = seg_loop.save_last_checkpoint

    def save_then_stop(state, run_dir):
        real_save(state, run_dir)
        if state["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(seg_loop, "save_last_checkpoint", save_then_stop)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        finetune_segmentation(SegFinetuneConfig(out=out, data=data, **SEG))
    monkeypatch.setattr(seg_loop, "save_last_checkpoint", real_save)
    seed_dir = out / "seed0"
    assert [json.loads(x)["epoch"] for x in (seed_dir / "log.jsonl").read_text().splitlines()] == [1, 2]
    with pytest.raises(UserError, match=r"--resume \(seed 0\): lr is 0\.002 but the run was started with 0\.001; resume with lr=0\.001"):
        finetune_segmentation(SegFinetuneConfig(out=out, data=data, **{**SEG, "lr": 0.002}), resume=True)
    res = finetune_segmentation(SegFinetuneConfig(out=out, data=data, **{**SEG, "amp": "off"}), resume=True)  # amp may change
    m = json.loads((res.run_dirs[0] / "metrics.json").read_text())
    log = [json.loads(x) for x in (seed_dir / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3] and log == m["val_curve"]
    assert any((seed_dir / "tb").iterdir()) and not (seed_dir / "last.ckpt").exists()


def test_amp_option_is_checked(tmp_path):
    with pytest.raises(UserError, match="amp must be auto, bf16, fp16 or off, got 'fp8'"):
        SegFinetuneConfig(out=tmp_path, data=tmp_path, amp="fp8").resolved()
    from priormim.training.finetune_cls import ClsFinetuneConfig

    with pytest.raises(UserError, match="amp must be one of auto, bf16, fp16, off, got 'fp8'"):
        ClsFinetuneConfig(train=tmp_path, test=tmp_path, out=tmp_path / "o", amp="fp8").resolved()
