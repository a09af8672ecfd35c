"""How long a bench run will take: a few timed steps of each kind, times the steps planned.

:func:`measure_step_times` runs three MAE steps through the real pretraining engine on the
pool (data loading and logging included), times the consistency loss's extra cost, a
consistency-segmentor step, a fine-tuning step of the ViT segmenter and of the U-Net and
their inference per image, on this machine with the budget's sizes (a few seconds on a CPU
at the ``cpu`` budget). :func:`estimate_cell` multiplies those by the steps a cell will take.
The other recipes' cost per step relative to MAE (:data:`RELATIVE_STEP_COST`) was measured
once; the progress lines rescale the remaining estimate by how far off finished cells were.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from priormim.benchmark.budgets import Budget
from priormim.benchmark.cells import Cell

CELL_OVERHEAD_S = 1.5  # building models, reading data, writing files

# CPU seconds of a recipe's pretraining cell / MAE's, measured at the cpu budget on the
# 2-core machine (2026-11-23): two-view recipes with an EMA teacher run the whole image
# through two encoders, SimMIM encodes masked tokens too. Unlisted recipes count as 1.
RELATIVE_STEP_COST = {
    "simmim": 1.35, "amt": 1.0, "hpm": 1.25, "deblurmim": 0.85, "crossmae": 0.8, "mocov3": 2.8, "dino": 3.2,
    "chexworld": 1.25,
}


@dataclass
class StepTimes:
    """Seconds per step (or per image) on this machine at a budget's sizes."""

    pretrain_step: float
    consistency_extra: float
    load_image: float
    segmentor_step: float
    vit_step: float
    unet_step: float
    vit_infer: float
    unet_infer: float

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 5) for k, v in asdict(self).items()}


def _time(fn, reps: int) -> float:
    fn()  # warm-up (allocations, kernel selection)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def measure_engine_step(budget: Budget, pool_images: Path, pool_priors: Path, device: torch.device, scratch: Path) -> float:
    """Seconds per MAE step of the real pretraining engine on the pool (second of two short
    epochs of three steps, so start-up costs are left out)."""
    import shutil

    from priormim.config import load_config
    from priormim.training.pretrain import pretrain

    cfg = load_config("mae", {
        "model": {"encoder": budget.encoder, "img_size": budget.img_size, "encoder_kwargs": dict(budget.encoder_kwargs),
                  "decoder_embed_dim": budget.decoder_embed_dim, "decoder_depth": budget.decoder_depth,
                  "decoder_num_heads": budget.decoder_num_heads},
        "data": {"images": str(pool_images), "priors": str(pool_priors), "num_workers": budget.num_workers},
        "optim": {"epochs": 2, "warmup_epochs": 0, "batch_size": budget.pretrain_batch},
        "train": {"device": str(device), "seed": 0, "progress": False, "max_steps_per_epoch": 3},
    })
    try:
        history = pretrain(cfg, scratch).history
        steps = max(1, int(history[1]["step"] - history[0]["step"]))
        return float(history[1]["epoch_time_s"]) / steps
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def measure_step_times(budget: Budget, device: torch.device, *, sample_image: Path | None = None, reps: int = 3,
                       engine_step: float | None = None) -> StepTimes:
    """Time each kind of step with random tensors of the budget's sizes; ``engine_step``
    (from :func:`measure_engine_step`) replaces the bare MAE step when given."""
    from priormim.config import load_config
    from priormim.losses.segmentation import bce_dice_loss
    from priormim.masking import random_mask
    from priormim.models.seg import ViTSegmenter, create_vit_encoder
    from priormim.models.segmentor import VesselSegmentor
    from priormim.models.unet import UNet
    from priormim.training.finetune_seg import paired_augment
    from priormim.training.pretrain import autocast_context, build_model, compute_losses

    s, b = budget.img_size, budget.pretrain_batch
    cfg = load_config("mae", {"model": {"encoder": budget.encoder, "img_size": s, "encoder_kwargs": dict(budget.encoder_kwargs),
                                        "decoder_embed_dim": budget.decoder_embed_dim, "decoder_depth": budget.decoder_depth,
                                        "decoder_num_heads": budget.decoder_num_heads}})
    mae = build_model(cfg).to(device)
    segmentor = VesselSegmentor(base_channels=cfg.consistency.segmentor_base_channels).to(device).eval()
    for p in segmentor.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(mae.parameters(), lr=1e-4)
    x = torch.randn(b, 1, s, s, device=device)
    mask = random_mask(b, mae.grid_size[0] * mae.grid_size[1], 0.75, device=device)

    def pretrain_step(seg=None):
        with autocast_context(device, "auto"):
            out = compute_losses(mae, x, mask, segmentor=seg, consistency_weight=1.0, norm_mean=0.5, norm_std=0.25)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    t_mae = _time(pretrain_step, reps)
    t_cons = max(0.0, _time(lambda: pretrain_step(segmentor), reps) - t_mae)

    seg_train = VesselSegmentor(base_channels=cfg.consistency.segmentor_base_channels).to(device)
    seg_opt = torch.optim.AdamW(seg_train.parameters(), lr=1e-3)
    xs, ys = torch.rand(16, 1, s, s, device=device), (torch.rand(16, 1, s, s, device=device) > 0.9).float()

    def segmentor_step():
        loss = bce_dice_loss(seg_train(xs), ys)
        seg_opt.zero_grad(set_to_none=True)
        loss.backward()
        seg_opt.step()

    t_seg = _time(segmentor_step, reps)

    fb = budget.finetune_batch
    encoder, _ = create_vit_encoder(budget.encoder, encoder_path=None, img_size=s, model_kwargs=dict(budget.encoder_kwargs))
    models = {"vit": ViTSegmenter(encoder).to(device), "unet": UNet(base_channels=budget.unet_base_channels).to(device)}
    img, msk = torch.rand(fb, 1, s, s), torch.rand(fb, 1, s, s) > 0.9
    gen = torch.Generator().manual_seed(0)
    times = {}
    for name, model in models.items():
        mopt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def ft_step(model=model, mopt=mopt):
            xa, ya = paired_augment(img, msk, generator=gen)
            loss = bce_dice_loss(model(xa.to(device)).float(), ya.to(device))
            mopt.zero_grad(set_to_none=True)
            loss.backward()
            mopt.step()

        times[f"{name}_step"] = _time(ft_step, reps)
        model.eval()
        with torch.inference_mode():
            xi = torch.rand(8, 1, s, s, device=device)
            times[f"{name}_infer"] = _time(lambda model=model: model(xi), reps) / 8

    t_load = 0.002
    if sample_image is not None:
        from priormim.data.pretrain import PretrainDataset, paired_train_transform

        ds = PretrainDataset([sample_image], transform=paired_train_transform(s), norm_mean=0.5, norm_std=0.25)
        t_load = _time(lambda: ds[0], 5)
    return StepTimes(pretrain_step=engine_step if engine_step is not None else t_mae, consistency_extra=t_cons, load_image=t_load, segmentor_step=t_seg,
                     vit_step=times["vit_step"], unet_step=times["unet_step"], vit_infer=times["vit_infer"],
                     unet_infer=times["unet_infer"])


