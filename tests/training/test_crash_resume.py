"""kill -9 in the middle of training, then --resume: the run continues as if never stopped.

Each case trains once without interruption (in this process), then starts the same command
as a subprocess and SIGKILLs it in the middle of a training step of epoch 3 (the bootstrap
below parks the process inside the loss function once two epoch checkpoints exist, so the
kill lands at a known place without timing races), resumes with ``--resume`` and compares
every per-epoch number with the uninterrupted run. CPU, one thread, deterministic mode.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from priormim.config import load_config
from priormim.training.checkpoint import load_checkpoint
from priormim.training.pretrain import pretrain

# Park the process in the middle of the first training step after the second checkpoint (the
# step function patched is called once per step, after the forward and before the backward).
BOOT = r"""
import os, sys, time
import torch
torch.set_num_threads(1)
import priormim.training.checkpoint as ck
marker, module, loss_fn = os.environ["CRASH_MARKER"], os.environ["CRASH_MODULE"], os.environ["CRASH_LOSS"]
import importlib
mod = importlib.import_module(module)
saves = []
real_save = ck.save_checkpoint
def save(state, path):
    real_save(state, path)
    if os.path.basename(str(path)) == "last.ckpt":
        saves.append(path)
ck.save_checkpoint = save
if hasattr(mod, "save_checkpoint"):
    mod.save_checkpoint = save
real_loss = getattr(mod, loss_fn)
let_through = [int(os.environ.get("CRASH_SKIP", "0"))]  # steps of epoch 3 that finish (and are logged) first
def loss(*a, **k):
    out = real_loss(*a, **k)
    if len(saves) >= 2 and let_through[0] > 0:
        let_through[0] -= 1
    elif len(saves) >= 2:
        open(marker, "w").write(str(os.getpid()))
        time.sleep(600)
    return out
setattr(mod, loss_fn, loss)
from priormim.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run_and_kill(argv: list[str], tmp_path: Path, module: str, loss_fn: str, sig: int = signal.SIGKILL,
                  skip: int = 0) -> None:
    marker = tmp_path / f"parked-{module}"
    env = dict(os.environ, OMP_NUM_THREADS="1", CRASH_MARKER=str(marker), CRASH_MODULE=module, CRASH_LOSS=loss_fn,
               CRASH_SKIP=str(skip))
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    proc = subprocess.Popen([sys.executable, "-c", BOOT, *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"the run ended before it could be killed:\n{proc.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("the run never reached epoch 3")
            time.sleep(0.05)
        os.kill(proc.pid, sig)
        proc.wait(timeout=120)  # a loaded 2-core machine can take long to unwind and exit
    finally:
        if proc.poll() is None:
            proc.kill()
    # SIGKILL ends the process at once; SIGINT / SIGTERM stop it through the CLI's 'interrupted' exit.
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), proc.returncode


def _assert_log_has_no_duplicates(log: Path, epochs: int) -> None:
    """log.jsonl after a resume: each (kind, epoch, step) record once, every epoch present."""
    recs = [json.loads(ln) for ln in log.read_text().splitlines()]
    keys = [("epoch_time_s" in r, r["epoch"], r["step"]) for r in recs]
    assert len(keys) == len(set(keys)), [k for k in keys if keys.count(k) > 1][:5]
    assert sorted(e for kind, e, _ in keys if kind) == list(range(epochs))


def test_pretrain_killed_mid_epoch_resumes_like_an_uninterrupted_run(tiny_xca, tiny_overrides, tmp_path):
    common = [*tiny_overrides, "optim.epochs=4", "optim.blr=1e-2", "train.deterministic=true", "train.device=cpu",
              "data.prior=vessel", "masking.name=anatomy", "masking.kwargs={beta_start: 0.0, beta_end: 0.75}",
              "train.save_every=100"]
    data = tiny_xca / "images"
    full = pretrain(load_config("mae", [*common, f"data.images={data}"]), tmp_path / "full")

    run = tmp_path / "killed"
    _run_and_kill(["pretrain", "--config", "mae", "--data", str(data), "--out", str(run), *common],
                  tmp_path, "priormim.training.loop", "check_finite")
    ckpt = load_checkpoint(run / "last.ckpt")  # written by epoch 2 (index 1), intact
    assert ckpt["epoch"] == 1 and not (run / "encoder.safetensors").exists()
    assert ckpt["step"] == full.history[1]["step"]
    assert ckpt["masking"]["beta"] == full.history[1]["beta"]
    (run / ".last.ckpt.torn.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")  # a save cut short

    resumed = pretrain(load_config("mae", [*common, f"data.images={data}"]), run, resume=True)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3]
    _assert_log_has_no_duplicates(run / "log.jsonl", 4)
    for got, want in zip(resumed.history, full.history):
        assert got["step"] == want["step"]
        assert got["lr"] == pytest.approx(want["lr"], rel=1e-9)
        assert got["beta"] == want["beta"]
        for key in ("loss", "loss_rec", "masked_vessel_share"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), (got["epoch"], key)
    a = torch.load(run / "last.ckpt", weights_only=True)["model"]
    b = torch.load(tmp_path / "full" / "last.ckpt", weights_only=True)["model"]
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in b)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_pretrain_interrupted_resume_logs_each_step_once(sig, tiny_xca, tiny_overrides, tmp_path):
    common = [*tiny_overrides, "optim.epochs=3", "train.device=cpu", "data.prior=none", "train.save_every=100",
              "train.log_every=1", "optim.batch_size=2"]  # 4 steps per epoch
    data = tiny_xca / "images"
    run = tmp_path / "stopped"
    _run_and_kill(["pretrain", "--config", "mae", "--data", str(data), "--out", str(run), *common],
                  tmp_path, "priormim.training.loop", "check_finite", sig, skip=2)
    assert load_checkpoint(run / "last.ckpt")["epoch"] == 1
    assert any(json.loads(ln)["epoch"] == 2 for ln in (run / "log.jsonl").read_text().splitlines())  # logged, then lost
    pretrain(load_config("mae", [*common, f"data.images={data}"]), run, resume=True)
    _assert_log_has_no_duplicates(run / "log.jsonl", 3)


