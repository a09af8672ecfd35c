"""Benchmark: the consistency segmentor, UNeXt-S vs priormim's earlier 8-channel 3-level U-Net.

Run by hand (not in CI):

    python benchmarks/bench_segmentor.py                       # batch 8, 224 px, CPU (+ CUDA if any)
    python benchmarks/bench_segmentor.py --threads 1 --rounds 7

Three workloads per network, timed in interleaved rounds (UNeXt-S, then the U-Net, in the same
round) so that load from other processes hits both alike; each round takes the median of
``--repeats`` calls after ``--warmup`` untimed ones, and the table reports the median over rounds
of the per-round time and of the per-round ratio U-Net / UNeXt-S:

* ``forward``: frozen, eval mode, no grad (the target pass of the consistency loss);
* ``fwd+bwd to input``: frozen, eval mode, gradient to the input only (the reconstruction pass
  of the consistency loss, which is what pretraining pays for every step);
* ``train step``: train mode, 0.5 BCE + 0.5 Dice, backward to the weights, Adam step.

Also prints parameter counts and forward FLOPs (``torch.utils.flop_counter``; a multiply-add
counts as 2 FLOPs, so halve it to compare with papers that count MACs).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from typing import Callable

import torch

from priormim.losses import freeze
from priormim.losses.segmentation import bce_dice_loss
from priormim.models.segmentor import VesselSegmentor

NETS = {"unext_s": dict(arch="unext_s"), "unet8x3": dict(arch="unet", base_channels=8, levels=3)}


def median_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def workloads(name: str, device: torch.device, batch: int, size: int) -> dict[str, Callable[[], object]]:
    torch.manual_seed(0)
    frozen = freeze(VesselSegmentor(**NETS[name]).to(device))
    trained = VesselSegmentor(**NETS[name]).to(device).train()
    opt = torch.optim.Adam(trained.parameters(), lr=1e-3)
    x = torch.rand(batch, 1, size, size, device=device)
    y = (torch.rand(batch, 1, size, size, device=device) > 0.9).float()

    def forward():
        with torch.no_grad():
            return frozen(x)

    def to_input():
        xg = x.clone().requires_grad_(True)
        frozen(xg).sum().backward()
        return xg.grad

    def train_step():
        loss = bce_dice_loss(trained(x), y, bce_weight=0.5, dice_weight=0.5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return {"forward": forward, "fwd+bwd to input": to_input, "train step": train_step}


def forward_gflops(name: str, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = VesselSegmentor(**NETS[name]).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.rand(1, 1, size, size))
    return fc.get_total_flops() / 1e9


def bench_device(device: torch.device, args: argparse.Namespace) -> list[str]:
    work = {n: workloads(n, device, args.batch_size, args.img_size) for n in NETS}
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for kind in work["unext_s"]:
            for n in NETS:  # interleaved: both networks see the same machine load
                times.setdefault((n, kind), []).append(median_ms(work[n][kind], device, args.warmup, args.repeats))
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    rows = []
    for kind in work["unext_s"]:
        a, b = times[("unext_s", kind)], times[("unet8x3", kind)]
        ratio = statistics.median(u / s for s, u in zip(a, b))
        lo, hi = min(u / s for s, u in zip(a, b)), max(u / s for s, u in zip(a, b))
        rows.append(f"| {kind} | {dev} | {args.batch_size} | {args.img_size} | {statistics.median(a):.1f} | "
                    f"{statistics.median(b):.1f} | {ratio:.2f} ({lo:.2f}-{hi:.2f}) |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the table gives medians over rounds")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")]
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices = [torch.device("cuda")] if args.device == "cuda" else devices + [torch.device("cuda")]

    print("$ python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]))
    print(f"torch {torch.__version__}; per round the median of {args.repeats} calls after {args.warmup} warm-up "
          f"calls; medians over {args.rounds} interleaved rounds\n")
    print("| network | parameters | forward GFLOPs @224 | forward GFLOPs @256 |")
    print("|---|---|---|---|")
    for n in NETS:
        params = sum(p.numel() for p in VesselSegmentor(**NETS[n]).parameters())
        print(f"| {n} | {params / 1e6:.3f} M | {forward_gflops(n, 224):.3f} | {forward_gflops(n, 256):.3f} |")
    print("\n| workload | device | B | px | UNeXt-S (ms) | U-Net 8x3 (ms) | U-Net / UNeXt-S, median (min-max) |")
    print("|---|---|---|---|---|---|---|")
    for dev in devices:
        for row in bench_device(dev, args):
            print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
