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
    args = type("A", (), {"out": tmp_path})()
    text = cv.table(args)
    assert "| U-Net (strong recipe) | 16 | 1 | 0.750 ± 0.000" in text
    assert "| 16 | +0.150 [+0.150, +0.150]" in text
    assert (tmp_path / "per_image.csv").read_text().count("\nunet,0,") == 16
