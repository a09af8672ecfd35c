"""One pretraining step of VasoMIM vs MAE at the same model and batch, side by side.

VasoMIM adds prior -> patch shares, the frozen segmentor's guidance pass (UNeXt-S, whose
output is also the consistency target), guided masking and the segmentor's pass on the
reconstruction. Goal: VasoMIM step <= 1.3x the MAE step. The step is the engine's own
(:func:`priormim.training.pretrain.masked_step` + backward + AdamW), timed by
``gpu_check.step_rate``.

    python benchmarks/bench_pretrain_step.py [--model vit_base_patch16_224 --img 224 --batch 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from gpu_check import FULL, step_rate  # same folder
from priormim.losses import freeze
from priormim.models.segmentor import VesselSegmentor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit_base_patch16_224")
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--segmentor", default="unext_s", choices=("unext_s", "unet"))
    ap.add_argument("--rounds", type=int, default=1, help="MAE, VasoMIM alternated this many times (load drift)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 on a shared machine: "
                    "spinning OpenMP threads of busy processes slow each other down many times)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default=None,
                    help="cpu: this process's CPU time (default on CPU: robust to other jobs on the machine); wall")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = dataclasses.replace(FULL, encoder=args.model, img=args.img, batch=args.batch, steps=args.steps,
                               warmup=args.warmup)
    seg = freeze(VesselSegmentor(arch=args.segmentor).to(device))
    use_cpu_clock = (args.clock or ("wall" if device.type == "cuda" else "cpu")) == "cpu"
    clock = time.process_time if use_cpu_clock else time.perf_counter
    ratios = []
    for _ in range(args.rounds):
        mae = step_rate("mae", size, device, compile_model=False, segmentor=seg, clock=clock)
        vaso = step_rate("vasomim", size, device, compile_model=False, segmentor=seg, clock=clock)
        ratios.append(vaso["step_s"] / mae["step_s"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    shares = ", ".join(f"{k} {100 * t / vaso['step_s']:.1f}%" for k, t in vaso["parts"].items())
    name += ", CPU time" if use_cpu_clock else ", wall time"
    print(f"| {args.model} | {args.img}px | batch {args.batch} | {name} | segmentor {args.segmentor} | "
          f"MAE {mae['step_s'] * 1e3:.0f} ms | VasoMIM {vaso['step_s'] * 1e3:.0f} ms | "
          f"ratio {statistics.median(ratios):.2f}x (rounds: {', '.join(f'{r:.2f}' for r in ratios)}) | {shares} |")


if __name__ == "__main__":
    main()
