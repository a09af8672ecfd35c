"""Vessel-prior presets (``official`` vs ``priormim``) against hand-drawn vessel masks.

Run by hand (not in CI)::

    python benchmarks/prior_presets.py --data /work/shared/data/xca_dca1
    python benchmarks/prior_presets.py --data DIR --device cuda --repeats 5

``--data`` holds ``images/`` and ``masks/`` (same stems; e.g. DCA1). For every image, each
preset's prior (:func:`priormim.priors.vessel_mask`, default settings: sigmas 1-4, border
20, percentile 92) is scored against the hand-drawn mask (Dice, precision, recall) and
against the other preset (Dice). A third row runs the official XA-SSL recipe itself one
image at a time with scikit-image (``sato`` on the 8-bit image, ``astype(uint8)``, border
20 zeroed, ``>=`` the 92nd percentile, 4-connected component of the arg-max), to check the
``official`` preset against it and to time it.

Timing: the presets run in batches of ``--batch-size`` images (as ``priormim prior vessel``
does) on the images already in memory, alternating presets in each of ``--repeats`` rounds;
the fastest round counts. Prints a Markdown table and the command line.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.filters import sato

from priormim.data.readers import read_segmentation_folder
from priormim.io import read_gray, read_mask, to_uint8
from priormim.priors import PRESETS, vessel_mask


def xa_ssl_reference(img_u8: np.ndarray, *, border: int = 20, percentile: float = 92.0) -> np.ndarray:
    """The official recipe on one 8-bit image with scikit-image and numpy -> ``bool [H, W]``."""
    r = sato(img_u8, sigmas=[1, 2, 3, 4], black_ridges=True, mode="reflect").astype(np.uint8)
    r[:border, :] = 0
    r[r.shape[0] - border :, :] = 0
    r[:, :border] = 0
    r[:, r.shape[1] - border :] = 0
    kept = np.where(r >= np.percentile(r, percentile), r, 0)
    if not kept.any():
        return np.zeros(kept.shape, dtype=bool)
    lab, _ = ndi.label(kept > 0, structure=ndi.generate_binary_structure(2, 1))
    return lab == lab.flat[np.argmax(kept)]


def scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """(Dice, precision, recall) of boolean ``pred`` against ``truth``."""
    tp = float((pred & truth).sum())
    p, t = float(pred.sum()), float(truth.sum())
    dice = 2 * tp / (p + t) if p + t else 1.0
    return dice, (tp / p if p else 0.0), (tp / t if t else 0.0)


def timed(fn: Callable[[], np.ndarray], sync: Callable[[], None]) -> tuple[float, np.ndarray]:
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="folder with images/ and masks/")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per vessel_mask call (default 16)")
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds, fastest counts (default 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--variants", action="store_true",
                        help="also score the official recipe with priormim's collimator mask, and with keep=strongest")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    pairs = read_segmentation_folder(args.data)
    images = [read_gray(p.image) for p in pairs]
    truths = [read_mask(p.mask) for p in pairs]
    n = len(pairs)

    def run_preset(preset: str, **kw: object) -> np.ndarray:
        # Same-size batches, as the prior cache makes them.
        out = np.zeros((n, *images[0].shape), dtype=bool) if len({im.shape for im in images}) == 1 else None
        masks = []
        for i in range(0, n, args.batch_size):
            x = torch.from_numpy(np.stack(images[i : i + args.batch_size])).unsqueeze(1).to(dev)
            masks.extend(vessel_mask(x, preset=preset, **kw)[:, 0].cpu().numpy())
        if out is not None:
            out[:] = np.stack(masks)
            return out
        return np.array(masks, dtype=object)

    def run_reference() -> np.ndarray:
        return np.array([xa_ssl_reference(to_uint8(im)) for im in images], dtype=object)

    runs: dict[str, Callable[[], np.ndarray]] = {p: (lambda p=p: run_preset(p)) for p in PRESETS}
    if args.variants:
        runs["official + collimator mask"] = lambda: run_preset("official", collimator=True)
        runs["official, keep=strongest"] = lambda: run_preset("official", keep="strongest")
    ref_name = "XA-SSL code (skimage, per image)"
    runs[ref_name] = run_reference
    for fn in runs.values():  # warm-up: kernels, allocator, CUDA context
        if fn is not run_reference:
            fn()
    best = {name: float("inf") for name in runs}
    masks: dict[str, np.ndarray] = {}
    for _ in range(max(1, args.repeats)):
        for name, fn in runs.items():
            t, masks[name] = timed(fn, sync)
            best[name] = min(best[name], t)

    print(f"Vessel priors vs hand-drawn masks: {n} images of {args.data}, device {dev}, "
          f"torch threads {torch.get_num_threads()}, batch {args.batch_size}, best of {args.repeats}\n")
    print("| prior | Dice | precision | recall | images with Dice < 0.1 | prior area (% of image) | s / image |")
    print("|---|---|---|---|---|---|---|")
    for name in runs:
        s = np.array([scores(m, t) for m, t in zip(masks[name], truths)])
        area = [100 * float(m.mean()) for m in masks[name]]
        print(f"| {name} | {mean_std(list(s[:, 0]))} | {mean_std(list(s[:, 1]))} | {mean_std(list(s[:, 2]))} "
              f"| {int((s[:, 0] < 0.1).sum())} / {n} | {mean_std(area)} | {best[name] / n:.4f} |")
    print("\n| agreement (Dice between priors) | mean ± std | min | identical masks |")
    print("|---|---|---|---|")
    for a, b in ((PRESETS[0], PRESETS[1]), (PRESETS[0], ref_name)):
        d = [scores(x, y)[0] for x, y in zip(masks[a], masks[b])]
        same = sum(np.array_equal(x, y) for x, y in zip(masks[a], masks[b]))
        print(f"| {a} vs {b} | {mean_std(d)} | {min(d):.4f} | {same} / {n} |")
    print("\n```\n" + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]) + "\n```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
