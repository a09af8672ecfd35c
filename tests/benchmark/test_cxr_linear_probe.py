"""benchmarks/cxr_linear_probe.py: paired-difference table, synthetic data split and settings guard."""

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
T_975_DF2 = 4.302652729911275  # Student t, 97.5 % quantile, 2 degrees of freedom (printed tables)


def _load():
    spec = importlib.util.spec_from_file_location("cxr_linear_probe", ROOT / "benchmarks" / "cxr_linear_probe.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["cxr_linear_probe"] = mod
    spec.loader.exec_module(mod)
    return mod


def _fake_probe(folder: Path, auc: float, seconds: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"test_auc": auc, "time_s": seconds, "n_test": 600}))
    return folder


def _args(tmp_path: Path, **over) -> argparse.Namespace:
    base = dict(out=tmp_path, synth_size=32, lesion_gain=3.0, lesion_size=1.0, lesion_match="local",
                n_synth_train=3, n_synth_test=2)
    return argparse.Namespace(**{**base, **over})


def test_results_table_pairs_by_seed_with_a_t_interval(tmp_path):
    mod = _load()
    aucs = {"random init": [0.55, 0.50, 0.60], "MAE": [0.70, 0.62, 0.69], "VP-MIM": [0.71, 0.66, 0.68]}
    probes = {name: {s: _fake_probe(tmp_path / f"{name}{s}", a, 10.0 + s) for s, a in enumerate(vals)}
              for name, vals in aucs.items()}
    text = mod.results_table("synthetic", probes, {"MAE": [20.0, 22.0, None], "VP-MIM": [30.0, 30.0, 30.0]},
                             header=["pool 3 images"])
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    for (a, b) in (("VP-MIM", "MAE"), ("MAE", "random init"), ("VP-MIM", "random init")):
        d = [x - y for x, y in zip(aucs[a], aucs[b])]
        mean = sum(d) / 3
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
        half = T_975_DF2 * sd / math.sqrt(3)
        row = rows[f"{a} − {b}"]
        assert f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]" in row, row
        assert ", ".join(f"{x:+.3f}" for x in d) in row
        assert row.rstrip(" |").endswith("yes" if (mean - half > 0 or mean + half < 0) else "no")
    # MAE - random: +0.120, +0.120, +0.090 -> mean 0.110, clearly above 0; VP-MIM - MAE straddles 0.
    assert rows["MAE − random init"].rstrip(" |").endswith("yes")
    assert rows["VP-MIM − MAE"].rstrip(" |").endswith("no")
    # per-encoder rows: mean ± std and the unit times (a pretraining time not recorded is left out)
    assert "| MAE | 0.670 ± 0.044 | 3 | 0.700, 0.620, 0.690 | 21 ± 1 (n=2) | 11 ± 1 (n=3) |" in text
    assert "| random init | 0.550 ± 0.050 | 3 |" in text and "pool 3 images" in text


def test_synthetic_test_images_come_from_another_seed(tmp_path):
    mod = _load()
    assert mod.SYNTH_TRAIN_SEED != mod.SYNTH_TEST_SEED
    train, test = mod.synthetic_data(tmp_path, _args(tmp_path))
    assert len(list((train / "images").iterdir())) == 3 and len(list((test / "images").iterdir())) == 2
    setting = json.loads((tmp_path / "setting.json").read_text())
    assert (setting["train_seed"], setting["test_seed"]) == (mod.SYNTH_TRAIN_SEED, mod.SYNTH_TEST_SEED)
    # same file name, different content: the test image 0 is not the training image 0
    assert (train / "images" / "cxr_00000.png").read_bytes() != (test / "images" / "cxr_00000.png").read_bytes()
    mod.check_disjoint(train / "images", test / "images")


def test_check_disjoint_catches_a_shared_image(tmp_path):
    mod = _load()
    a, b = tmp_path / "a", tmp_path / "b"
    train, test = mod.synthetic_data(tmp_path / "d", _args(tmp_path / "d"))
    a.mkdir(), b.mkdir()
    src = train / "images" / "cxr_00001.png"
    (a / "x.png").write_bytes(src.read_bytes())
    (b / "y.png").write_bytes(src.read_bytes())
    (b / "z.png").write_bytes((test / "images" / "cxr_00000.png").read_bytes())
    with pytest.raises(SystemExit, match="1 test image"):
        mod.check_disjoint(a, b)


def test_changed_synthetic_setting_is_refused(tmp_path):
    mod = _load()
    (tmp_path / "setting.json").write_text(json.dumps(mod.synth_setting(_args(tmp_path, lesion_gain=1.0))))
    with pytest.raises(SystemExit, match="lesion_gain"):
        mod.synthetic_data(tmp_path, _args(tmp_path))
    assert not (tmp_path / "data").exists()
