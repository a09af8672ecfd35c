"""Can the pretraining loader keep the accelerator fed? Loader images/s vs the training step.

Builds the same loader as ``priormim pretrain`` (PretrainDataset: decode image + vessel prior,
paired RandomResizedCrop + flip seeded per sample; GlobalBatchSampler; persistent workers,
prefetch 4, pinned memory on CUDA) over synthetic PNG angiograms of a realistic size, and
times it for several worker counts. Then times one pretraining step (forward + backward +
AdamW, anatomy-guided masking) of the same model and batch on the same machine. The loader
keeps up when its images/s exceed the step's images/s ("headroom" > 1).

    python benchmarks/bench_loader.py [--workers 0 1 2] [--size 512] [--img 224] [--batch 16]
                                      [--model vit_tiny_patch16_224] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader


def make_images(folder: Path, n: int, size: int) -> tuple[list[Path], Path]:
    """``n`` grey PNGs (smooth background, dark curves, noise: compresses like an angiogram)
    and their binary vessel priors in ``folder/priors``."""
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    (folder / "priors").mkdir()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    paths = []
    for i in range(n):
        img = 0.6 + 0.2 * np.sin(6 * xx + i) * np.cos(4 * yy)
        vessel = np.zeros((size, size), bool)
        for k in range(6):
            centre = (k + 1) / 7 + 0.05 * np.sin(10 * xx + i + k)
            vessel |= np.abs(yy - centre) < 0.004 * (1 + k % 3)
        img = img - 0.3 * vessel + 0.03 * rng.standard_normal((size, size))
        path = folder / "images" / f"a{i:04d}.png"
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)
        Image.fromarray(vessel.astype(np.uint8) * 255).save(folder / "priors" / path.name)
        paths.append(path)
    return paths, folder / "priors"


def time_loader(paths, prior_dir, *, workers: int, args, device) -> tuple[float, float]:
    """(seconds to the first batch, steady-state images/s)."""
    import functools

    from priormim.data.pretrain import PretrainDataset, paired_train_transform
    from priormim.priors.cache import load_prior
    from priormim.training.distributed import GlobalBatchSampler
    from priormim.training.pretrain import _loader_worker_init

    ds = PretrainDataset(paths, transform=paired_train_transform(args.img), norm_mean=0.5, norm_std=0.2,
                         prior_loader=functools.partial(load_prior, prior_dir), seed=0, skip_unreadable=True)
    sampler = GlobalBatchSampler(len(ds), args.batch, seed=0)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                        worker_init_fn=_loader_worker_init if workers > 0 else None)
    t0 = time.perf_counter()
    it = iter(loader)
    batch = next(it)
    first = time.perf_counter() - t0
    n, t1 = 0, time.perf_counter()
    epoch = 0
    while n < args.batches:
        try:
            batch = next(it)
        except StopIteration:
            epoch += 1
            sampler.set_epoch(epoch)
            it = iter(loader)
            continue
        batch["image"].to(device, non_blocking=True)
        n += 1
    rate = n * args.batch / (time.perf_counter() - t1)
    del it, loader
    return first, rate


def time_step(args, device) -> float:
    """Median seconds of one pretraining step (MAE + anatomy masking, same model and batch)."""
    from priormim.config import load_config
    from priormim.masking import MaskingContext, patch_prob_from_prior
    from priormim.training.pretrain import autocast_context, build_masking_strategy, build_model, compute_losses

    cfg = load_config("mae", {"model": {"encoder": args.model, "img_size": args.img},
                              "masking": {"name": "anatomy", "kwargs": {"beta_start": 0.5, "beta_end": 0.5}}})
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    masking = build_masking_strategy(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    imgs = torch.randn(args.batch, 1, args.img, args.img, device=device)
    priors = (torch.rand(args.batch, 1, args.img, args.img, device=device) > 0.9).float()
    times = []
    for i in range(args.steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        pp = patch_prob_from_prior(priors, model.patch_size)
        mask = masking(MaskingContext(batch_size=args.batch, grid_size=model.grid_size, device=device,
                                      patch_prior=pp, progress=0.5))
        with autocast_context(device, "auto"):
            out = compute_losses(model, imgs, mask, segmentor=None, consistency_weight=0.0, norm_mean=0.0, norm_std=1.0)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n", type=int, default=48, help="synthetic images (default 48)")
    ap.add_argument("--size", type=int, default=512, help="source image side in pixels (default 512, like XCA)")
    ap.add_argument("--img", type=int, default=224, help="model input side (default 224)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=6, help="timed loader batches per worker count")
    ap.add_argument("--steps", type=int, default=3, help="timed training steps")
    ap.add_argument("--model", default="vit_tiny_patch16_224")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from priormim.training.distributed import resolve_device

    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        paths, prior_dir = make_images(Path(tmp), args.n, args.size)
        step = time_step(args, device)
        step_rate = args.batch / step
        print(f"device {device}, torch threads {torch.get_num_threads()}, {args.model} at {args.img} px, batch {args.batch}, "
              f"source images {args.size}x{args.size} PNG + prior PNG")
        print(f"pretraining step: {step * 1000:.0f} ms = {step_rate:.0f} images/s\n")
        print("| loader workers | first batch (s) | loader images/s | headroom vs step |")
        print("|---|---|---|---|")
        for w in args.workers:
            first, rate = time_loader(paths, prior_dir, workers=w, args=args, device=device)
            print(f"| {w} | {first:.2f} | {rate:.0f} | {rate / step_rate:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
