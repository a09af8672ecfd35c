"""benchmarks/dca1_cv.py: the committed 5-fold split, nested label subsets, the table (fake runs)."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def load_cv():
    spec = importlib.util.spec_from_file_location("dca1_cv", ROOT / "benchmarks" / "dca1_cv.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["dca1_cv"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_folds_test_every_image_once_and_never_train_on_it():
    cv = load_cv()
    folds = cv.load_folds()
    names = [n for f in folds for n in f]
    assert [len(f) for f in folds] == [8] * 5 and len(set(names)) == 40
    for k in range(5):
        s = cv.fold_names(k)
        assert (len(s["train"]), len(s["val"]), len(s["test"])) == (26, 6, 8)
        assert not (set(s["train"]) | set(s["val"])) & set(s["test"])
        assert set(s["train"]) | set(s["val"]) | set(s["test"]) == set(names)
        subsets = [set(cv.fold_names(k, n)["train"]) for n in (2, 4, 8, 16)]
        assert all(a < b for a, b in zip(subsets, subsets[1:])) and cv.fold_names(k, 4)["val"] == s["val"]


def test_bootstrap_and_table_on_fake_runs(tmp_path):
    cv = load_cv()
    assert cv.bootstrap_ci(np.full(10, 0.2)) == (0.2, 0.2)
    lo, hi = cv.bootstrap_ci(np.random.default_rng(0).normal(0.05, 0.02, 40))
    assert lo < 0.05 < hi and hi - lo < 0.03
    folds = cv.load_folds()
    rows = lambda names, d: [{"name": Path(n).stem, "dice": d, "cldice": d, "precision": d, "recall": d} for n in names]  # noqa: E731
    (tmp_path / "sato").mkdir()
    (tmp_path / "sato" / "metrics.json").write_text(json.dumps({"test": {"per_image": rows([n for f in folds for n in f], 0.6)}}))
    for k in (0, 1):  # a partial run: two folds done
        d = tmp_path / "unet" / f"fold{k}" / "seed0"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"test": {"per_image": rows(folds[k], 0.75)}}))
    d = tmp_path / "unet" / "fold0" / "seed1"  # a second seed, one fold in: left out, not shrinking seed 0 to 8 images
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"test": {"per_image": rows(folds[0], 0.1)}}))
    for k in (0, 1):  # what `finetune seg --ensemble` writes per fold: read as its own row
        e = tmp_path / "unet" / f"fold{k}" / "ensemble"
        e.mkdir()
        (e / "metrics.json").write_text(json.dumps({"test": {"per_image": rows(folds[k], 0.8)}}))
    args = type("A", (), {"out": tmp_path})()
    text = cv.table(args)
    assert "| U-Net (strong recipe) | 16 | 1 | 0.750 ± 0.000" in text
    assert "| U-Net (strong, seed ensemble: mean probability) | 16 | 1 | 0.800 ± 0.000" in text
    assert "| 16 | +0.150 [+0.150, +0.150]" in text
    assert (tmp_path / "per_image.csv").read_text().count("\nunet,0,") == 16


def test_label_subsets_keep_the_step_budget(tmp_path):
    cv = load_cv()
    base = dict(out=tmp_path, seeds=[0], unet_epochs=None, vit_epochs=None, encoder_mae=None, encoder_vasomim=None)
    crops = {}
    for n in (None, 2, 4, 8, 16):
        args = type("A", (), {**base, "labels": n})()
        cfg = cv.method_config("unet", args, tmp_path, tmp_path, tmp_path, tmp_path / "o")
        crops[n] = cfg.crops_per_image
    # 4 windows per image with all 26; with n images ceil(26 / n) times as many, so n * crops >= 26 * 4.
    assert crops == {None: 4, 2: 52, 4: 28, 8: 16, 16: 8}
    assert all(n * c >= 26 * 4 for n, c in crops.items() if n)


def test_label_curve_pairs_fine_tuning_and_pretraining_seeds(tmp_path, monkeypatch):
    load_cv()
    spec = importlib.util.spec_from_file_location("dca1_label_curve", ROOT / "benchmarks" / "dca1_label_curve.py")
    lc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lc)
    calls = []
    monkeypatch.setattr(lc.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    args = type("A", (), {"out": tmp_path, "data": tmp_path, "sizes": [2, 26], "seeds": [0, 2], "methods": ["vit_mae"],
                          "folds": [0], "threads": 1})()
    lc.run(args)
    got = [(c[c.index("--seeds") + 1], c[c.index("--pretrain-seed") + 1], c[c.index("--labels") + 1] if "--labels" in c else None)
           for c in calls]
    assert got == [("0", "0", "2"), ("2", "2", "2"), ("0", "0", None), ("2", "2", None)]


def test_label_curve_table_and_figure_on_fake_runs(tmp_path):
    load_cv()
    spec = importlib.util.spec_from_file_location("dca1_label_curve", ROOT / "benchmarks" / "dca1_label_curve.py")
    lc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lc)
    folds = load_cv().load_folds()

    def write(method: str, n: int, seed: int, k: int, dice: float) -> None:
        d = tmp_path / lc.method_dir(method, n) / f"fold{k}" / f"seed{seed}"
        d.mkdir(parents=True, exist_ok=True)
        rows = [{"name": Path(x).stem, "dice": dice} for x in folds[k]]
        (d / "metrics.json").write_text(json.dumps({"test": {"per_image": rows}}))

    for k in (0, 1):
        for seed, dice in ((0, 0.5), (1, 0.6)):
            write("vit_scratch", 4, seed, k, dice)
            write("vit_mae", 4, seed, k, dice + 0.1)
    write("vit_mae", 26, 0, 0, 0.8)  # fold 1 missing: not counted
    for k in (0, 1):  # MAE has seed 0 only: the difference pairs it with scratch's seed 0, not the 2-seed mean
        write("vit_scratch", 8, 0, k, 0.5)
        write("vit_scratch", 8, 1, k, 0.7)
        write("vit_mae", 8, 0, k, 0.9)
    # Sato is scored on all 40; the curve compares with it on its own test images only.
    (tmp_path / "sato").mkdir()
    sato_rows = [{"name": Path(x).stem, "dice": 0.7 if k < 2 else 0.1} for k, f in enumerate(folds) for x in f]
    (tmp_path / "sato" / "metrics.json").write_text(json.dumps({"test": {"per_image": sato_rows}}))
    args = type("A", (), {"out": tmp_path, "results": tmp_path / "res", "methods": ["vit_scratch", "vit_mae"],
                          "sizes": [4, 8, 26], "folds": [0, 1]})()
    text = lc.table(args)
    assert "| 4 | 0.550 ± 0.071 (2 seeds) | 0.650 ± 0.071 (2 seeds) | +0.100 [+0.100, +0.100] (2 seeds) |" in text
    assert "| 8 | 0.600 ± 0.141 (2 seeds) | 0.900 (1 seed) | +0.400 [+0.400, +0.400] |" in text
    assert "| 26 | - | - | - |" in text
    assert "on the same test images: 0.700 DSC" in text
    assert (tmp_path / "res" / "label_curve.png").stat().st_size > 1000


def test_fidelity_table_pairs_per_image_and_seed(tmp_path):
    load_cv()
    spec = importlib.util.spec_from_file_location("dca1_fidelity", ROOT / "benchmarks" / "dca1_fidelity.py")
    fid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fid)
    outs = {}
    # VasoMIM is +0.04 over MAE with seed 0 and +0.06 with seed 1: +0.05 on average.
    for (m, seed), shift in {("mae", 0): 0.0, ("vasomim", 0): 0.04, ("mae", 1): 0.0, ("vasomim", 1): 0.06}.items():
        d = tmp_path / f"{m}_s{seed}"
        d.mkdir()
        with open(d / "per_image.csv", "w") as f:
            f.write("image," + ",".join(fid.METRICS) + "\n")
            for i in range(10):
                # image 0 undefined for the segmentor Dice of one run only: dropped from that row for every run
                ref = "nan" if (i == 0 and (m, seed) == ("mae", 1)) else f"{0.5 + 0.01 * i + shift}"
                f.write(f"im{i}.png,{ref}," + ",".join(f"{0.4 + 0.01 * i + shift}" for _ in fid.METRICS[1:]) + "\n")
        (d / "analysis.json").write_text(json.dumps({
            "tokens": {"silhouette": 0.1 + seed, "calinski_harabasz": 5.0, "davies_bouldin": 3.0},
            "masking": {"masked_vessel_share_end": 0.2 + shift, "vessel_patch_share": 0.2}}))
        outs[m, seed] = d
    outs["mae", 2] = tmp_path / "missing"  # a seed without its VasoMIM partner is not paired
    args = type("A", (), {"results": tmp_path / "res"})()
    text = fid.table(outs, args)
    assert "seeds 0, 1," in text
    assert "| dice_ref_segmentor_s99 | 0.5500 | 0.6000 | +0.0500 [+0.0500, +0.0500] (n = 9) | +0.0400 / +0.0600 |" in text
    assert "| dice_sato | 0.4450 | 0.4950 | +0.0500 [+0.0500, +0.0500] | +0.0400 / +0.0600 |" in text
    assert "| 0.6 ± 0.71 | 0.6 ± 0.71 |" in text  # silhouette: mean ± std over the two seeds
    assert "| 0.2 ± 0 | 0.25 ± 0.014 |" in text  # masked vessel share
    assert (tmp_path / "res" / "fidelity.md").read_text() == text


def test_vasomim_family_tables_pair_by_seed_and_image(tmp_path):
    load_cv()
    spec = importlib.util.spec_from_file_location("vasomim_family", ROOT / "benchmarks" / "vasomim_family.py")
    vf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vf)
    cv_out = tmp_path / "cv"
    images = [f"im{i}.png" for i in range(6)]
    # Probe Dice: scratch 0.40 + 0.01 i; MAE +0.02 (seed 0) / +0.04 (seed 1); VasoMIM +0.05 / +0.07.
    shift = {"scratch": (0.0, 0.0), "mae": (0.02, 0.04), "vasomim": (0.05, 0.07)}
    for m, per_seed in shift.items():
        for s, d in enumerate(per_seed):
            p = cv_out / "family" / "probe" / f"{m}_s{s}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps({n: 0.40 + 0.01 * i + d for i, n in enumerate(images)}))
            if m == "scratch":
                continue
            fid = cv_out / "fidelity" / (m + (f"_s{s}" if s else ""))
            fid.mkdir(parents=True)
            cols = [vf.MECH[k] for k in vf.MECH]
            with open(fid / "per_image.csv", "w") as f:
                f.write("image," + ",".join(cols) + "\n")
                for i, n in enumerate(images):
                    f.write(n + "," + ",".join(f"{0.3 + 0.01 * i + d}" for _ in cols) + "\n")
            (fid / "analysis.json").write_text(json.dumps({
                "tokens": {"silhouette": 0.01 * (s + 1), "calinski_harabasz": 5.0, "davies_bouldin": 3.0},
                "masking": {"masked_vessel_share_end": 0.25}}))
    args = type("A", (), {"cv_out": cv_out, "results": tmp_path / "res", "pretrain_pool": 256, "pretrain_epochs": 100})()
    text = vf.table(*vf.collect(args, [0, 1]), args)
    # MAE - scratch: +0.03 per image on average, seeds +0.02 / +0.04: t-CI over 2 seeds is wide (t = 12.7).
    assert "| MAE | 0.4550 ± 0.0141 (2) | +0.0300 [+0.0300, +0.0300]; seeds +0.020 / +0.040, t-CI over seeds [-0.097, +0.157] |" in text
    # VasoMIM - MAE: +0.03 with both seeds: beyond the seed spread.
    assert "| yes | yes | VasoMIM | +0.0300 [+0.0300, +0.0300]; seeds +0.030 / +0.030, t-CI over seeds [+0.030, +0.030] **beyond the seed spread** |" in text
    assert "| no | yes | consistency only | – | – | – | – |" in text  # not run: shown as missing, not dropped
    assert "0.015 ± 0.0071" in text  # silhouette pooled: mean ± std over seeds
    assert (tmp_path / "res" / "results.md").read_text() == text
