"""The VasoMIM family at a CPU budget that ranks: scratch, MAE, guidance only, consistency only, VasoMIM.

    python benchmarks/vasomim_family.py --data ../shared/data/xca_dca1 --out /tmp/family \
        --results benchmarks/results/vasomim-family [--seeds 0 1 2]

Resumable: every unit (pool, segmentors, one pretraining run per (method, seed), its probe and
its ``priormim analyze``) leaves a file when finished and is skipped on a re-run; an interrupted
pretraining run continues from its ``last.ckpt``. Re-run the same command to continue; the
tables are rebuilt from whatever is on disk each time (``--tables-only`` rebuilds them alone).

Protocol (the constants below):

* DCA1 split once (``fixed_split``, seed 0): 24 train / 6 val / 10 test angiograms.
* Pool: DCA1 train + val (30) + ``N_SYNTH`` synthetic angiograms with the rich anatomy
  (ribs, diaphragm edge, motion blur; ``synthesize_angiogram(rich=True)``), 300 px. The test
  images are never in the pool.
* Model: ViT patch 8, depth 4, width 96 at ``IMG`` px (144 tokens), MAE decoder 64 wide, 1 deep;
  ``EPOCHS`` epochs, batch 32, blr ``BLR``, the recipes' own masking and losses (VasoMIM: official
  code defaults). One consistency segmentor (UNeXt-S, official recipe, ``SEG_EPOCHS`` epochs on the
  pool's vessel priors, seed 0), shared by the three methods that use it and by every seed, so
  they differ only in how they use it (seeds vary pretraining, not the segmentor).
* Downstream: the frozen-encoder linear probe (:mod:`priormim.evaluation.probe_seg`) on the 24
  train angiograms, threshold on the 6 val, Dice on the 10 test at 300 px. "Scratch" is the same
  architecture at its seeded random init.
* Mechanism: ``priormim analyze`` on the 10 test angiograms with their masks, one fixed-mask file
  for every run, and a reference segmentor trained like the others but with its own seed (so no
  method was trained against it), plus Sato.
* Paired differences over seeds with Student-t 95 % intervals (:func:`paired_ci`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

IMG, PATCH, EPOCHS, BATCH, BLR, N_SYNTH, SEG_EPOCHS = 96, 8, 30, 32, 1.5e-3, 60, 4
CONSISTENCY_SEED = 0  # one consistency segmentor, shared by every seed and method (UNeXt-S costs ~1 min per epoch here)
ENCODER_KW = "{patch_size: 8, depth: 4, embed_dim: 96, num_heads: 3}"
METHODS = ("mae", "vasomim", "vasomim_guidance_only", "vasomim_consistency_only")
LABELS = {"scratch": "scratch (random init)", "mae": "MAE", "vasomim_guidance_only": "guidance only",
          "vasomim_consistency_only": "consistency only", "vasomim": "VasoMIM"}
REF_SEED = 99


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def build_pool(data: Path, work: Path) -> dict[str, list[str]]:
    from priormim.data.synth_xca import synthesize_angiogram
    from priormim.io import list_images, write_png
    from priormim.training.finetune_seg import fixed_split

    split_file = work / "split.json"
    if split_file.is_file():
        return json.loads(split_file.read_text())
    split = fixed_split([p.name for p in list_images(data / "images")], seed=0)
    pool = work / "pool" / "images"
    pool.mkdir(parents=True, exist_ok=True)
    for name in split["train"] + split["val"]:
        dst = pool / f"dca1__{name}"
        if not dst.exists():
            dst.symlink_to((data / "images" / name).resolve())
    for i in range(N_SYNTH):
        s = synthesize_angiogram(size=300, seed=np.random.default_rng([16, i]), rich=True)
        write_png(pool / f"synth__{i:04d}.png", s.image)
    split_file.write_text(json.dumps(split))
    return split


def overrides(method: str, seed: int, work: Path) -> list[str]:
    o = [f"model.img_size={IMG}", f"model.encoder_kwargs={ENCODER_KW}", "model.decoder_embed_dim=64",
         "model.decoder_depth=1", "model.decoder_num_heads=4", f"optim.epochs={EPOCHS}", f"optim.warmup_epochs={min(5, EPOCHS - 1)}",
         f"optim.batch_size={BATCH}", f"optim.blr={BLR}", "data.num_workers=0", "train.progress=false",
         f"train.seed={seed}", f"data.images={work / 'pool' / 'images'}", "train.save_every=1000"]
    if method != "mae":
        o.append(f"consistency.segmentor={work / 'segmentors' / f'seg_s{CONSISTENCY_SEED}.safetensors'}")
    return o


def train_segmentor(work: Path, seed: int) -> Path:
    import subprocess
    import sys

    path = work / "segmentors" / f"seg_s{seed}.safetensors"
    if not path.is_file():
        log(f"segmentor seed {seed}")
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "priormim", "train-segmentor", "--images", str(work / "pool" / "images"),
                        "--out", str(path), "--epochs", str(SEG_EPOCHS), "--img-size", str(IMG), "--seed", str(seed)],
                       check=True)
    return path


def pretrain_run(method: str, seed: int, work: Path) -> Path:
    from priormim.config import load_config
    from priormim.training.pretrain import pretrain

    run = work / "runs" / f"{method}_s{seed}"
    if (run / "encoder.safetensors").is_file():
        return run
    t0 = time.time()
    log(f"pretrain {method} seed {seed}")
    pretrain(load_config(method, overrides(method, seed, work)), run, resume=(run / "last.ckpt").is_file())
    (run / "wall_seconds.txt").write_text(f"{time.time() - t0:.0f}\n")
    return run


def _probe_data(data: Path, split: dict):
    from priormim.evaluation.visualize import _resize
    from priormim.io import read_gray, read_mask

    out = {}
    for part in ("train", "val", "test"):
        imgs = [read_gray(data / "images" / n) for n in split[part]]
        masks = [read_mask(data / "masks" / n) for n in split[part]]
        out[part] = (_resize(imgs, IMG).clamp(0, 1), masks, (_resize([m.astype(np.float32) for m in masks], IMG) >= 0.5).float())
    return out


def probe(method: str, seed: int, work: Path, pdata) -> dict:
    from priormim.config import load_config
    from priormim.evaluation.probe_seg import frozen_tokens, linear_probe_segmentation
    from priormim.models.mae import MaskedAutoencoder
    from priormim.training.pretrain import build_model

    out = work / "probe" / f"{method}_s{seed}.json"
    if out.is_file():
        return json.loads(out.read_text())
    if method == "scratch":
        cfg = load_config("mae", overrides("mae", seed, work))
        torch.manual_seed(seed)
        model = build_model(cfg)
        mean, std = float(pdata["pool_mean"]), float(pdata["pool_std"])
    else:
        model = MaskedAutoencoder.from_run(work / "runs" / f"{method}_s{seed}")
        mean, std = float(model.run_config.data.norm_mean), float(model.run_config.data.norm_std)
    tok = {k: frozen_tokens(model.encoder, pdata[k][0], mean=mean, std=std) for k in ("train", "val", "test")}
    res = linear_probe_segmentation(tok["train"], pdata["train"][2], tok["val"], pdata["val"][1], tok["test"],
                                    pdata["test"][1], patch=PATCH, seed=seed).to_dict()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res))
    return res


def analyze(method: str, seed: int, work: Path, data: Path, split: dict) -> dict | None:
    from priormim.evaluation.analyze import analyze_run

    out = work / "analyze" / f"{method}_s{seed}"
    if (out / "analysis.json").is_file():
        summary = json.loads((out / "analysis.json").read_text())
        if f"softdice_seg_s{REF_SEED}" in summary["fidelity"]:  # else written before soft Dice existed: redo
            return summary
    test = work / "test_images"
    if not test.is_dir():
        test.mkdir(parents=True)
        for n in split["test"]:
            (test / n).symlink_to((data / "images" / n).resolve())
    res = analyze_run(work / "runs" / f"{method}_s{seed}", test, out, masks=data / "masks",
                      segmentors=[work / "segmentors" / f"seg_s{REF_SEED}.safetensors"],
                      fixed_masks_path=work / "fixed_masks.npz", draws=64)
    return res.summary


def tables(work: Path, results: Path, seeds: list[int]) -> None:
    from priormim.evaluation.mechanism import paired_ci

    def load(kind: str, m: str, s: int):
        p = work / kind / (f"{m}_s{s}.json" if kind == "probe" else f"{m}_s{s}/analysis.json")
        return json.loads(p.read_text()) if p.is_file() else None

    methods = ("scratch",) + METHODS
    rows, per_seed = [], {}
    metric_keys = [("dice_ref", lambda a: a["fidelity"].get(f"dice_seg_s{REF_SEED}")),
                   ("softdice_ref", lambda a: a["fidelity"].get(f"softdice_seg_s{REF_SEED}")), ("dice_sato", lambda a: a["fidelity"]["dice_sato"]),
                   ("psnr_vessel", lambda a: a["fidelity"]["psnr_vessel"]), ("psnr_background", lambda a: a["fidelity"]["psnr_background"]),
                   ("silhouette", lambda a: a["tokens"]["silhouette"]), ("calinski_harabasz", lambda a: a["tokens"]["calinski_harabasz"]),
                   ("davies_bouldin", lambda a: a["tokens"]["davies_bouldin"]),
                   ("masked_vessel_share", lambda a: a["masking"]["masked_vessel_share_end"])]
    for m in methods:
        for s in seeds:
            p = load("probe", m, s)
            a = load("analyze", m, s) if m != "scratch" else None
            if p is None:
                continue
            rec = {"method": m, "seed": s, "probe_dice": p["test_dice"], "probe_val_dice": p["val_dice"]}
            if a is not None:
                rec.update({k: f(a) for k, f in metric_keys})
            wall = work / "runs" / f"{m}_s{s}" / "wall_seconds.txt"
            rec["pretrain_wall_s"] = float(wall.read_text()) if wall.is_file() else None
            rows.append(rec)
            per_seed[(m, s)] = rec
    results.mkdir(parents=True, exist_ok=True)
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(results / "per_seed.csv", "w") as f:
        f.write(",".join(keys) + "\n")
        for r in rows:
            f.write(",".join("" if r.get(k) is None else (f"{r[k]:.5g}" if isinstance(r[k], float) else str(r[k])) for k in keys) + "\n")

    def agg(m, k):
        v = [per_seed[(m, s)].get(k) for s in seeds if (m, s) in per_seed and per_seed[(m, s)].get(k) is not None]
        if not v:
            return "–"
        return f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f} (n={len(v)})" if len(v) > 1 else f"{v[0]:.3f} (n=1)"

    def diff(a, b, k):
        d = [per_seed[(a, s)][k] - per_seed[(b, s)][k] for s in seeds
             if (a, s) in per_seed and (b, s) in per_seed and per_seed[(a, s)].get(k) is not None
             and per_seed[(b, s)].get(k) is not None]
        return paired_ci(d).text(3) if d else "–"

    lines = ["# VasoMIM family at the cpu budget (benchmarks/vasomim_family.py)", "",
             f"Budget: {IMG} px, ViT patch {PATCH} / depth 4 / width 96, {EPOCHS} epochs, batch {BATCH}, blr {BLR}; "
             f"pool = DCA1 train+val (30) + {N_SYNTH} rich synthetic angiograms; seeds {seeds}. "
             "Mean ± sample std over seeds (n = seeds finished); differences paired by seed, 95 % Student-t CI.", "",
             "## Downstream: frozen linear probe, DCA1 test Dice (10 angiograms, 300 px)", "",
             "| method | probe Dice | − scratch | − MAE |", "|---|---|---|---|"]
    for m in methods:
        lines.append(f"| {LABELS[m]} | {agg(m, 'probe_dice')} | {diff(m, 'scratch', 'probe_dice') if m != 'scratch' else ''} | "
                     f"{diff(m, 'mae', 'probe_dice') if m not in ('scratch', 'mae') else ''} |")
    lines += ["", "## Mechanism (`priormim analyze`, DCA1 test, fixed masks shared by every run)", "",
              "dice_ref: Dice inside hidden pixels between the reference segmentor's maps of reconstruction and original; "
              "dice_sato: the same with Sato; PSNR in dB inside hidden vessel / background pixels (ground-truth vessels); "
              "tokens: vessel vs background patch tokens of the unmasked image; masked vessel share: the run's own masking "
              "at the end of training (uniform random = the vessel-patch share).", "",
              "| method | " + " | ".join(k for k, _ in metric_keys) + " |", "|---" * (len(metric_keys) + 1) + "|"]
    for m in METHODS:
        lines.append(f"| {LABELS[m]} | " + " | ".join(agg(m, k) for k, _ in metric_keys) + " |")
    lines += ["", "## Ablation (guidance x consistency), paired differences vs MAE", "",
              "| guidance | consistency | method | probe Dice − MAE | softdice_ref − MAE | dice_sato − MAE | silhouette − MAE |",
              "|---|---|---|---|---|---|---|"]
    for g, c, m in (("no", "no", "mae"), ("yes", "no", "vasomim_guidance_only"), ("no", "yes", "vasomim_consistency_only"),
                    ("yes", "yes", "vasomim")):
        cells = [diff(m, "mae", k) if m != "mae" else agg(m, k) for k in ("probe_dice", "softdice_ref", "dice_sato", "silhouette")]
        lines.append(f"| {g} | {c} | {LABELS[m]} | " + " | ".join(cells) + " |")
    walls = [r["pretrain_wall_s"] for r in rows if r.get("pretrain_wall_s")]
    lines += ["", f"Pretraining wall time per run: " + ", ".join(
        f"{LABELS[r['method']]} s{r['seed']} {r['pretrain_wall_s']:.0f} s" for r in rows if r.get("pretrain_wall_s")),
        f"(total {sum(walls) / 60:.0f} min on the shared 2-core CPU)." if walls else ""]
    (results / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="work folder (runs, caches)")
    ap.add_argument("--results", type=Path, required=True, help="where results.md / per_seed.csv go")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--tables-only", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="1 epoch, 4 synthetic images: checks that it runs")
    args = ap.parse_args()
    if args.smoke:
        global EPOCHS, N_SYNTH, SEG_EPOCHS
        EPOCHS, N_SYNTH, SEG_EPOCHS = 1, 4, 1
    torch.set_num_threads(args.threads)
    work = args.out
    work.mkdir(parents=True, exist_ok=True)
    if not args.tables_only:
        split = build_pool(args.data, work)
        pdata = _probe_data(args.data, split)
        pool_x = pdata["train"][0]
        pdata["pool_mean"], pdata["pool_std"] = float(pool_x.mean()), float(pool_x.std())
        train_segmentor(work, REF_SEED)
        for seed in args.seeds:  # seed-major: a partial run still has every method for the first seeds
            probe("scratch", seed, work, pdata)
            if any(m != "mae" for m in args.methods):
                train_segmentor(work, CONSISTENCY_SEED)
            for m in args.methods:
                pretrain_run(m, seed, work)
                probe(m, seed, work, pdata)
                analyze(m, seed, work, args.data, split)
                tables(work, args.results, args.seeds)
    tables(work, args.results, args.seeds)


if __name__ == "__main__":
    main()
