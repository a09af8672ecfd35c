"""Aggregating metrics.json files into mean ± std tables."""

from __future__ import annotations

import csv
import json

import pytest

from priormim.errors import UserError
from priormim.training.results import aggregate_runs, format_results_markdown, write_results_table


def write_run(path, method, seed, dice, cldice, n=3, dice_std=0.1):
    path.mkdir(parents=True)
    summary = {
        "dice": {"mean": dice, "std": dice_std, "n": n},
        "cldice": {"mean": cldice, "std": 0.2, "n": n},
        "precision": {"mean": 0.5, "std": 0.0, "n": n},
        "recall": {"mean": 0.5, "std": 0.0, "n": n},
    }
    (path / "metrics.json").write_text(json.dumps({"method": method, "seed": seed, "test": {"summary": summary}}))
    return path


def test_aggregate_groups_by_method_and_averages_over_seeds(tmp_path):
    runs = [
        write_run(tmp_path / "a0", "VasoMIM", 0, 0.80, 0.70),
        write_run(tmp_path / "b", "Sato", None, 0.65, 0.60, dice_std=0.05),
        write_run(tmp_path / "a1", "VasoMIM", 1, 0.82, 0.74),
        write_run(tmp_path / "a2", "VasoMIM", 2, 0.84, 0.72),
    ]
    rows = aggregate_runs(runs)
    assert [r.method for r in rows] == ["VasoMIM", "Sato"]  # first-seen order
    vaso, sato = rows
    assert vaso.n_runs == 3 and vaso.std_over == "seeds" and vaso.seeds == [0, 1, 2]
    assert vaso.mean["dice"] == pytest.approx(0.82)
    assert vaso.std["dice"] == pytest.approx(0.02)  # sample std of 0.80, 0.82, 0.84
    assert vaso.mean["cldice"] == pytest.approx(0.72)
    # A single run reports the spread over its test images.
    assert sato.n_runs == 1 and sato.std_over == "images" and sato.std["dice"] == pytest.approx(0.05)


def test_write_results_table_markdown_and_csv(tmp_path):
    rows = aggregate_runs([write_run(tmp_path / "r0", "U-Net", 0, 0.75, 0.7), write_run(tmp_path / "r1", "U-Net", 1, 0.77, 0.7)])
    md, csv_path = write_results_table(rows, tmp_path / "out", title="Vessels")
    text = md.read_text()
    assert text.startswith("# Vessels") and "| U-Net | 0.760 ± 0.014 | 0.700 ± 0.000 |" in text
    with open(csv_path) as f:
        records = list(csv.DictReader(f))
    assert records[0]["method"] == "U-Net" and float(records[0]["dice_mean"]) == pytest.approx(0.76)
    assert records[0]["n_runs"] == "2"
    only_dsc = format_results_markdown(rows, title="T", metrics=("dice",))
    assert "clDice" not in only_dsc and "DSC" in only_dsc


def test_missing_or_broken_metrics_is_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no metrics.json"):
        aggregate_runs([tmp_path / "empty"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.json").write_text("{not json")
    with pytest.raises(UserError, match="not a priormim metrics.json"):
        aggregate_runs([tmp_path / "bad"])
