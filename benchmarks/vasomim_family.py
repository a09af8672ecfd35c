"""The VasoMIM family on DCA1 at the CPU budget of ``dca1_cv.py``: the paper's ablation (guidance x consistency).

    python benchmarks/vasomim_family.py --cv-out /tmp/dca1cv2 --data ../shared/data/xca_dca1 \
        --results benchmarks/results/vasomim-family --seeds 0 1 2 --threads 1

Methods: scratch (the same ViT at its seeded random init), MAE, guidance only, consistency only,
VasoMIM. Every pretrained encoder is a ``dca1_cv.pretrain_encoder`` run in ``<cv-out>/pretrain``:
256 rich synthetic angiograms (no DCA1 image), ViT of ViT-tiny width, depth 6, patch 16 at 128 px,
100 epochs, batch 64, blr 1.5e-3, the config's own masking and losses (VasoMIM: official code
defaults). The MAE and VasoMIM runs are the ones ``dca1_cv.py`` fine-tunes and ``dca1_fidelity.py``
analyses. Guidance only and consistency only use the frozen segmentor of the VasoMIM run with
the same seed: the one they would train themselves (same pool, priors, recipe and seed), so the
three differ only in how they use it.

Per (method, seed):

* **downstream**: a frozen-encoder linear probe (:mod:`priormim.evaluation.probe_seg`) under the
  5 folds of ``dca1_cv_folds.json`` (per fold: 26 train, threshold on 6 val, 8 test), so each of
  the 40 DCA1 images gets one test Dice. Tokens at native scale: the 300-px image padded with its
  median grey to 384 and encoded as 3 x 3 windows of 128 px, the scale of the pretraining crops
  and of the fine-tuning windows (shrinking the whole image to 128 px makes vessels 2.3x thinner
  than anything the encoder saw); one linear map per token to its 16 x 16 pixels;
* **mechanism**: ``priormim analyze`` on all 40 (``dca1_fidelity.analyze``: one fixed-mask
  file, the reference segmentor that no run trained against, Sato).

Tables: mean ± std over seeds; each method − MAE and − scratch per image (averaged over the
paired seeds), 95 % bootstrap CI over images, and each seed's difference alone ("beyond the
seed spread" means every seed's difference has the sign of the mean and the Student-t CI over
seeds excludes 0). Resumable: runs, probes and analyses that exist are reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from dca1_cv import FULL_TRAIN, bootstrap_ci, fold_names, load_folds, pretrain_encoder  # noqa: E402
from dca1_fidelity import REF_SEED, analyze, per_image, reference_segmentor, run_dir  # noqa: E402

PRETRAINED = ("mae", "vasomim_guidance_only", "vasomim_consistency_only", "vasomim")
LABELS = {"scratch": "scratch (random init)", "mae": "MAE", "vasomim_guidance_only": "guidance only",
          "vasomim_consistency_only": "consistency only", "vasomim": "VasoMIM"}
ABLATION = (("no", "no", "mae"), ("yes", "no", "vasomim_guidance_only"), ("no", "yes", "vasomim_consistency_only"),
            ("yes", "yes", "vasomim"))
IMG = 128  # the pretraining size (dca1_cv.pretrain_encoder)
PADDED = 3 * IMG  # DCA1's 300 px padded to 3 x 3 windows


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, file=sys.stderr, flush=True)


def pretrain(method: str, seed: int, cv: argparse.Namespace) -> Path:
    """The finished run of ``method`` / ``seed`` (trained here when missing)."""
    extra: tuple[str, ...] = ()
    if method in ("vasomim_guidance_only", "vasomim_consistency_only"):
        shared = run_dir(cv.out, "vasomim", cv.pretrain_epochs, seed) / "segmentor.safetensors"
        if not shared.is_file():
            raise SystemExit(f"{shared} is missing: pretrain VasoMIM seed {seed} first (main does)")
        extra = (f"consistency.segmentor={shared}",)
    log(f"pretrain {method} seed {seed} (skipped when finished)")
    pretrain_encoder(method, cv, seed, extra)
    return run_dir(cv.out, method, cv.pretrain_epochs, seed)


def probe_images(data: Path) -> dict[str, tuple[torch.Tensor, np.ndarray]]:
    """``{name: (image [1, 384, 384], mask bool [384, 384])}`` for the 40 DCA1 images: the
    300-px image padded right and bottom with its median grey (flat, so no vessel-like edge),
    the mask with background."""
    from priormim.io import read_gray, read_mask

    out = {}
    for n in sorted(n for f in load_folds() for n in f):
        img, mask = read_gray(data / "images" / n), read_mask(data / "masks" / n)
        if img.shape[0] > PADDED or img.shape[1] > PADDED:
            raise SystemExit(f"{n}: {img.shape} is larger than {PADDED} px; this benchmark is sized for DCA1 (300 px)")
        big = np.full((PADDED, PADDED), np.median(img), np.float32)
        big[: img.shape[0], : img.shape[1]] = img
        big_mask = np.zeros((PADDED, PADDED), bool)
        big_mask[: mask.shape[0], : mask.shape[1]] = mask
        out[n] = (torch.from_numpy(big)[None], big_mask)
    return out


def native_tokens(encoder: torch.nn.Module, images: torch.Tensor, *, mean: float, std: float) -> torch.Tensor:
    """``[N, 1, 384, 384]`` -> tokens ``[N, 24, 24, D]``: each 128-px window encoded alone, at
    the native scale the encoder was pretrained and is fine-tuned at (not the image shrunk to 128 px)."""
    from priormim.evaluation.probe_seg import frozen_tokens

    n, w = len(images), PADDED // IMG
    win = images.unfold(2, IMG, IMG).unfold(3, IMG, IMG)  # [N, 1, w, w, 128, 128]
    tok = frozen_tokens(encoder, win.permute(0, 2, 3, 1, 4, 5).reshape(n * w * w, 1, IMG, IMG), mean=mean, std=std)
    g, d = tok.shape[1], tok.shape[-1]
    return tok.reshape(n, w, w, g, g, d).permute(0, 1, 3, 2, 4, 5).reshape(n, w * g, w * g, d)


def encoder_and_norm(method: str, seed: int, cv: argparse.Namespace) -> tuple[torch.nn.Module, float, float]:
    """A run's encoder and the grey-level norm it was trained with; scratch: the MAE run's
    architecture at seed ``seed``'s random init, with that run's norm (same pool)."""
    from priormim.models.mae import MaskedAutoencoder

    if method != "scratch":
        model = MaskedAutoencoder.from_run(run_dir(cv.out, method, cv.pretrain_epochs, seed))
    else:
        from priormim.training.pretrain import build_model

        cfg = MaskedAutoencoder.from_run(run_dir(cv.out, "mae", cv.pretrain_epochs, 0)).run_config
        torch.manual_seed(seed)
        model = build_model(cfg)
        model.run_config = cfg
    d = model.run_config.data
    return model.eval(), float(d.norm_mean), float(d.norm_std)


def probe(method: str, seed: int, cv: argparse.Namespace, images) -> dict[str, float]:
    """``{image: test Dice}`` of the frozen linear probe over the 5 folds (cached as JSON)."""
    from priormim.evaluation.probe_seg import linear_probe_segmentation

    path = cv.out / "family" / "probe" / f"{method}_s{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    model, mean, std = encoder_and_norm(method, seed, cv)
    names = list(images)
    tokens = dict(zip(names, native_tokens(model.encoder, torch.stack([images[n][0] for n in names]), mean=mean, std=std)))
    patch = PADDED // next(iter(tokens.values())).shape[0]
    out: dict[str, float] = {}
    for k in range(5):
        part = fold_names(k)
        assert len(part["train"]) == FULL_TRAIN
        tok = {p: torch.stack([tokens[n] for n in part[p]]) for p in part}
        train_masks = torch.stack([torch.from_numpy(images[n][1].astype(np.float32))[None] for n in part["train"]])
        res = linear_probe_segmentation(tok["train"], train_masks, tok["val"], [images[n][1] for n in part["val"]],
                                        tok["test"], [images[n][1] for n in part["test"]], patch=patch, seed=seed)
        out.update(zip(part["test"], res.per_image))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return out


def table(scores: dict[str, dict[int, dict[str, float]]], pooled: dict[str, dict[int, dict[str, float]]],
          args: argparse.Namespace) -> str:
    """``scores``: metric -> method -> seed -> image -> value (per-image metrics);
    ``pooled``: token / masking summaries, metric -> method -> seed -> value."""
    methods = [m for m in ("scratch", *PRETRAINED) if any(m in v for v in scores.values())]
    seeds_of = lambda metric, m: sorted(scores[metric].get(m, {}))  # noqa: E731

    def cell(metric: str, m: str) -> str:
        by_seed = scores[metric].get(m, {})
        if not by_seed:
            return "–"
        means = [np.nanmean(list(v.values())) for v in by_seed.values()]
        return f"{np.mean(means):.4f}" + (f" ± {np.std(means, ddof=1):.4f}" if len(means) > 1 else "") + f" ({len(means)})"

    def diff(metric: str, a: str, b: str) -> str:
        seeds = sorted(set(seeds_of(metric, a)) & set(seeds_of(metric, b)))
        if not seeds:
            return "–"
        A, B = scores[metric][a], scores[metric][b]
        images = sorted(set.intersection(*(set(A[s]) & set(B[s]) for s in seeds)))
        d = np.array([[A[s][i] - B[s][i] for i in images] for s in seeds])  # (seeds, images)
        ok = np.isfinite(d).all(axis=0)
        d = d[:, ok]
        lo, hi = bootstrap_ci(d.mean(axis=0))
        per_seed = d.mean(axis=1)
        text = f"{d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}]; seeds " + " / ".join(f"{x:+.3f}" for x in per_seed)
        if len(seeds) > 1:
            from priormim.evaluation.mechanism import paired_ci

            c = paired_ci(per_seed)
            beyond = c.excludes_zero and (np.sign(per_seed) == np.sign(c.mean)).all()
            text += f", t-CI over seeds [{c.low:+.3f}, {c.high:+.3f}]" + (" **beyond the seed spread**" if beyond else "")
        return text

    lines = ["# The VasoMIM family on DCA1 at the cpu budget (benchmarks/vasomim_family.py)", "",
             f"Pretraining: {args.pretrain_pool} rich synthetic angiograms (no DCA1 image), ViT-tiny width, depth 6, patch 16, "
             f"{IMG} px, {args.pretrain_epochs} epochs, batch 64, blr 1.5e-3 (the encoders of dca1_cv.py). Downstream: frozen "
             "linear probe under the 5 DCA1 folds (26 train / 6 val / 8 test each), native-scale tokens (3 x 3 windows of 128 px), test Dice of all 40 images (300 px padded to 384, pad counted as background). "
             "Mechanism: `priormim analyze` on the 40 images, shared fixed masks (75 %), reference segmentor seed 99. "
             "Cells: mean over images, then mean ± std over seeds (number of seeds). Differences: per image, averaged over "
             "the paired seeds, 95 % bootstrap CI over images; then each seed's own difference and the Student-t CI over "
             "seeds.", "",
             "## Downstream: frozen linear probe, DCA1 Dice (40 images, 5 folds)", "",
             "| method | probe Dice | − scratch | − MAE |", "|---|---|---|---|"]
    for m in methods:
        lines.append(f"| {LABELS[m]} | {cell('probe_dice', m)} | {diff('probe_dice', m, 'scratch') if m != 'scratch' else ''} | "
                     f"{diff('probe_dice', m, 'mae') if m not in ('scratch', 'mae') else ''} |")
    mech = [k for k in scores if k != "probe_dice"]
    lines += ["", "## Mechanism (40 held-out DCA1 images)", "",
              "dice_ref / softdice_ref: (soft) Dice inside hidden pixels between the reference segmentor's maps of the "
              "reconstruction and of the original; dice_sato: the same with Sato; PSNR in dB inside hidden vessel / "
              "background pixels (hand-drawn vessels). Tokens (pooled over images) and masked-vessel share: mean ± std "
              "over seeds.", "",
              "| method | " + " | ".join(mech) + " | " + " | ".join(pooled) + " |", "|---" * (1 + len(mech) + len(pooled)) + "|"]
    for m in PRETRAINED:
        pcells = []
        for k in pooled:
            v = list(pooled[k].get(m, {}).values())
            pcells.append("–" if not v else f"{np.mean(v):.4g}" + (f" ± {np.std(v, ddof=1):.2g}" if len(v) > 1 else ""))
        lines.append(f"| {LABELS[m]} | " + " | ".join(cell(k, m) for k in mech) + " | " + " | ".join(pcells) + " |")
    lines += ["", "## Ablation (guidance x consistency): each − MAE", "",
              "| guidance | consistency | method | probe Dice | dice_ref | softdice_ref | dice_sato |", "|---|---|---|---|---|---|---|"]
    for g, c, m in ABLATION:
        keys = ("probe_dice", "dice_ref", "softdice_ref", "dice_sato")
        cells = [cell(k, m) if m == "mae" else diff(k, m, "mae") for k in keys]
        lines.append(f"| {g} | {c} | {LABELS[m]} | " + " | ".join(cells) + " |")
    timing = json.loads((args.cv_out / "timing.json").read_text()).get("pretrain", {}) if (args.cv_out / "timing.json").is_file() else {}
    if timing:
        lines += ["", "Pretraining wall time per run (one torch thread, other jobs on the second core): "
                  + ", ".join(f"{k} {v / 60:.0f} min" for k, v in sorted(timing.items()) if any(k.startswith(m) for m in PRETRAINED)) + "."]
    text = "\n".join(lines) + "\n"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "results.md").write_text(text)
    return text


MECH = {"dice_ref": f"dice_ref_segmentor_s{REF_SEED}", "softdice_ref": f"softdice_ref_segmentor_s{REF_SEED}", "dice_sato": "dice_sato",
        "psnr_vessel": "psnr_vessel", "psnr_background": "psnr_background"}


def collect(args: argparse.Namespace, seeds: list[int]):
    """What is on disk: per-image scores and pooled summaries of every finished (method, seed)."""
    scores: dict[str, dict[str, dict[int, dict[str, float]]]] = {k: {} for k in ("probe_dice", *MECH)}
    pooled: dict[str, dict[str, dict[int, float]]] = {k: {} for k in ("silhouette", "calinski_harabasz", "davies_bouldin",
                                                                       "masked_vessel_share")}
    for m in ("scratch", *PRETRAINED):
        for s in seeds:
            p = args.cv_out / "family" / "probe" / f"{m}_s{s}.json"
            if p.is_file():
                scores["probe_dice"].setdefault(m, {})[s] = json.loads(p.read_text())
            fid = args.cv_out / "fidelity" / (m + (f"_s{s}" if s else ""))
            if m != "scratch" and (fid / "analysis.json").is_file():
                rows = per_image(fid)
                for k, col in MECH.items():
                    scores[k].setdefault(m, {})[s] = {i: r[col] for i, r in rows.items()}
                summ = json.loads((fid / "analysis.json").read_text())
                for k in ("silhouette", "calinski_harabasz", "davies_bouldin"):
                    pooled[k].setdefault(m, {})[s] = summ["tokens"][k]
                pooled["masked_vessel_share"].setdefault(m, {})[s] = summ["masking"]["masked_vessel_share_end"]
    return scores, pooled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cv-out", type=Path, required=True, help="the --out of dca1_cv.py (holds pretrain/)")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/xca_dca1"))
    ap.add_argument("--results", type=Path, default=HERE / "results" / "vasomim-family")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(PRETRAINED), choices=PRETRAINED)
    ap.add_argument("--pretrain-pool", type=int, default=256, help="as dca1_cv.py")
    ap.add_argument("--pretrain-epochs", type=int, default=100, help="as dca1_cv.py")
    ap.add_argument("--segmentor-epochs", type=int, default=10, help="as dca1_cv.py")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cv = argparse.Namespace(out=args.cv_out, pretrain_pool=args.pretrain_pool, pretrain_epochs=args.pretrain_epochs,
                            segmentor_epochs=args.segmentor_epochs)
    if not args.table_only:
        images = probe_images(args.data)
        # VasoMIM first: its segmentor is shared by the ablations and its pool defines the reference segmentor.
        order = ["vasomim", *(m for m in args.methods if m != "vasomim")]
        for seed in args.seeds:  # seed-major: a partial run has every method for the first seeds
            runs = {m: pretrain(m, seed, cv) for m in order}
            ref = reference_segmentor(args.cv_out, runs["vasomim"], args.segmentor_epochs)  # one file, trained once
            probe("scratch", seed, cv, images)
            for m in args.methods:
                probe(m, seed, cv, images)
                analyze(m, seed, runs[m], args, ref)
            print(table(*collect(args, args.seeds), args))
    print(table(*collect(args, args.seeds), args))


if __name__ == "__main__":
    main()