def _seg_folder(root: Path, n: int) -> Path:
    from PIL import Image

    import numpy as np

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.zeros((32, 32), bool)
        mask[:, 10 + i % 5 : 14 + i % 5] = True
        img = np.clip(0.7 - 0.4 * mask + 0.05 * rng.standard_normal((32, 32)), 0, 1)
        Image.fromarray((img * 255).astype(np.uint8)).save(root / "images" / f"c{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"c{i}.png")
    return root


def test_finetune_seg_killed_mid_epoch_resumes_like_an_uninterrupted_run(tmp_path):
    from priormim.cli import main

    data = _seg_folder(tmp_path / "data", 8)
    args = ["finetune", "seg", "--data", str(data), "--model", "unet", "--unet-base", "4", "--img-size", "32",
            "--epochs", "5", "--batch-size", "2", "--warmup-epochs", "1", "--seeds", "3", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    full = json.loads((tmp_path / "full" / "seed3" / "metrics.json").read_text())

    run = tmp_path / "killed"
    _run_and_kill([*args, "--out", str(run)], tmp_path, "priormim.training.seg.loop", "bce_dice_loss")
    seed_dir = run / "seed3"
    assert not (seed_dir / "metrics.json").exists()
    assert load_checkpoint(seed_dir / "last.ckpt")["epoch"] == 2
    assert load_checkpoint(seed_dir / "previous.ckpt")["epoch"] == 1
    # A damaged newest checkpoint: detected, and the one before it is used.
    raw = (seed_dir / "last.ckpt").read_bytes()
    (seed_dir / "last.ckpt").write_bytes(raw[: len(raw) // 2])

    # Resuming with other settings is refused, not silently mixed.
    other = [a if a != "5" else "6" for a in args]
    assert main([*other, "--out", str(run), "--resume"]) == 2
    assert main([*args, "--out", str(run), "--resume"]) == 0
    got = json.loads((seed_dir / "metrics.json").read_text())
    assert [c["epoch"] for c in got["val_curve"]] == [1, 2, 3, 4, 5]
    for a, b in zip(got["val_curve"], full["val_curve"]):
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_dice"] == pytest.approx(b["val_dice"], rel=1e-5, abs=1e-7)
    assert (got["best_epoch"], got["best_val_dice"]) == (full["best_epoch"], pytest.approx(full["best_val_dice"]))
    assert got["test"]["summary"]["dice"]["mean"] == pytest.approx(full["test"]["summary"]["dice"]["mean"], rel=1e-5)
    assert not (seed_dir / "last.ckpt").exists()  # finished: metrics.json marks the seed done

