"""Vessel fidelity of reconstructions on real angiograms: the encoders ``dca1_cv.py`` pretrained.

    python benchmarks/dca1_fidelity.py --cv-out /tmp/dca1cv2 --data ../shared/data/xca_dca1 \
        --results benchmarks/results/dca1-fidelity --seeds 0 1 2 --threads 1

``dca1_cv.py`` pretrains MAE and VasoMIM (same ViT, pool, epochs and seed) on synthetic
angiograms only, so all 40 DCA1 angiograms are held out from both; ``--seeds 0 1 2`` pretrains
(or reuses) one MAE and one VasoMIM run per seed and pairs them by seed. This script runs
``priormim analyze`` on each run over the 40 images with their hand-drawn masks and one shared
fixed-mask file (75 % uniform random patches, the same hidden patches for both), and compares
the two per image: VasoMIM − MAE with a 95 % bootstrap CI over images (10,000 resamples).

The reference segmentor is trained like VasoMIM's own consistency segmentor (UNeXt-S, the
official recipe, on the pool's vessel priors) but with seed 99, so no run was trained against
it; being the same kind of network as VasoMIM's, it may favour VasoMIM, so Sato fidelity (no
learning) is reported beside it. Resumable: finished analyses are skipped.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from dca1_cv import bootstrap_ci, pretrain_encoder  # noqa: E402

REF_SEED = 99
METRICS = (f"dice_ref_segmentor_s{REF_SEED}", f"softdice_ref_segmentor_s{REF_SEED}", "dice_sato", "psnr_vessel", "psnr_background")
TOKENS = ("silhouette", "calinski_harabasz", "davies_bouldin")


def run_dir(cv_out: Path, method: str, epochs: int, seed: int) -> Path:
    """The pretraining run ``dca1_cv.pretrain_encoder`` writes for ``method`` and ``seed``."""
    return cv_out / "pretrain" / (f"{method}_e{epochs}" + (f"_s{seed}" if seed else ""))


def reference_segmentor(cv_out: Path, vasomim_run: Path, epochs: int) -> Path:
    """UNeXt-S trained on the pool and priors the VasoMIM run used (read from its config), seed ``REF_SEED``."""
    import yaml

    data = yaml.safe_load((vasomim_run / "config.yaml").read_text())["data"]
    path = cv_out / "pretrain" / f"ref_segmentor_s{REF_SEED}.safetensors"
    if not path.is_file():
        subprocess.run([sys.executable, "-m", "priormim", "train-segmentor", "--images", str(data["images"]),
                        "--priors", str(data["priors"]), "--out", str(path), "--epochs", str(epochs),
                        "--img-size", "128", "--seed", str(REF_SEED)], check=True)
    return path


def analyze(method: str, seed: int, run: Path, args: argparse.Namespace, ref: Path) -> Path:
    from priormim.evaluation.analyze import analyze_run

    out = args.cv_out / "fidelity" / (method + (f"_s{seed}" if seed else ""))
    if not (out / "analysis.json").is_file():
        analyze_run(run, args.data / "images", out, masks=args.data / "masks", segmentors=[ref],
                    fixed_masks_path=args.cv_out / "fidelity" / "fixed_masks.npz", draws=16)
    return out


def per_image(out: Path) -> dict[str, dict[str, float]]:
    with open(out / "per_image.csv") as f:
        return {r["image"]: {k: float(v) for k, v in r.items() if k != "image"} for r in csv.DictReader(f)}


def table(outs: dict[tuple[str, int], Path], args: argparse.Namespace) -> str:
    """VasoMIM − MAE per metric. ``outs`` maps ``(method, seed)`` to an analysis folder; the seeds
    with both methods analysed are paired (same seed, same fixed masks). The CI resamples images
    of the seed-averaged per-image difference; the per-seed column shows the seed spread."""
    seeds = sorted({s for m, s in outs if m == "mae"} & {s for m, s in outs if m == "vasomim"})
    rows = {(m, s): per_image(outs[m, s]) for m in ("mae", "vasomim") for s in seeds}
    summary = {(m, s): json.loads((outs[m, s] / "analysis.json").read_text()) for m in ("mae", "vasomim") for s in seeds}
    images = sorted(set.intersection(*(set(r) for r in rows.values())))
    lines = [f"Held-out real angiograms: {len(images)} DCA1 images (none in any pretraining pool); one fixed mask per image "
             f"(75 % of patches hidden), shared by every run. Pretraining seeds {', '.join(map(str, seeds))}, MAE and VasoMIM "
             "paired by seed. Per-image values averaged over seeds; VasoMIM − MAE paired per image, 95 % bootstrap CI over "
             "images; the last column gives the difference of each seed alone.", "",
             "| metric | MAE | VasoMIM | VasoMIM − MAE [95 % CI] | per seed |", "|---|---|---|---|---|"]
    for k in METRICS:
        a = np.array([[rows["mae", s][i][k] for i in images] for s in seeds])  # (seeds, images)
        b = np.array([[rows["vasomim", s][i][k] for i in images] for s in seeds])
        ok = (np.isfinite(a) & np.isfinite(b)).all(axis=0)  # images defined for every run
        if not ok.any():
            lines.append(f"| {k} | n/a | n/a | (undefined on every image) | |")
            continue
        a, b = a[:, ok], b[:, ok]
        d = (b - a).mean(axis=0)
        lo, hi = bootstrap_ci(d)
        per_seed = " / ".join(f"{x:+.4f}" for x in (b - a).mean(axis=1))
        lines.append(f"| {k} | {a.mean():.4f} | {b.mean():.4f} | {d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}]"
                     + (f" (n = {ok.sum()})" if ok.sum() < len(images) else "") + f" | {per_seed} |")

    def over_seeds(method: str, get) -> str:
        v = np.array([get(summary[method, s]) for s in seeds])
        return f"{v.mean():.4g}" + (f" ± {v.std(ddof=1):.2g}" if len(v) > 1 else "")

    for k in TOKENS:
        lines.append(f"| tokens: {k} (all images pooled, no CI; ± std over seeds) | {over_seeds('mae', lambda x: x['tokens'][k])} "
                     f"| {over_seeds('vasomim', lambda x: x['tokens'][k])} | | |")
    share = lambda x: x["masking"]["masked_vessel_share_end"]  # noqa: E731
    lines.append(f"| masked vessel share, end of training (vessel patches overall: "
                 f"{summary['mae', seeds[0]]['masking']['vessel_patch_share']:.3f}) | {over_seeds('mae', share)} "
                 f"| {over_seeds('vasomim', share)} | | |")
    text = "\n".join(lines) + "\n"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "fidelity.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cv-out", type=Path, required=True, help="the --out of dca1_cv.py (holds pretrain/)")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/xca_dca1"))
    ap.add_argument("--results", type=Path, default=HERE / "results" / "dca1-fidelity")
    ap.add_argument("--segmentor-epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="pretraining seeds (MAE and VasoMIM each)")
    ap.add_argument("--pretrain-pool", type=int, default=256, help="as dca1_cv.py")
    ap.add_argument("--pretrain-epochs", type=int, default=100, help="as dca1_cv.py")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    cv = argparse.Namespace(out=args.cv_out, pretrain_pool=args.pretrain_pool, pretrain_epochs=args.pretrain_epochs,
                            segmentor_epochs=args.segmentor_epochs)
    for seed in args.seeds:  # finished runs are skipped
        for method in ("mae", "vasomim"):
            pretrain_encoder(method, cv, seed)
    ref = reference_segmentor(args.cv_out, run_dir(args.cv_out, "vasomim", args.pretrain_epochs, args.seeds[0]),
                              args.segmentor_epochs)
    outs = {(m, seed): analyze(m, seed, run_dir(args.cv_out, m, args.pretrain_epochs, seed), args, ref)
            for seed in args.seeds for m in ("mae", "vasomim")}
    print(table(outs, args))


if __name__ == "__main__":
    main()
