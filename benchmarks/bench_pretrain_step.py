"""One pretraining step of VasoMIM vs MAE at the same model and batch, side by side.

VasoMIM adds prior -> patch probabilities, guided masking, and the consistency loss (two
passes through the frozen segmentor). Goal: VasoMIM step <= 1.3x the MAE step.

    python benchmarks/bench_pretrain_step.py [--model vit_base_patch16_224 --img 224 --batch 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from priormim.config import load_config
from priormim.losses import freeze
from priormim.masking import MaskingContext, patch_prob_from_prior
from priormim.models.segmentor import VesselSegmentor
from priormim.training.pretrain import autocast_context, build_masking_strategy, build_model, compute_losses


def bench(recipe: str, args, device, imgs, priors, segmentor) -> tuple[float, float]:
    cfg = load_config(recipe, {"model": {"encoder": args.model, "img_size": args.img}})
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    masking = build_masking_strategy(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    seg = segmentor if cfg.consistency.enabled else None
    gen = torch.Generator(device=device).manual_seed(0)
    times, mask_times = [], []
    for i in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        pp = patch_prob_from_prior(priors, model.patch_size)
        mask = masking(MaskingContext(batch_size=imgs.shape[0], grid_size=model.grid_size, device=device,
                                      patch_prior=pp, progress=0.5, generator=gen))
        if device.type == "cuda":
            torch.cuda.synchronize()
        t_mask = time.perf_counter() - t0
        with autocast_context(device, "auto"):
            out = compute_losses(model, imgs, mask, segmentor=seg, consistency_weight=1.0, norm_mean=0.0, norm_std=1.0)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            mask_times.append(t_mask)
    return statistics.median(times), statistics.median(mask_times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit_tiny_patch16_224")
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    imgs = torch.randn(args.batch, 1, args.img, args.img, device=device)
    priors = (torch.rand(args.batch, 1, args.img, args.img, device=device) > 0.95).float()
    segmentor = freeze(VesselSegmentor(base_channels=8).to(device))
    mae, mae_mask = bench("mae", args, device, imgs, priors, segmentor)
    vaso, vaso_mask = bench("vasomim", args, device, imgs, priors, segmentor)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"| {args.model} | {args.img}px | batch {args.batch} | {name} | MAE {mae * 1e3:.0f} ms | "
          f"VasoMIM {vaso * 1e3:.0f} ms | ratio {vaso / mae:.2f}x | masking {vaso_mask / vaso * 100:.2f}% of the step |")


if __name__ == "__main__":
    main()
