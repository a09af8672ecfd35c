"""One prepared GPU check: VasoMIM vs MAE side by side, and what VasoMIM's extras cost.

Measured in one run, on one device, and written as a markdown table:

* pretraining step rate (images/s) of MAE and VasoMIM (ViT-B/16, 224 px, batch 256, bf16,
  fused AdamW), eager and with ``torch.compile`` of the model;
* the share of the VasoMIM step spent in the prior -> patch shares, the frozen segmentor's
  guidance pass and the masking draw;
* batched Sato vesselness on the device vs ``skimage.filters.sato`` image by image;
* batched guided masking vs a per-sample loop of the official code's algorithm;
* peak device memory of each step.

On a machine without a GPU, ``--tiny`` runs the same code paths at toy size on the CPU so
that the script is tested; rows that only mean something on a GPU say "not measured".

    python benchmarks/gpu_check.py --out gpu_check.md            # on a GPU, about 5 minutes
    python benchmarks/gpu_check.py --tiny --out /tmp/gpu_check.md # CPU smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from priormim.config import load_config
from priormim.losses import freeze
from priormim.masking import anatomy_guided_mask, blend_guidance, patch_prob_from_prior
from priormim.models.segmentor import VesselSegmentor
from priormim.priors.vessel import vesselness
from priormim.training.pretrain import (
    build_masking_strategy,
    build_model,
    masked_step,
    masking_progress,
    segmentor_probs,
)

NOT_MEASURED = "not measured"


@dataclass
class Size:
    encoder: str
    img: int
    batch: int
    decoder: dict
    steps: int
    warmup: int
    vessel_img: int
    vessel_batch: int


FULL = Size("vit_base_patch16_224", 224, 256, {"decoder_embed_dim": 512, "decoder_depth": 8, "decoder_num_heads": 16},
            steps=10, warmup=3, vessel_img=512, vessel_batch=64)
TINY = Size("vit_tiny_patch16_224", 64, 4, {"decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2},
            steps=2, warmup=1, vessel_img=64, vessel_batch=4)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int, warmup: int, clock=time.perf_counter) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` untimed ones.

    ``clock=time.process_time`` measures this process's CPU time: on a shared CPU machine
    with one torch thread it is what the step costs, whatever else runs beside it."""
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        t0 = clock()
        fn()
        _sync(device)
        if i >= warmup:
            times.append(clock() - t0)
    return statistics.median(times)


def step_rate(recipe: str, size: Size, device: torch.device, *, compile_model: bool,
              segmentor: torch.nn.Module, clock=time.perf_counter) -> dict:
    """Images/s and peak memory of full training steps (masking + loss + backward + AdamW)."""
    cfg = load_config(recipe, {"model": {"encoder": size.encoder, "img_size": size.img, **size.decoder},
                               "train": {"amp": "auto"}})
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    # masked_step wraps the (compiled) network in the recipe's method, as the engine runs it.
    forward = torch.compile(model) if compile_model else model
    masking = build_masking_strategy(cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                            fused=device.type == "cuda")
    g = torch.Generator(device=device).manual_seed(0)
    imgs = torch.randn(size.batch, 1, size.img, size.img, device=device, generator=g)
    prior = (torch.rand(size.batch, 1, size.img, size.img, device=device, generator=g) > 0.92).float()
    seg = segmentor if (cfg.consistency.enabled or cfg.masking.segmentor_weight > 0) else None

    def one() -> None:
        step = masked_step(forward, imgs, prior, masking=masking, cfg=cfg, segmentor=seg,
                           norm_mean=0.5, norm_std=0.25, progress=masking_progress(cfg, 0), step_progress=0.5,
                           generator=g)
        opt.zero_grad(set_to_none=True)
        step.out.loss.backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warmup = size.warmup + (2 if compile_model else 0)  # compilation happens in the first calls
    t = _timed(one, device, size.steps, warmup, clock)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    parts = {}
    if seg is not None:  # the extras, timed alone with the same inputs
        patch = lambda: patch_prob_from_prior(prior, model.patch_size)  # noqa: E731
        probs = segmentor_probs(seg, imgs, norm_mean=0.5, norm_std=0.25)
        guide = patch_prob_from_prior(blend_guidance(prior, probs, cfg.masking.segmentor_weight), model.patch_size)
        parts = {
            "priors -> patch shares": _timed(patch, device, size.steps, 1, clock),
            "segmentor guidance pass": _timed(lambda: segmentor_probs(seg, imgs, norm_mean=0.5, norm_std=0.25),
                                              device, size.steps, 1, clock),
            "masking draw": _timed(lambda: anatomy_guided_mask(guide, cfg.masking.mask_ratio, 0.5, generator=g),
                                   device, size.steps, 1, clock),
        }
    return {"step_s": t, "img_per_s": size.batch / t, "peak_gib": peak, "parts": parts}


