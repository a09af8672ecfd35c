"""Label-efficiency curve on DCA1 (issue 15): Dice against the number of labelled training images.

    python benchmarks/dca1_label_curve.py --out /tmp/dca1cv2 --data ../shared/data/xca_dca1 \
        --results benchmarks/results/dca1-labels [--sizes 2 4 8 16 26] [--seeds 0 1 2] [--folds 0 1 2 3 4]

For every size N, method and seed it runs ``dca1_cv.py --labels N`` (fixed nested subsets of each
fold's 26 training images, the same number of optimisation steps at every N, the fold's own 6
validation and 8 test images; see ``dca1_cv.py``), skipping whatever is already finished, so the
same command resumes. The full-data point (N = 26) is the plain cross-validation run in the same
``--out`` folder. ``vit_mae`` / ``vit_vasomim`` use the encoders ``dca1_cv.py`` pretrained on the
synthetic pool in ``--out``, fine-tuning seed s starting from pretraining seed s
(``dca1_cv.py --pretrain-seed``), so the spread over seeds includes pretraining's; the
pretraining budget is read from there and written under the table.

Writes ``<results>/label_curve.md`` (mean DSC over the scored test images and seeds, ± std over
seeds, and each pretrained ViT minus ViT scratch, paired by seed, with a 95 % bootstrap CI over images) and
``<results>/label_curve.png``. ``--table-only`` rebuilds both from what is on disk.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from dca1_cv import FULL_TRAIN, LABELS, bootstrap_ci  # noqa: E402

METHODS = ("vit_scratch", "vit_mae", "vit_vasomim")


def method_dir(method: str, n: int) -> str:
    return method if n == FULL_TRAIN else f"{method}_n{n}"


def scores(out: Path, method: str, n: int, folds: list[int]) -> dict[int, dict[str, float]]:
    """``{seed: {image: DSC}}`` over the requested folds, for the seeds that finished every one of them."""
    res: dict[int, dict[str, float]] = {}
    done: dict[int, set[int]] = {}
    for k in folds:
        for m in sorted((out / method_dir(method, n) / f"fold{k}").glob("seed*/metrics.json")):
            seed = int(m.parent.name[4:])
            done.setdefault(seed, set()).add(k)
            for r in json.loads(m.read_text())["test"]["per_image"]:
                res.setdefault(seed, {})[r["name"]] = float(r["dice"])
    return {s: v for s, v in res.items() if done.get(s) == set(folds)}


def run(args: argparse.Namespace) -> None:
    for n in args.sizes:
        for seed in args.seeds:
            for method in args.methods:
                cmd = [sys.executable, str(HERE / "dca1_cv.py"), "--out", str(args.out), "--data", str(args.data),
                       "--methods", method, "--seeds", str(seed), "--folds", *map(str, args.folds),
                       "--threads", str(args.threads), "--pretrain-seed", str(seed)]
                if n != FULL_TRAIN:
                    cmd += ["--labels", str(n)]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def table(args: argparse.Namespace) -> str:
    rows = ["| labelled images | " + " | ".join(LABELS[m] for m in args.methods) + " | "
            + " | ".join(f"{LABELS[m]} − scratch [95 % CI]" for m in args.methods if m != "vit_scratch") + " |",
            "|---" * (1 + 2 * len(args.methods) - 1) + "|"]
    curve: dict[str, list[tuple[int, float, float]]] = {m: [] for m in args.methods}
    for n in args.sizes:
        by_method = {m: scores(args.out, m, n, args.folds) for m in args.methods}
        cells = []
        for m in args.methods:
            s = by_method[m]
            if not s:
                cells.append("-")
                continue
            images = sorted(set.intersection(*(set(v) for v in s.values())))
            seed_means = [np.mean([s[seed][i] for i in images]) for seed in s]
            spread = np.std(seed_means, ddof=1) if len(seed_means) > 1 else float("nan")
            curve[m].append((n, float(np.mean(seed_means)), float(spread)))
            cells.append(f"{np.mean(seed_means):.3f} ± {spread:.3f} ({len(s)} seeds)" if len(s) > 1 else f"{np.mean(seed_means):.3f} (1 seed)")
        for m in args.methods:
            if m == "vit_scratch":
                continue
            a, b = by_method.get(m, {}), by_method.get("vit_scratch", {})
            seeds = sorted(set(a) & set(b))  # paired by seed: the same fine-tuning seed (and pretraining seed)
            if seeds:
                shared = sorted(set.intersection(*(set(a[x]) & set(b[x]) for x in seeds)))
                d = np.array([np.mean([a[x][i] - b[x][i] for x in seeds]) for i in shared])
                lo, hi = bootstrap_ci(d)
                cells.append(f"{d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]" + (f" ({len(seeds)} seeds)" if len(seeds) > 1 else ""))
            else:
                cells.append("-")
        rows.append(f"| {n} | " + " | ".join(cells) + " |")
    timing = json.loads((args.out / "timing.json").read_text()) if (args.out / "timing.json").is_file() else {}
    pre = {k: v for k, v in timing.get("pretrain", {}).items() if k.split("_e")[0] in ("mae", "vasomim")}
    sato = sato_mean(args.out, test_images(args))
    if sato is not None:
        rows += ["", f"Sato vesselness (no labels, no training) on the same test images: {sato:.3f} DSC."]
    walls = [f"{LABELS[m]} N={n}: {timing[method_dir(m, n)][f'fold{k}'] / 60:.0f} min" for n in args.sizes for m in args.methods
             for k in args.folds[:1] if f"fold{k}" in timing.get(method_dir(m, n), {})]
    rows += ["", f"Test images: the {8 * len(args.folds)} images of fold(s) {', '.join(map(str, args.folds))}; DSC averaged over "
             "images, ± std over seeds; CIs: 10,000 bootstrap resamples of the images (seed-averaged per image).",
             "Fine-tuning seed s of a pretrained ViT starts from pretraining seed s.",
             "Pretraining budget (dca1_cv.py defaults: 256 synthetic angiograms, 100 epochs, batch 64; wall time per run): "
             + (", ".join(f"{k}: {v / 60:.0f} min" for k, v in pre.items()) if pre else "not recorded") + ".",
             "Fine-tuning wall time per run (one thread, shared 2-core CPU; latest seed): " + ("; ".join(walls) or "not recorded") + "."]
    text = "\n".join(rows) + "\n"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "label_curve.md").write_text(text)
    figure(curve, args, sato)
    return text


def test_images(args: argparse.Namespace) -> set[str]:
    """The names of the test images of ``args.folds`` (from the committed folds file)."""
    from dca1_cv import load_folds

    folds = load_folds()
    return {Path(n).stem for k in args.folds for n in folds[k]}


def sato_mean(out: Path, images: set[str]) -> float | None:
    """Sato's mean DSC over ``images`` (the curve's test images), or None when not run."""
    path = out / "sato" / "metrics.json"
    if not path.is_file():
        return None
    d = [float(r["dice"]) for r in json.loads(path.read_text())["test"]["per_image"] if Path(r["name"]).stem in images]
    return float(np.mean(d)) if d else None


def figure(curve: dict[str, list[tuple[int, float, float]]], args: argparse.Namespace, sato: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for m, pts in curve.items():
        if pts:
            n, mean, sd = map(np.array, zip(*pts))
            ax.errorbar(n, mean, yerr=np.nan_to_num(sd), marker="o", capsize=3, label=LABELS[m])
    if sato is not None:
        ax.axhline(sato, color="grey", ls="--", label="Sato (no labels)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(args.sizes, [str(n) for n in args.sizes])
    ax.set_xlabel("labelled training images")
    ax.set_ylabel(f"test DSC (DCA1, {'5-fold CV' if len(args.folds) == 5 else 'fold ' + ', '.join(map(str, args.folds))})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.results / "label_curve.png", dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/xca_dca1"))
    ap.add_argument("--results", type=Path, default=HERE / "results" / "dca1-labels")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=["unet", *METHODS])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8, 16, FULL_TRAIN])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    if any(not 1 <= n <= FULL_TRAIN for n in args.sizes):
        ap.error(f"--sizes must be between 1 and {FULL_TRAIN} (each fold has {FULL_TRAIN} training images)")
    if not args.table_only:
        run(args)
    print(table(args))


if __name__ == "__main__":
    main()
