"""A resumed run's TensorBoard scalars hold each step once (the re-trained steps are purged)."""

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from priormim.config import load_config
from priormim.training.pretrain import pretrain


def _steps(run, tag):
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def test_resume_purges_tensorboard_steps_after_the_checkpoint(tiny_xca, tiny_overrides, tmp_path):
    cfg = lambda: load_config("mae", [*tiny_overrides, f"data.images={tiny_xca / 'images'}", "optim.epochs=2",  # noqa: E731
                                      "data.prior=none", "train.log_every=1"])
    run = tmp_path / "run"
    pretrain(cfg(), run)
    first = _steps(run, "train/loss")
    # Back to the end of epoch 1, as after a kill during epoch 2: epoch 2 is trained again.
    (run / "last.ckpt").unlink()
    (run / "checkpoint-0002.ckpt").rename(run / "unused.bak")
    (run / "encoder.safetensors").unlink()
    (run / "checkpoint-0001.ckpt").rename(run / "last.ckpt")
    pretrain(cfg(), run, resume=True)
    steps = _steps(run, "train/loss")
    assert steps == sorted(set(steps)) == first
    assert _steps(run, "epoch/loss") == [2, 4]
