"""Synthetic angiograms beside real ones (DCA1), for the realism check of issue 16.

    python benchmarks/synthetic_vs_real.py --data ../shared/data/xca_dca1 \
        --out benchmarks/results/synthetic-realism

Writes ``synthetic_vs_real.png`` (rows: DCA1, synthetic default, synthetic ``rich``; the same
grey scale for all) and ``stats.md``: per set, the mean and spread of grey level, the
fine-scale contrast (std of a Laplacian), the share of Sato response above the 92nd percentile
that falls on the labelled vessels (how much of the "vesselness" the background steals: ribs,
catheter, edges) and the vessel fraction. DCA1 is BSD-3-Clause (c) 2016 F. Cervantes-Sanchez,
Cervantes-Sanchez et al., Applied Sciences 2019, 9(24):5507; showing it in a figure is allowed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi


def sato_on_vessel_share(img: np.ndarray, mask: np.ndarray) -> float:
    from priormim.priors.sato import vesselness

    v = vesselness(torch.from_numpy(img.astype(np.float32))[None, None], sigmas=(1, 2, 3, 4))[0, 0].numpy()
    b = 20 * img.shape[0] // 300
    v[:b], v[-b:], v[:, :b], v[:, -b:] = 0, 0, 0, 0
    top = v > np.percentile(v, 92)
    return float((top & mask).sum() / max(top.sum(), 1))


def stats(images: list[np.ndarray], masks: list[np.ndarray]) -> dict[str, str]:
    def ms(vals):
        a = np.asarray(vals)
        return f"{a.mean():.3f} ± {a.std(ddof=1):.3f}"

    return {
        "mean grey": ms([i.mean() for i in images]),
        "grey std": ms([i.std() for i in images]),
        "Laplacian std (fine contrast)": ms([ndi.laplace(ndi.gaussian_filter(i, 1.0)).std() for i in images]),
        "Sato top-8 % on vessel": ms([sato_on_vessel_share(i, m) for i, m in zip(images, masks)]),
        "vessel fraction": ms([m.mean() for m in masks]),
    }


def main() -> None:
    from priormim.data.synth_xca import synthesize_angiogram
    from priormim.io import list_images, read_gray, read_mask

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=20, help="images per set for the statistics")
    ap.add_argument("--show", type=int, default=5, help="images per row in the figure")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = list_images(args.data / "images")[: args.n]
    real = [read_gray(f) for f in files]
    real_m = [read_mask(args.data / "masks" / f.name) for f in files]
    sets = {"DCA1 (real)": (real, real_m)}
    for name, rich in (("synthetic (default)", False), ("synthetic (rich)", True)):
        s = [synthesize_angiogram(size=300, seed=np.random.default_rng([7, i]), rich=rich) for i in range(args.n)]
        sets[name] = ([x.image.astype(np.float32) / 255 for x in s], [x.mask for x in s])
    fig, axes = plt.subplots(len(sets), args.show, figsize=(2.2 * args.show, 2.3 * len(sets)), layout="constrained")
    for r, (name, (ims, _)) in enumerate(sets.items()):
        for c in range(args.show):
            axes[r, c].imshow(ims[c], cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_xticks([]); axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(name, fontsize=9)
    fig.suptitle("real vs synthetic angiograms, 300 px, one grey scale [0, 1]; DCA1: BSD-3-Clause, "
                 "Cervantes-Sanchez et al. 2019", fontsize=9)
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "synthetic_vs_real.png", dpi=80)
    rows = {name: stats(ims, ms) for name, (ims, ms) in sets.items()}
    keys = list(next(iter(rows.values())))
    lines = [f"# Synthetic vs real angiograms ({args.n} images per set, 300 px, mean ± std over images)", "",
             "| set | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(r[k] for k in keys) + " |" for name, r in rows.items()]
    (args.out / "stats.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
