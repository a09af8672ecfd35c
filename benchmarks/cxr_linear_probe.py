"""Linear-probe AUC of VP-MIM vs MAE at equal budget, over seeds (issues 4 and 16).

Two parts, each: pretrain MAE and VP-MIM once per seed with the same model, data, epochs and
batch, then a linear probe (frozen features, BatchNorm without affine + linear layer) per
encoder, plus a random-init encoder as the floor. Per encoder the mean +/- std over seeds of
the test AUC; per pair (VP-MIM - MAE, MAE - random, VP-MIM - random) the mean of the per-seed
differences with a Student-t 95 % interval over seeds (seed k of one row is paired with seed k
of the other: same probe seed, same split).

* ``synthetic``: `priormim synth cxr` images with simulated REFLACX-format gaze; VP-MIM uses the
  gaze (masking + recalibrated weighting + pyramid heads). Lesion vs none. The setting is the
  one ``benchmarks/cxr_gaze_bench.py calibrate`` found usable (96 px, lesion gain 3, lesion
  size 1, lesion match "local": supervised CNN 0.955 AUC, random-init probe 0.55-0.59). The
  pretraining pool is the probe's training set without its labels (generation seed 0); the
  test images come from another generation seed (1000), and the script checks that no test
  image is byte-identical to a training image.
* ``kermany``: pretraining on real unlabelled chest X-rays (``cxr_mhh`` + the Kermany images
  that are not in the probe's test split), which have no gaze: VP-MIM runs with random masking
  and the gaze weighting off, so it differs from MAE only by the pyramid reconstruction. The
  probe: NORMAL vs PNEUMONIA on ``cxr_kermany`` (fixed 20 % stratified test split, 10 % val).

    python benchmarks/cxr_linear_probe.py --out /tmp/cxr_probe --data-root ../shared/data
    python benchmarks/cxr_linear_probe.py --out /tmp/cxrprobe --parts synthetic

Nothing from ``--data-root`` is copied: the pretraining pool is a folder of symlinks under
``--out``. Re-running skips finished pretraining runs and probe seeds (an interrupted
pretraining resumes from its last epoch); ``<out>/synthetic/setting.json`` refuses a re-run
whose synthetic data settings differ from the ones already written there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

from priormim.config import load_config
from priormim.data.synth_cxr import LESION_MATCHES, write_synthetic_cxr
from priormim.evaluation.mechanism import paired_ci
from priormim.io import list_images
from priormim.metrics import mean_std
from priormim.training.finetune_cls import ClsFinetuneConfig, finetune_classification, patient_groups, read_split, split_indices
from priormim.training.pretrain import pretrain

ENCODER = {"patch_size": 8, "depth": 4, "embed_dim": 96, "num_heads": 3}
# Generation seeds of the synthetic probe-train (= pretraining pool) and test images: images
# depend only on (seed, index), so different seeds give disjoint sets.
SYNTH_TRAIN_SEED, SYNTH_TEST_SEED = 0, 1000
METHODS = ("random init", "MAE", "VP-MIM")
PAIRS = (("VP-MIM", "MAE"), ("MAE", "random init"), ("VP-MIM", "random init"))


def pretrain_once(recipe: str, images: Path, run_dir: Path, *, img_size: int, epochs: int, seed: int,
                  gaze: bool) -> tuple[Path, float | None]:
    """Pretrain ``recipe`` on ``images`` into ``run_dir`` unless its encoder exists.

    Returns the encoder path and the wall seconds of the call that finished it (read back from
    ``run_dir/timing.json``; None if it was not recorded).
    """
    enc, timing = run_dir / "encoder.safetensors", run_dir / "timing.json"
    if enc.exists():
        return enc, json.loads(timing.read_text())["seconds"] if timing.is_file() else None
    model = {"img_size": img_size, "encoder_kwargs": ENCODER, "decoder_embed_dim": 64, "decoder_depth": 3, "decoder_num_heads": 4}
    data = {"images": str(images), "num_workers": 0, "hflip": False, "crop_scale": [0.35, 1.0]}
    over: dict = {"model": model, "data": data,
                  "optim": {"epochs": epochs, "warmup_epochs": max(1, epochs // 10), "batch_size": 32, "blr": 1.5e-3},
                  "train": {"seed": seed, "save_every": 10_000, "progress": False}}
    if recipe == "vpmim":
        model.update(pyramid_scales=[1, 2, 4], pyramid_weights=[1.0, 0.5, 0.25])
        if not gaze:  # real images without eye tracking: the configurable no-gaze variant
            data["prior"] = "none"
            over["masking"] = {"name": "random", "kwargs": {}}
            over["gaze_weighting"] = {"enabled": False}
    else:
        data["prior"] = "none"
    resumed = (run_dir / "last.ckpt").exists()
    t = time.perf_counter()
    pretrain(load_config(recipe, over), run_dir, resume=resumed)
    seconds = time.perf_counter() - t
    # A resumed run's time covers only its last stretch; kept, but flagged.
    timing.write_text(json.dumps({"seconds": seconds, "epochs": epochs, "resumed": resumed}))
    print(f"  pretrained {recipe} seed {seed} in {seconds:.0f}s", file=sys.stderr, flush=True)
    return enc, (None if resumed else seconds)


def probe(name: str, encoder: Path | None, train: Path, test: Path, out: Path, *, img_size: int, seed: int, epochs: int) -> Path:
    res = finetune_classification(ClsFinetuneConfig(
        train=train, test=test, out=out, encoder=encoder, mode="linear", seeds=[seed], img_size=img_size,
        epochs=epochs, model_kwargs=None if encoder is not None else dict(ENCODER), num_workers=0,
        label=f"linear probe ({name})", progress=False,
    ))
    return res.out_dir / f"seed{seed}"


def kermany_pool(data_root: Path, out: Path) -> Path:
    """Symlinks to cxr_mhh + the Kermany images outside the probe's test split."""
    pool = out / "pool" / "images"
    if pool.is_dir() and any(pool.iterdir()):
        return pool
    pool.mkdir(parents=True, exist_ok=True)
    kermany = read_split(data_root / "cxr_kermany", fmt="folders")
    # Same hold-out as finetune_classification with test == train (fraction 0.2, split_seed 0).
    keep, _ = split_indices(kermany.labels, fraction=0.2, seed=0, groups=patient_groups(kermany.paths))
    sources = [kermany.paths[i] for i in keep] + list_images(data_root / "cxr_mhh" / "png")
    for i, src in enumerate(sources):
        (pool / f"{i:05d}_{src.name}").symlink_to(src.resolve())
    return pool


