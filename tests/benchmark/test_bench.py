"""``priormim bench``: a smoke run end to end, resuming, and the analyses on known answers."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
import torch

from priormim.benchmark import BenchConfig, get_budget, run_bench
from priormim.benchmark.analysis import (
    clustering_scores, masking_enrichment, masking_frequency_maps, patch_labels, vessel_patches,
)
from priormim.benchmark.cells import DONE, ERROR, Cell, run_cell
from priormim.benchmark.methods import select_methods
from priormim.cli import main
from priormim.errors import UserError
from priormim.masking import build_masking

SMOKE = ["bench", "--budget", "smoke", "--seeds", "0", "1", "--methods", "mae", "vasomim"]


def test_smoke_bench_writes_every_output_and_a_rerun_trains_nothing(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main([*SMOKE, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # vesselness + 2 x (segmentor, 2 pretraining, 4 fine-tuning) = 15 cells, one line each
    assert printed.count("done in") == 15 and "0 failed" in printed and "total time" in printed

    results = (out / "results.md").read_text()
    for heading in ("Vessel segmentation", "Ablation", "Patch-feature clustering", "Where the masks fall", "Compute"):
        assert heading in results
    with open(out / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    methods = {r["method"] for r in rows}
    assert methods == {"vesselness", "unet", "vit_scratch", "mae", "vasomim"}
    assert all(r["n_seeds"] == ("1" if r["method"] == "vesselness" else "2") for r in rows)
    for name in ("scores.csv", "ablation.csv", "clustering.csv", "masking.csv"):
        assert len((out / name).read_text().splitlines()) > 1, name
    for fig in ("comparison", "ablation", "masked_vessel_share", "masking_frequency", "clustering", "feature_pca",
                "predictions_synthetic"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 2000, fig
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 7 and "<table>" in report and "src=\"figures/" not in report

    markers = sorted(out.glob(f"**/{DONE}"))
    assert len(markers) == 15
    stamps = [m.stat().st_mtime_ns for m in markers]
    summary = run_bench(BenchConfig(out=out, budget=get_budget("smoke"), seeds=(0, 1), recipes=("mae", "vasomim"),
                                    estimate=False), echo=lambda line: None)
    assert summary.counts == {"ran": 0, "skipped": 15, "failed": 0, "blocked": 0}
    assert [m.stat().st_mtime_ns for m in sorted(out.glob(f"**/{DONE}"))] == stamps
    assert (out / "report.html").stat().st_size > 10_000

    # Another budget in the same folder is refused before anything is generated.
    with pytest.raises(UserError, match="budget"):
        run_bench(BenchConfig(out=out, budget=get_budget("smoke", pretrain_epochs=3), seeds=(0,), recipes=("mae",),
                              estimate=False), echo=lambda line: None)


def test_clustering_scores_know_separated_from_mixed_clusters():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(300), np.ones(100)].astype(bool)
    apart = rng.normal(size=(400, 8)) + 20.0 * labels[:, None]
    good = clustering_scores(apart, labels, max_silhouette=150, seed=0)
    assert good.silhouette > 0.85 and good.davies_bouldin < 0.3 and good.calinski_harabasz > 1000
    assert good.n_patches == 400 and good.n_vessel == 100 and good.n_silhouette == 150
    mixed = clustering_scores(rng.normal(size=(400, 8)), labels, seed=0)
    assert abs(mixed.silhouette) < 0.05 and mixed.davies_bouldin > 3
    assert clustering_scores(apart, labels, seed=0).silhouette == pytest.approx(
        clustering_scores(apart, labels, seed=0).silhouette)  # fixed seed, same subsample
    assert np.isnan(clustering_scores(apart, np.zeros(400, bool)).silhouette)  # one class only


def test_patch_labels_follow_the_ten_percent_rule():
    mask = np.zeros((16, 16), bool)
    mask[0, 0:7] = True  # 7 of 64 pixels (11 %) in patch (0, 0)
    mask[8, 8:11] = True  # 3 of 64 pixels (5 %) in patch (1, 1)
    assert patch_labels(mask, (2, 2)).tolist() == [True, False, False, False]


def test_masking_frequency_maps_concentrate_guided_masks_on_vessels():
    prior = torch.zeros(32, 32)
    prior[:, 12:16] = 1.0  # one vertical vessel: patch column 3 of 8 (patch 4)
    anatomy = build_masking("anatomy", mask_ratio=0.75, beta_start=0.0, beta_end=0.5)
    random = build_masking("random", mask_ratio=0.75)
    guided = masking_frequency_maps(anatomy, prior, patch_size=4, progress_values=(0.0, 1.0), draws=400)
    uniform = masking_frequency_maps(random, prior, patch_size=4, progress_values=(0.0, 1.0), draws=400)
    assert guided.shape == uniform.shape == (2, 8, 8)
    assert 0 <= guided.min() and guided.max() <= 1
    assert guided.mean() == pytest.approx(0.75) and uniform.mean() == pytest.approx(0.75)
    vessel = vessel_patches(prior, 4)
    assert vessel.sum() == 8 and vessel[:, 3].all()
    late = masking_enrichment(guided[1], vessel)
    assert late > 1.2 and late > masking_enrichment(uniform[1], vessel) + 0.15
    assert guided[1][vessel].mean() > guided[0][vessel].mean()  # weak-to-strong: more vessel masking late


def test_a_failing_cell_is_logged_and_blocks_only_its_dependants(tmp_path):
    bad = Cell("pretrain", "mae", tmp_path / "a")
    outcome = run_cell(bad, lambda: 1 / 0)
    assert outcome.status == "failed" and "ZeroDivisionError" in outcome.error
    assert "ZeroDivisionError" in (bad.folder / ERROR).read_text() and not bad.is_done()
    dependant = Cell("finetune", "mae", tmp_path / "b", needs=(bad.folder,))
    assert run_cell(dependant, lambda: {}).status == "blocked"
    other = Cell("finetune", "unet", tmp_path / "c")
    assert run_cell(other, lambda: {"dice": 0.5}).status == "ran"
    assert json.loads((other.folder / DONE).read_text())["dice"] == 0.5
    assert run_cell(bad, lambda: None).status == "ran" and not (bad.folder / ERROR).exists()  # a retry clears it


def test_method_selection_skips_recipes_that_are_not_installed(monkeypatch, caplog):
    from priormim.benchmark import methods

    real = methods.recipe_exists
    monkeypatch.setattr(methods, "recipe_exists", lambda name: name != "dino" and real(name))
    with caplog.at_level(logging.WARNING):
        sel = methods.select_methods(["mae", "dino", "unet"], baselines=[])
    assert sel.recipes == ("mae",) and sel.missing == ("dino",) and sel.baselines == ("unet",)
    assert "dino" in caplog.text
    with pytest.raises(UserError, match="unknown method"):
        select_methods(["not_a_method"])


def test_real_folder_is_split_and_only_its_train_and_val_images_join_the_pool(tmp_path):
    from priormim.data.synth_xca import write_synthetic_xca
    from priormim.training.finetune_seg import fixed_split

    real = tmp_path / "my_real"
    write_synthetic_xca(real, n=8, size=40, seed=7, prefix="r")
    out = tmp_path / "bench"
    summary = run_bench(BenchConfig(out=out, budget=get_budget("smoke"), seeds=(0,), recipes=("mae",),
                                    baselines=("vesselness",), real=(real,), estimate=False), echo=lambda line: None)
    assert summary.counts["failed"] == summary.counts["blocked"] == 0
    split = fixed_split([f"r_{i:05d}" for i in range(8)], seed=0)
    pooled = {p.name for p in (out / "data" / "pool" / "images").iterdir() if p.name.startswith("my_real__")}
    assert pooled == {f"my_real__{n}.png" for n in split["train"] + split["val"]}
    record = json.loads((out / "bench.json").read_text())
    assert record["pool"]["sources"] == {"synthetic": 8, "my_real": len(pooled)}
    with open(out / "scores.csv") as f:
        scored = {(r["method"], r["dataset"]) for r in csv.DictReader(f)}
    assert scored == {(m, d) for m in ("vesselness", "mae") for d in ("synthetic", "my_real")}
    metrics = json.loads((out / "finetune" / "my_real" / "mae" / "seed0" / "metrics.json").read_text())
    assert metrics["data"]["n_test"] == len(split["test"])
