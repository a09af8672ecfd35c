"""Benchmark: batched anatomy_guided_mask vs a per-sample torch.multinomial loop.

Run by hand (not in CI):

    python benchmarks/bench_masking.py                 # CPU, and CUDA if available
    python benchmarks/bench_masking.py --all           # also time the other maskers

Both implementations are timed side by side in one process: ``--warmup`` untimed calls, then
the median of ``--repeats`` timed calls (CUDA timings synchronise before reading the clock).
Prints Markdown table rows.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from typing import Callable

import torch

from priormim.masking import (
    anatomy_guided_mask,
    block_mask,
    gaze_guided_mask,
    num_masked,
    random_mask,
    score_guided_mask,
)


def reference_anatomy_mask(
    patch_prob: torch.Tensor, mask_ratio: float, beta: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The obvious per-sample implementation: multinomial without replacement, then uniform."""
    B, L = patch_prob.shape
    n_mask = num_masked(L, mask_ratio)
    k = int(n_mask * beta)
    mask = torch.zeros(B, L, dtype=torch.bool, device=patch_prob.device)
    for b in range(B):
        p = patch_prob[b]
        k_row = min(k, int((p > 0).sum()))
        if k_row > 0:
            mask[b, torch.multinomial(p, k_row, replacement=False, generator=generator)] = True
        if n_mask - k_row > 0:
            rest = (~mask[b]).float()
            mask[b, torch.multinomial(rest, n_mask - k_row, replacement=False, generator=generator)] = True
    return mask


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


def synthetic_prob(B: int, L: int, device: torch.device, g: torch.Generator) -> torch.Tensor:
    """Vessel-like shares: ~30% of patches carry vessels; a few images have none."""
    p = torch.rand(B, L, device=device, generator=g) * (torch.rand(B, L, device=device, generator=g) < 0.3)
    p[::16] = 0.0
    return p / p.sum(1, keepdim=True).clamp_min(1e-12)


def bench_device(device: torch.device, args: argparse.Namespace) -> list[str]:
    g = torch.Generator(device=device).manual_seed(0)
    B, L, r, beta = args.batch_size, args.num_patches, args.mask_ratio, args.beta
    p = synthetic_prob(B, L, device, g)
    n = num_masked(L, r)
    # Both must produce valid masks before we compare their speed.
    for m in (reference_anatomy_mask(p, r, beta, g), anatomy_guided_mask(p, r, beta, g)):
        assert bool(m.sum(1).eq(n).all())
    ref = median_ms(lambda: reference_anatomy_mask(p, r, beta, g), device, args.warmup, args.ref_repeats)
    vec = median_ms(lambda: anatomy_guided_mask(p, r, beta, g), device, args.warmup, args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    rows = [f"| anatomy_guided_mask | {name} | {B} | {L} | {r} | {beta} | {ref:.3f} | {vec:.3f} | {ref / vec:.1f}x |"]
    if args.all:
        side = int(L**0.5)
        others = {
            "random_mask": lambda: random_mask(B, L, r, device=device, generator=g),
            "gaze_guided_mask": lambda: gaze_guided_mask(p, r, generator=g),
            "block_mask": lambda: block_mask(B, (side, L // side), r, device=device, generator=g),
            "score_guided_mask": lambda: score_guided_mask(p, r, hard_share=0.5, generator=g),
        }
        for fname, fn in others.items():
            t = median_ms(fn, device, args.warmup, args.repeats)
            rows.append(f"| {fname} | {name} | {B} | {L} | {r} | - | - | {t:.3f} | - |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--num-patches", type=int, default=196)
    ap.add_argument("--mask-ratio", type=float, default=0.75)
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=50, help="timed calls of the batched version")
    ap.add_argument("--ref-repeats", type=int, default=15, help="timed calls of the reference loop")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--all", action="store_true", help="also time the other masking functions")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    devices = [torch.device("cpu")]
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices = [torch.device("cuda")] if args.device == "cuda" else devices + [torch.device("cuda")]

    print("$ python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]))
    print(f"torch {torch.__version__}; median of N timed calls after {args.warmup} warm-up calls\n")
    print("| function | device | B | L | mask_ratio | beta | reference loop (ms) | batched (ms) | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dev in devices:
        for row in bench_device(dev, args):
            print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