def synth_setting(args: argparse.Namespace) -> dict:
    """The synthetic data settings a finished ``<out>/synthetic`` was written with."""
    return {"size": args.synth_size, "lesion_gain": args.lesion_gain, "lesion_size": args.lesion_size,
            "lesion_match": args.lesion_match, "n_train": args.n_synth_train, "n_test": args.n_synth_test,
            "train_seed": SYNTH_TRAIN_SEED, "test_seed": SYNTH_TEST_SEED}


def check_disjoint(train_images: Path, test_images: Path) -> None:
    """Raise SystemExit if any test image is byte-identical to a training image."""
    def digests(folder: Path) -> set[str]:
        return {hashlib.sha1(p.read_bytes()).hexdigest() for p in list_images(folder)}

    shared = digests(train_images) & digests(test_images)
    if shared:
        raise SystemExit(f"{len(shared)} test image(s) in {test_images} also occur in {train_images}")


def synthetic_data(out: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """Write (or reuse) the synthetic probe-train / test folders; returns ``(train, test)``."""
    assert SYNTH_TRAIN_SEED != SYNTH_TEST_SEED, "the test images must come from another generation seed"
    setting, record = synth_setting(args), out / "setting.json"
    if record.is_file():
        old = json.loads(record.read_text())
        if old != setting:
            diff = sorted(k for k in set(old) | set(setting) if old.get(k) != setting.get(k))
            raise SystemExit(f"{record} was written with other synthetic settings ({', '.join(diff)}); use another --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(setting, indent=1))
    train, test = out / "data" / "train", out / "data" / "test"
    kw = {"size": args.synth_size, "lesion_gain": args.lesion_gain, "lesion_size": args.lesion_size,
          "lesion_match": args.lesion_match}
    for folder, n, s in ((train, args.n_synth_train, SYNTH_TRAIN_SEED), (test, args.n_synth_test, SYNTH_TEST_SEED)):
        if not (folder / "labels.csv").exists():  # written last: marks a finished folder
            write_synthetic_cxr(folder, n=n, seed=s, **kw)
    check_disjoint(train / "images", test / "images")
    return train, test


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _fmt_s(values: list[float]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    m, s = mean_std(vals)
    return f"{m:.0f} ± {s:.0f} (n={len(vals)})" if len(vals) > 1 else f"{m:.0f}"


def results_table(part: str, probes: dict[str, dict[int, Path]], pretrain_s: dict[str, list[float | None]], *,
                  header: list[str]) -> str:
    """Markdown: per encoder the test AUC (mean ± std over seeds, per seed) and unit times; per
    pair of :data:`PAIRS` the per-seed paired differences with a Student-t 95 % CI over seeds.

    Args:
        probes: encoder name -> {seed: probe run folder holding ``metrics.json``}.
        pretrain_s: encoder name -> pretraining wall seconds per seed (None: not recorded).
        header: lines put under the title (pool size, epochs, ...).
    """
    auc = {name: {s: float(_metrics(d)["test_auc"]) for s, d in runs.items()} for name, runs in probes.items()}
    probe_s = {name: [float(_metrics(d)["time_s"]) for d in runs.values()] for name, runs in probes.items()}
    n_test = {int(_metrics(d)["n_test"]) for runs in probes.values() for d in runs.values()}
    lines = [f"### {part}", "", *header, f"Probe test images: {', '.join(map(str, sorted(n_test)))}.", "",
             "| encoder | test AUC (mean ± std) | seeds | per seed | pretraining s / seed | probe s / seed |",
             "|---|---|---|---|---|---|"]
    for name, per_seed in auc.items():
        m, s = mean_std(list(per_seed.values()))
        pre = _fmt_s(pretrain_s.get(name, [])) if name in pretrain_s else "-"
        lines.append(f"| {name} | {m:.3f} ± {s:.3f} | {len(per_seed)} | "
                     f"{', '.join(f'{v:.3f}' for _, v in sorted(per_seed.items()))} | {pre} | {_fmt_s(probe_s[name])} |")
    lines += ["", "| difference (paired by seed) | mean [95 % CI, Student t over seeds] | per seed | CI excludes 0 |",
              "|---|---|---|---|"]
    for a, b in PAIRS:
        if a not in auc or b not in auc:
            continue
        seeds = sorted(set(auc[a]) & set(auc[b]))
        diffs = [auc[a][s] - auc[b][s] for s in seeds]
        ci = paired_ci(diffs)
        lines.append(f"| {a} − {b} | {ci.text()} | {', '.join(f'{d:+.3f}' for d in diffs)} | "
                     f"{'yes' if ci.excludes_zero else 'no'} |")
    return "\n".join(lines)


def run_part(part: str, args: argparse.Namespace) -> str:
    out = args.out / part
    t0 = time.perf_counter()
    if part == "synthetic":
        train, test = synthetic_data(out, args)
        pool, img_size, gaze = train / "images", args.synth_size, True
        what = (f"Synthetic CXR, {args.synth_size} px (model input {img_size} px), lesion gain {args.lesion_gain}, "
                f"lesion size {args.lesion_size}, lesion match {args.lesion_match}; lesion vs none. Pretraining pool = "
                f"the probe's {args.n_synth_train} training images without labels (generation seed {SYNTH_TRAIN_SEED}); "
                f"test images from generation seed {SYNTH_TEST_SEED}.")
    else:
        train = test = args.data_root / "cxr_kermany"
        pool, img_size, gaze = kermany_pool(args.data_root, out), 96, False
        what = "cxr_kermany NORMAL vs PNEUMONIA; pretraining pool = cxr_mhh + the Kermany non-test images, 96 px."
    n_pool = len(list_images(pool))
    probes: dict[str, dict[int, Path]] = {name: {} for name in METHODS}
    pretrain_s: dict[str, list[float | None]] = {"MAE": [], "VP-MIM": []}
    for seed in args.seeds:
        encoders: dict[str, Path | None] = {"random init": None}
        for name, recipe in (("MAE", "mae"), ("VP-MIM", "vpmim")):
            encoders[name], secs = pretrain_once(recipe, pool, out / "pretrain" / f"{recipe}_seed{seed}",
                                                 img_size=img_size, epochs=args.epochs, seed=seed, gaze=gaze)
            pretrain_s[name].append(secs)
        for name, enc in encoders.items():
            slug = name.lower().replace(" ", "_").replace("-", "")
            probes[name][seed] = probe(name, enc, train, test, out / "probe" / f"{slug}_seed{seed}",
                                       img_size=img_size, seed=seed, epochs=args.probe_epochs)
    header = [what, "",
              f"Pretraining pool {n_pool} images, {args.epochs} epochs, batch 32, blr 1.5e-3 (both methods); "
              f"linear probe {args.probe_epochs} epochs. Encoder: ViT patch {ENCODER['patch_size']}, depth "
              f"{ENCODER['depth']}, width {ENCODER['embed_dim']}. Seeds {args.seeds} (pretraining and probe).",
              f"Wall time of this call for the part: {time.perf_counter() - t0:.0f} s (finished units are read back, "
              "not re-run; the per-unit times below are those of the calls that ran them)."]
    return results_table(part, probes, pretrain_s, header=header)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    ap.add_argument("--parts", nargs="+", default=["synthetic", "kermany"], choices=["synthetic", "kermany"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=40, help="pretraining epochs (both methods)")
    ap.add_argument("--probe-epochs", type=int, default=60)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: min(2, available))")
    g = ap.add_argument_group("synthetic part (defaults: the calibrated setting, benchmarks/results/cxr-gaze)")
    g.add_argument("--n-synth-train", type=int, default=2616, help="probe-train images = the pretraining pool (default: REFLACX's 2,616 images, as in the paper)")
    g.add_argument("--n-synth-test", type=int, default=600)
    g.add_argument("--synth-size", type=int, default=96, help="image side in px (also the model input)")
    g.add_argument("--lesion-gain", type=float, default=3.0)
    g.add_argument("--lesion-size", type=float, default=1.0)
    g.add_argument("--lesion-match", default="local", choices=list(LESION_MATCHES))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads or max(1, min(2, torch.get_num_threads())))
    t = time.perf_counter()
    tables = [run_part(p, args) for p in args.parts]
    text = "\n\n".join(tables) + f"\n\nTotal wall time {time.perf_counter() - t:.0f} s.\n"
    (args.out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
