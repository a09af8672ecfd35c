"""The shared loop skeleton (training/loop.py): accumulation, no_sync, clipping, the guard, hooks."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from torch import nn

from priormim.training.loop import (
    GradientUpdater,
    LossNotFinite,
    RunLogger,
    autocast_context,
    run_epoch,
    save_epoch_checkpoint,
)


def _data(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g)


def _train(batches, *, accum: int, clip: float | None = None, lr: float = 0.1, ddp=None):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    seen: list[tuple[str, int]] = []
    updater = GradientUpdater(optimizer=opt, params=model.parameters, accum_iter=accum, clip_grad=clip, ddp=ddp,
                              after_update=[lambda n: seen.append(("schedule", n))])

    def step(it, batch):
        x, y = batch
        return ((model(x) - y) ** 2).mean(), None

    run_epoch(batches, steps=len(batches), step=step, updater=updater, hint="fix it",
              on_update=lambda it: seen.append(("ema", it)))
    return model, updater, seen


def test_accumulation_equals_one_update_on_the_whole_batch():
    x, y = _data(4)
    big, _, _ = _train([(x, y)], accum=1)
    small, updater, seen = _train([(x[:2], y[:2]), (x[2:], y[2:])], accum=2)
    assert updater.updates == 1 and seen == [("schedule", 1), ("ema", 1)]
    for a, b in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(a, b)


def test_last_step_of_the_epoch_updates_even_mid_window():
    x, y = _data(6)
    _, updater, seen = _train([(x[i:i + 2], y[i:i + 2]) for i in (0, 2, 4)], accum=2)
    assert updater.updates == 2 and [s for s in seen if s[0] == "ema"] == [("ema", 1), ("ema", 2)]


class _FakeDDP:
    def __init__(self):
        self.no_sync_calls = 0

    @contextlib.contextmanager
    def no_sync(self):
        self.no_sync_calls += 1
        yield


def test_no_sync_only_on_steps_that_do_not_update():
    x, y = _data(8)
    ddp = _FakeDDP()
    _train([(x[i:i + 2], y[i:i + 2]) for i in (0, 2, 4, 6)], accum=4, ddp=ddp)
    assert ddp.no_sync_calls == 2 * 3  # forward and backward of steps 0, 1, 2; step 3 synchronises


def test_clipping_bounds_the_update():
    x, y = _data(4)
    torch.manual_seed(0)
    start = torch.cat([p.detach().flatten() for p in nn.Linear(3, 1).parameters()])  # _train's initial weights
    model, _, _ = _train([(x * 100, y)], accum=1, clip=0.01, lr=1.0)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert float((after - start).norm()) == pytest.approx(0.01, rel=1e-4)


def test_non_finite_loss_stops_before_the_update():
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    weight = model.weight.detach().clone()
    updater = GradientUpdater(optimizer=opt, params=model.parameters)
    with pytest.raises(LossNotFinite, match=r"loss is nan at epoch 3, step 0; lower the lr"):
        run_epoch([None], steps=1, step=lambda it, b: (model.weight.sum() * float("nan"), None), updater=updater,
                  hint="lower the lr", where=lambda it: f"epoch 3, step {it}")
    assert torch.equal(model.weight, weight) and updater.updates == 0


def test_amp_policy():
    assert isinstance(autocast_context(torch.device("cpu"), "auto"), contextlib.nullcontext)
    assert isinstance(autocast_context(torch.device("cpu"), "bf16"), torch.autocast)
    with pytest.raises(Exception, match="train.amp must be"):
        autocast_context(torch.device("cpu"), "fp8")


def test_checkpoint_rotation_and_logger(tmp_path):
    for epoch in range(3):
        save_epoch_checkpoint({"epoch": epoch}, tmp_path, epoch=epoch, epochs=3, save_every=2)
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["checkpoint-0002.ckpt", "checkpoint-0003.ckpt",
                                                                "last.ckpt"]
    logger = RunLogger(tmp_path, True)
    logger.log({"epoch": 0, "step": 1, "loss": 0.5}, 1, "train")
    logger.close()
    assert json.loads((tmp_path / "log.jsonl").read_text()) == {"epoch": 0, "step": 1, "loss": 0.5}
    assert any((tmp_path / "tb").iterdir())


def test_segmentor_trainer_logs_through_the_skeleton(tmp_path):
    import numpy as np
    from PIL import Image

    from priormim.training.segmentor import SegmentorTrainConfig, train_segmentor

    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(p)
        paths.append(p)
    history: list[float] = []
    (tmp_path / "log").mkdir()
    cfg = SegmentorTrainConfig(recipe="priormim", epochs=2, img_size=32, batch_size=2, base_channels=4, levels=2,
                               progress=False)
    train_segmentor(cfg, paths=paths, prior_loader=lambda p: (np.asarray(Image.open(p)) > 128).astype(np.uint8),
                    out=tmp_path / "seg.safetensors", history=history, log_dir=tmp_path / "log")
    records = [json.loads(line) for line in (tmp_path / "log" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1] and [r["step"] for r in records] == [2, 4]
    assert [r["loss"] for r in records] == history
