"""Learning-rate schedules for pretraining.

:class:`MAECosineSchedule` is the reference MAE schedule (facebookresearch/mae
``util/lr_sched.adjust_learning_rate``), which the official VasoMIM code inherits: the lr is
set before every optimiser update from the fractional epoch ``e = epoch + it / len(loader)``
(``it`` = the micro-batch that starts the update): linear warm-up from 0 to the peak over
``warmup_epochs``, then a half-cosine to ``min_lr`` over the remaining ``epochs - warmup_epochs``.

timm's ``CosineLRScheduler`` (priormim's earlier default, ``optim.schedule=timm``) differs: it
warms up from ``lr * 1e-3`` and runs the cosine over *all* steps, so the two are up to a few
percent of the peak lr apart. This one is written here because timm has no scheduler with
MAE's exact warm-up and cosine span.
"""

from __future__ import annotations

import math

import torch

__all__ = ["MAECosineSchedule", "mae_lr"]


def mae_lr(epoch: float, *, lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """MAE's lr at fractional epoch ``epoch`` (the reference formula, nothing else)."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    span = max(epochs - warmup_epochs, 1e-12)  # epochs == warm-up: stay at the peak
    progress = min(max((epoch - warmup_epochs) / span, 0.0), 1.0)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class MAECosineSchedule:
    """MAE's per-update schedule with timm's ``step_update`` interface.

    ``step_update(num_updates=u)`` sets the lr that update ``u`` (0-based, counted over the
    whole run) uses, so call it once before training (with the resumed step) and after every
    optimiser step, as the engine does for timm's schedulers.

    Args:
        optimizer: its param groups get ``lr = mae_lr(...) * group.get("lr_scale", 1)``.
        lr, min_lr, warmup_epochs, epochs: as in MAE's ``adjust_learning_rate``.
        steps_per_epoch: micro-batches per epoch (MAE's ``len(data_loader)``).
        accum_iter: micro-batches per update; update ``k`` of an epoch starts at micro-batch
            ``k * accum_iter``, as in MAE (``data_iter_step % accum_iter == 0``).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        lr: float,
        min_lr: float,
        warmup_epochs: float,
        epochs: float,
        steps_per_epoch: int,
        accum_iter: int = 1,
    ) -> None:
        if steps_per_epoch < 1 or accum_iter < 1:
            raise ValueError("steps_per_epoch and accum_iter must be >= 1")
        self.optimizer = optimizer
        self.lr, self.min_lr = float(lr), float(min_lr)
        self.warmup_epochs, self.epochs = float(warmup_epochs), float(epochs)
        self.steps_per_epoch, self.accum_iter = int(steps_per_epoch), int(accum_iter)
        self.updates_per_epoch = math.ceil(self.steps_per_epoch / self.accum_iter)

    def epoch_at(self, num_updates: int) -> float:
        """Fractional epoch at which update ``num_updates`` starts."""
        epoch, k = divmod(int(num_updates), self.updates_per_epoch)
        return epoch + k * self.accum_iter / self.steps_per_epoch

    def lr_at(self, num_updates: int) -> float:
        return mae_lr(self.epoch_at(num_updates), lr=self.lr, min_lr=self.min_lr,
                      warmup_epochs=self.warmup_epochs, epochs=self.epochs)

    def step_update(self, num_updates: int) -> None:
        value = self.lr_at(num_updates)
        for group in self.optimizer.param_groups:
            group["lr"] = value * group.get("lr_scale", 1.0)

    def state_dict(self) -> dict:
        # Stateless: the lr is a function of the update count, which the checkpoint stores.
        return {"kind": "mae_cosine"}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "mae_cosine":
            raise ValueError("the checkpoint's lr schedule is not MAE's (optim.schedule differs)")
