"""Vessel fidelity of reconstructions on real angiograms: the encoders ``dca1_cv.py`` pretrained.

    python benchmarks/dca1_fidelity.py --cv-out /tmp/dca1cv2 --data ../shared/data/xca_dca1 \
        --results benchmarks/results/dca1-fidelity

``dca1_cv.py`` pretrains MAE and VasoMIM (same ViT, pool, epochs and seed) on synthetic
angiograms only, so all 40 DCA1 angiograms are held out from both. This script runs
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
from dca1_cv import bootstrap_ci  # noqa: E402

REF_SEED = 99
METRICS = (f"dice_ref_segmentor_s{REF_SEED}", f"softdice_ref_segmentor_s{REF_SEED}", "dice_sato", "psnr_vessel", "psnr_background")
TOKENS = ("silhouette", "calinski_harabasz", "davies_bouldin")


def runs(cv_out: Path) -> dict[str, Path]:
    """``{"mae": run, "vasomim": run}``: the finished pretraining runs under ``<cv_out>/pretrain``
    (one per method; several budgets in one folder would make the comparison ambiguous)."""
    found = {}
    for method in ("mae", "vasomim"):
        done = sorted(p.parent for p in (cv_out / "pretrain").glob(f"{method}_e*/encoder.safetensors"))
        if len(done) > 1:
            raise SystemExit(f"several finished {method} runs ({', '.join(d.name for d in done)}); keep one per --cv-out")
        if done:
            found[method] = done[0]
    return found


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


def analyze(method: str, run: Path, args: argparse.Namespace, ref: Path) -> Path:
    from priormim.evaluation.analyze import analyze_run

    out = args.cv_out / "fidelity" / method
    if not (out / "analysis.json").is_file():
        analyze_run(run, args.data / "images", out, masks=args.data / "masks", segmentors=[ref],
                    fixed_masks_path=args.cv_out / "fidelity" / "fixed_masks.npz", draws=16)
    return out


def per_image(out: Path) -> dict[str, dict[str, float]]:
    with open(out / "per_image.csv") as f:
        return {r["image"]: {k: float(v) for k, v in r.items() if k != "image"} for r in csv.DictReader(f)}


def table(outs: dict[str, Path], args: argparse.Namespace) -> str:
    rows = {m: per_image(o) for m, o in outs.items()}
    summary = {m: json.loads((o / "analysis.json").read_text()) for m, o in outs.items()}
    images = sorted(set(rows["mae"]) & set(rows["vasomim"]))
    lines = [f"Held-out real angiograms: {len(images)} DCA1 images (none in either pretraining pool); one fixed mask per image "
             "(75 % of patches hidden), shared by both runs. Per-image means; VasoMIM − MAE paired per image, 95 % bootstrap CI.", "",
             "| metric | MAE | VasoMIM | VasoMIM − MAE [95 % CI] |", "|---|---|---|---|"]
    for k in METRICS:
        a = np.array([rows["mae"][i][k] for i in images])
        b = np.array([rows["vasomim"][i][k] for i in images])
        ok = np.isfinite(a) & np.isfinite(b)
        if not ok.any():
            lines.append(f"| {k} | n/a | n/a | (undefined on every image) |")
            continue
        lo, hi = bootstrap_ci(b[ok] - a[ok])
        lines.append(f"| {k} | {a[ok].mean():.4f} | {b[ok].mean():.4f} | {(b[ok] - a[ok]).mean():+.4f} [{lo:+.4f}, {hi:+.4f}]"
                     + (f" (n = {ok.sum()})" if ok.sum() < len(images) else "") + " |")
    for k in TOKENS:
        lines.append(f"| tokens: {k} (all images pooled, no CI) | {summary['mae']['tokens'][k]:.4g} | {summary['vasomim']['tokens'][k]:.4g} | |")
    share = {m: summary[m]["masking"]["masked_vessel_share_end"] for m in ("mae", "vasomim")}
    lines.append(f"| masked vessel share, end of training (vessel patches overall: "
                 f"{summary['mae']['masking']['vessel_patch_share']:.3f}) | {share['mae']:.3f} | {share['vasomim']:.3f} | |")
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
    args = ap.parse_args()
    found = runs(args.cv_out)
    if set(found) != {"mae", "vasomim"}:
        raise SystemExit(f"need finished MAE and VasoMIM runs under {args.cv_out / 'pretrain'} (found {sorted(found)}); run dca1_cv.py first")
    ref = reference_segmentor(args.cv_out, found["vasomim"], args.segmentor_epochs)
    outs = {m: analyze(m, run, args, ref) for m, run in found.items()}
    print(table(outs, args))


if __name__ == "__main__":
    main()