@dataclass(frozen=True)
class DatasetSize:
    n_train: int
    n_val: int
    n_test: int
    side: int  # image short side (scoring happens at original resolution)


def estimate_cell(cell: Cell, budget: Budget, times: StepTimes, *, pool_size: int, sizes: dict[str, DatasetSize],
                  consistency: dict[str, bool]) -> float:
    """Predicted seconds for one cell (a rough model: steps x measured step time + overhead)."""
    if cell.kind == "segmentor":
        steps = budget.segmentor_epochs * max(1, pool_size // 16)
        return CELL_OVERHEAD_S + steps * (times.segmentor_step + 16 * times.load_image)
    if cell.kind == "pretrain":
        batch = min(budget.pretrain_batch, pool_size)
        per_step = times.pretrain_step * RELATIVE_STEP_COST.get(cell.method, 1.0)
        per_step += times.consistency_extra if consistency.get(cell.method) else 0.0
        steps = budget.pretrain_epochs * max(1, pool_size // batch)
        return CELL_OVERHEAD_S + steps * per_step
    size = sizes[cell.dataset]
    score_per_image = 2e-3 * (size.side / 100) ** 2  # resizing logits back, Dice / clDice at full size
    if cell.kind == "vesselness":
        return 0.2 + size.n_test * 3 * score_per_image
    step, infer = (times.unet_step, times.unet_infer) if cell.method == "unet" else (times.vit_step, times.vit_infer)
    batch = min(budget.finetune_batch, size.n_train)
    per_epoch = max(1, size.n_train // batch) * step + size.n_val * (infer + score_per_image)
    return CELL_OVERHEAD_S + budget.finetune_epochs * per_epoch + size.n_test * (infer + 10 * score_per_image)
