"""Batched torch Sato vesselness vs ``skimage.filters.sato``: agreement and speed.

Run by hand (not in CI)::

    python benchmarks/bench_vesselness.py                      # DCA1 if found, else synthetic
    python benchmarks/bench_vesselness.py --data DIR --n 16 --size 512
    python benchmarks/bench_vesselness.py --synthetic

Both sides run in the same process on the same images (float32, sigmas 1-4, dark ridges,
``mode="reflect"``). scikit-image filters one image at a time; torch filters the batch.
Prints a Markdown table (one row per device) and the command line.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage.filters import sato

from priormim.priors import vessel_mask, vesselness

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "xca_dca1" / "images"
SIGMAS = (1, 2, 3, 4)


def synthetic(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``[n, size, size]`` bright noisy backgrounds with dark curved lines of several widths."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((n, size, size), dtype=np.float32)
    for i in range(n):
        img = 0.7 + 0.1 * xx + 0.03 * rng.standard_normal((size, size)).astype(np.float32)
        for _ in range(8):
            a, f, ph, c = rng.uniform(0.02, 0.1), rng.uniform(2, 8), rng.uniform(0, 6.3), rng.uniform(0.1, 0.9)
            width = rng.uniform(1.0, 5.0) / size
            dist = yy - (c + a * np.sin(f * xx + ph)) if rng.random() < 0.5 else xx - (c + a * np.sin(f * yy + ph))
            img -= 0.3 * np.exp(-0.5 * (dist / width) ** 2)
        out[i] = np.clip(img, 0, 1)
    return out


def load_real(folder: Path, n: int, size: int) -> np.ndarray:
    from priormim.io import list_images, read_gray

    files = list_images(folder)[:n]
    imgs = []
    for p in files:
        img = Image.fromarray(read_gray(p)).resize((size, size), Image.BILINEAR)
        imgs.append(np.asarray(img, dtype=np.float32))
    while len(imgs) < n:  # fewer files than asked: repeat them
        imgs.append(imgs[len(imgs) % len(files)])
    return np.stack(imgs)


def timed(fn, repeats: int, sync=lambda: None) -> tuple[float, float, object]:
    """Best wall time and best process CPU time of ``repeats`` calls (after a warm-up call),
    and the last result. CPU time is the fairer figure on a machine shared with other jobs."""
    result = fn()
    sync()
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        sync()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best, best_cpu, result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help=f"folder of angiograms (default {DEFAULT_DATA} if present)")
    ap.add_argument("--synthetic", action="store_true", help="use synthetic lines + noise even if real data exist")
    ap.add_argument("--n", type=int, default=16, help="images (default 16)")
    ap.add_argument("--size", type=int, default=512, help="resize to size x size (default 512)")
    ap.add_argument("--repeats", type=int, default=3, help="torch timing repeats, best taken (default 3)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        # On a CPU shared with other jobs, fewer OpenMP threads can be faster (no spin-waits).
        torch.set_num_threads(args.threads)

    folder = args.data or (DEFAULT_DATA if DEFAULT_DATA.is_dir() else None)
    if folder is not None and not args.synthetic:
        imgs, source = load_real(folder, args.n, args.size), f"real ({folder.parent.name}, resized)"
    else:
        imgs, source = synthetic(args.n, args.size), "synthetic"
    print(f"{args.n} images {args.size}x{args.size} {source}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads; sigmas {SIGMAS}", flush=True)

    # scikit-image: one pass (it is the slow side), one image at a time as it must.
    t0, c0 = time.perf_counter(), time.process_time()
    ref = np.stack([sato(im, sigmas=SIGMAS, black_ridges=True, mode="reflect") for im in imgs])
    t_sk, c_sk = time.perf_counter() - t0, time.process_time() - c0

    x = torch.from_numpy(imgs).unsqueeze(1)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for dev in devices:
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        xd = x.to(dev)
        t_torch, c_torch, out = timed(lambda: vesselness(xd, sigmas=SIGMAS), args.repeats, sync)
        t_mask, _, _ = timed(lambda: vessel_mask(xd, sigmas=SIGMAS), args.repeats, sync)
        out = out[:, 0].cpu().numpy()
        r = np.array([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(out, ref)])
        rel = float(np.max(np.abs(out - ref)) / np.max(ref))
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
        cpu = f"{c_sk / c_torch:.1f}x" if dev.type == "cpu" else "-"
        rows.append(
            f"| {name} | {args.n}x{args.size}² {source} | {t_sk:.2f} | {t_torch:.3f} | {t_sk / t_torch:.1f}x "
            f"| {c_sk:.2f} / {c_torch:.2f} = {cpu} | {r.min():.6f} | {r.mean():.6f} | {rel:.1e} | {t_mask:.3f} |"
        )
    print()
    print("| torch device | images | skimage sato wall (s) | torch vesselness wall (s) | wall speed-up "
          "| CPU s skimage / torch | r min | r mean | max abs diff / max | torch vessel_mask wall (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    print()
    print("command: python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