def per_sample_guided_mask(patch_prob: torch.Tensor, mask_ratio: float, beta: float) -> torch.Tensor:
    """The official algorithm row by row: multinomial draw of the guided share, then uniform."""
    b, n = patch_prob.shape
    n_mask = n - int(n * (1 - mask_ratio))
    out = torch.zeros(b, n, dtype=torch.bool, device=patch_prob.device)
    for i in range(b):
        p = patch_prob[i]
        k = min(int(n_mask * beta), int((p > 0).sum()))
        guided = torch.multinomial(p, k, replacement=False) if k > 0 else p.new_zeros(0, dtype=torch.long)
        out[i, guided] = True
        rest = (~out[i]).nonzero().squeeze(1)
        out[i, rest[torch.randperm(rest.numel(), device=p.device)[: n_mask - k]]] = True
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="markdown table to write")
    ap.add_argument("--tiny", action="store_true", help="toy sizes (CPU smoke run)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    size = TINY if args.tiny else FULL
    on_gpu = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if on_gpu else f"CPU ({torch.get_num_threads()} threads)"
    seg = freeze(VesselSegmentor(arch="unext_s").to(device))
    rows: list[tuple[str, str]] = []
    results = {}
    for compiled in (False, True):
        for recipe in ("mae", "vasomim"):
            key = f"{recipe}{' compiled' if compiled else ''}"
            if compiled and (args.no_compile or not on_gpu):
                rows.append((f"{key}: images/s", NOT_MEASURED + (" (no GPU)" if not on_gpu else " (--no-compile)")))
                continue
            r = results[key] = step_rate(recipe, size, device, compile_model=compiled, segmentor=seg)
            print(f"{key}: {r['img_per_s']:.1f} img/s", file=sys.stderr)
            rows.append((f"{key}: images/s", f"{r['img_per_s']:.1f} ({r['step_s'] * 1e3:.0f} ms/step)"))
            rows.append((f"{key}: peak memory", f"{r['peak_gib']:.1f} GiB" if r["peak_gib"] is not None else NOT_MEASURED))
        if f"vasomim{' compiled' if compiled else ''}" in results:
            v, m = results[f"vasomim{' compiled' if compiled else ''}"], results[f"mae{' compiled' if compiled else ''}"]
            rows.append((f"VasoMIM / MAE step time{' (compiled)' if compiled else ''}", f"{v['step_s'] / m['step_s']:.2f}x"))
            for part, t in v["parts"].items():
                rows.append((f"share of the VasoMIM step: {part}", f"{100 * t / v['step_s']:.1f}%"))

    # Vesselness: batched on the device vs scikit-image image by image (CPU).
    from skimage.filters import sato

    g = torch.Generator().manual_seed(0)
    batch = torch.rand(size.vessel_batch, 1, size.vessel_img, size.vessel_img, generator=g)
    t_dev = _timed(lambda: vesselness(batch.to(device)), device, 3, 1)
    n_ref = min(4, size.vessel_batch)
    t_ref = _timed(lambda: [sato(batch[i, 0].numpy(), sigmas=(1, 2, 3, 4), black_ridges=True, mode="reflect")
                            for i in range(n_ref)], torch.device("cpu"), 1, 0) / n_ref
    rows.append((f"vesselness {size.vessel_img} px: {device.type} batched vs scikit-image",
                 f"{size.vessel_batch / t_dev:.1f} vs {1 / t_ref:.1f} images/s ({t_ref * size.vessel_batch / t_dev:.0f}x)"))

    # Guided masking: batched vs the official per-sample loop, same shares.
    n_patch = (size.img // 16) ** 2
    pp = torch.rand(size.batch, n_patch, generator=g).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    t_b = _timed(lambda: anatomy_guided_mask(pp, 0.75, 0.5, generator=gen), device, 5, 1)
    t_l = _timed(lambda: per_sample_guided_mask(pp, 0.75, 0.5), device, 3, 1)
    rows.append((f"guided masking, batch {size.batch} x {n_patch} patches: batched vs per-sample loop",
                 f"{t_b * 1e3:.2f} vs {t_l * 1e3:.1f} ms ({t_l / t_b:.0f}x)"))

    lines = [f"# GPU check ({name}; {size.encoder}, {size.img} px, batch {size.batch}, "
             f"amp {'bf16' if on_gpu else 'off'}, fused AdamW {'on' if on_gpu else 'off'})", "",
             "| measurement | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
