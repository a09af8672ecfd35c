"""Figure content: shared grey scales, distinct stage labels, legends, the random-masking line."""

import numpy as np
import pytest
import torch

import priormim.benchmark.figures as BF
import priormim.evaluation.figures as F
from priormim.benchmark.analysis import random_masking_reference


@pytest.fixture
def closed(monkeypatch):
    """Figures the module closes after saving, kept for inspection."""
    figs = []
    monkeypatch.setattr(F.plt, "close", figs.append)
    return figs


def test_stage_epochs_are_distinct_and_match_the_schedule():
    assert F.stage_epochs(2) == [(1, 0.0), (2, 1.0)]  # used to be labelled "epoch 1, epoch 1, epoch 2"
    assert F.stage_epochs(1) == [(1, 1.0)]
    assert F.stage_epochs(11) == [(1, 0.0), (6, 0.5), (11, 1.0)]
    for n in range(1, 30):
        epochs = [e for e, _ in F.stage_epochs(n)]
        assert epochs == sorted(set(epochs)) and epochs[-1] == n


def test_masking_frequency_figure_refuses_repeated_stage_labels(tmp_path):
    with pytest.raises(ValueError, match="stage labels must differ"):
        F.masking_frequency_figure(np.zeros((8, 8)), np.zeros((8, 8)), {"m": np.zeros((2, 2, 2))},
                                   ["epoch 1", "epoch 1"], tmp_path / "f.png")


def test_reconstruction_grid_shares_the_originals_grey_scale(tmp_path, closed):
    image = torch.linspace(0.2, 0.6, 64).reshape(1, 8, 8)
    recon = torch.full((1, 8, 8), 0.3)  # flat: auto-scaling would stretch it to full contrast
    mask = torch.zeros(1, 8, 8)
    mask[:, :4] = 1
    rows = {"a": {"image": image, "prior": (image > 0.4).float(), "mask_image": mask, "recon": recon}}
    F.reconstruction_grid(rows, tmp_path / "r.png")
    fig = closed[0]
    grey_axes = [ax for ax in fig.axes if ax.images][:4]
    clims = [ax.images[-1].get_clim() for ax in grey_axes]
    assert clims[0] == clims[2] == clims[3] == pytest.approx((0.2, 0.6))
    assert clims[1] == (0, 1)  # the prior keeps its own 0/1 scale
    assert fig.legends and "hidden patch" in fig.legends[0].texts[0].get_text()
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_vessel_share_curve_draws_the_random_masking_reference(tmp_path, closed):
    hist = {"mae": [{"epoch": 0, "masked_vessel_share": 0.30, "vessel_patch_share": 0.28},
                    {"epoch": 1, "masked_vessel_share": 0.31, "vessel_patch_share": 0.32}],
            "vasomim": [{"epoch": 0, "masked_vessel_share": 0.5, "vessel_patch_share": 0.30}]}
    assert F.random_masking_reference(hist) == pytest.approx(0.30)
    F.vessel_share_curve(hist, tmp_path / "v.png")
    ax = closed[0].axes[0]
    flat = [line for line in ax.lines if len(set(line.get_ydata())) == 1 and "random" in line.get_label()]
    assert flat and flat[0].get_ydata()[0] == pytest.approx(0.30)
    assert F.random_masking_reference({"mae": [{"epoch": 0, "masked_vessel_share": 0.3}]}) is None


def test_benchmark_reference_and_outcome_legend(tmp_path, monkeypatch):
    figs = []
    monkeypatch.setattr(BF.plt, "close", figs.append)
    per_seed = {"mae": [[{"vessel_patch_share": 0.2}], [{"vessel_patch_share": 0.4}]]}
    assert random_masking_reference(per_seed) == pytest.approx(0.3)
    BF.vessel_share_figure({"mae": np.array([[0.3, 0.35]])}, tmp_path / "v.png", random_reference=0.3)
    assert any("random masking" in line.get_label() for line in figs[0].axes[0].lines)
    gt = np.zeros((8, 8), bool)
    gt[2:5] = True
    rows = [{"image": np.zeros((8, 8)), "mask": gt, "preds": {"mae": np.roll(gt, 1, axis=0)}, "dice": {"mae": 0.67}}]
    BF.predictions_figure(rows, ["mae"], tmp_path / "p.png")
    labels = [t.get_text() for t in figs[1].legends[0].texts]
    assert labels == list(BF.OUTCOME_COLORS)
