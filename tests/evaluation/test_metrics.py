import math

import numpy as np
import pytest
import torch

from priormim import metrics as M  # the code's home: monkeypatching reaches it there
from priormim.evaluation.metrics import (
    SegmentationMeter,
    binary_auc,
    cldice_score,
    dice_score,
    mean_std,
    multiclass_auc,
    multilabel_auc,
    precision_recall,
    segmentation_metrics,
)


def _mask(shape, *slices):
    m = np.zeros(shape, dtype=bool)
    for s in slices:
        m[s] = True
    return m


# pred: rows 1-2, cols 1-3 (6 px); target: rows 2-3, cols 1-3 (6 px); overlap row 2 (3 px)
PRED_A = _mask((5, 5), np.s_[1:3, 1:4])
TARGET_A = _mask((5, 5), np.s_[2:4, 1:4])
EMPTY = np.zeros((5, 5), dtype=bool)


def test_dice_precision_recall_hand_computed():
    assert dice_score(PRED_A, TARGET_A) == pytest.approx([2 * 3 / 12])
    p, r = precision_recall(PRED_A, TARGET_A)
    assert p == pytest.approx([0.5]) and r == pytest.approx([0.5])
    # Asymmetric: pred is a subset (3 px) of target (6 px)
    sub = _mask((5, 5), np.s_[2, 1:4])
    p, r = precision_recall(sub, TARGET_A)
    assert p == pytest.approx([1.0]) and r == pytest.approx([0.5])
    assert dice_score(sub, TARGET_A) == pytest.approx([6 / 9])


def test_empty_cases_batched():
    pred = np.stack([EMPTY, EMPTY, PRED_A, PRED_A])
    target = np.stack([EMPTY, TARGET_A, EMPTY, TARGET_A])
    out = segmentation_metrics(pred, target)
    assert out["dice"] == pytest.approx([1.0, 0.0, 0.0, 0.5])
    assert out["cldice"][:3] == pytest.approx([1.0, 0.0, 0.0])
    assert out["precision"] == pytest.approx([1.0, 0.0, 0.0, 0.5])  # empty pred, non-empty target -> 0
    assert out["recall"] == pytest.approx([1.0, 0.0, 0.0, 0.5])  # empty target, non-empty pred -> 0
    assert all(v.dtype == np.float64 and v.shape == (4,) for v in out.values())


def test_cldice_thin_line_with_gap():
    # target: 1-px line, 9 px; pred: same line with a 3-px gap (6 px). Skeletons of 1-px
    # lines are the lines themselves: Tprec = 6/6, Tsens = 6/9 -> clDice = 2*(2/3)/(5/3) = 0.8
    target = _mask((7, 11), np.s_[3, 1:10])
    pred = _mask((7, 11), np.s_[3, 1:4], np.s_[3, 7:10])
    assert cldice_score(pred, target) == pytest.approx([0.8])
    assert dice_score(pred, target) == pytest.approx([12 / 15])


def test_cldice_differs_from_dice_thin_gap_vs_thick_blob():
    # target: thick vessel, rows 2-4 x cols 1-9 (27 px); pred: its centre line with a gap (6 px).
    # Dice = 2*6/(6+27) = 4/11. pred lies inside target -> Tprec = 1.
    # skimage skeleton of the 3x9 bar: row 3 cols 1-7 plus (2, 8) -> 8 px, of which
    # cols 1,2,3,7 of row 3 lie in pred -> Tsens = 4/8; clDice = 2*0.5/1.5 = 2/3.
    target = _mask((7, 11), np.s_[2:5, 1:10])
    pred = _mask((7, 11), np.s_[3, 1:4], np.s_[3, 7:10])
    assert dice_score(pred, target) == pytest.approx([4 / 11])
    assert cldice_score(pred, target) == pytest.approx([2 / 3])
    # Swapping arguments swaps Tprec and Tsens; the harmonic mean is unchanged.
    assert cldice_score(target, pred) == pytest.approx([2 / 3])


def test_channel_dim_threshold_and_tensor_input():
    # [B,1,H,W] float probabilities: > 0.5 is foreground, exactly 0.5 is background
    probs = torch.zeros(1, 1, 5, 5)
    probs[0, 0, 1:3, 1:4] = 0.51
    probs[0, 0, 4, 4] = 0.5
    target = torch.from_numpy(TARGET_A)[None, None]
    assert dice_score(probs, target) == pytest.approx([0.5])
    assert dice_score(probs.to(torch.bfloat16), target) == pytest.approx([0.5])  # AMP output
    # 0/255 uint8 masks work too
    assert dice_score(PRED_A.astype(np.uint8) * 255, TARGET_A) == pytest.approx([0.5])


def test_multichannel_and_shape_mismatch_rejected():
    with pytest.raises(ValueError, match="single-channel"):
        dice_score(np.zeros((2, 3, 5, 5), bool), np.zeros((2, 3, 5, 5), bool))
    with pytest.raises(ValueError, match="differ"):
        dice_score(np.zeros((2, 5, 5), bool), np.zeros((3, 5, 5), bool))


def test_cldice_guard_empty_skeleton(monkeypatch):
    monkeypatch.setattr(M, "skeletonize", lambda m: np.zeros_like(m))
    # With the guard the masks themselves are used: Tprec = 3/6, Tsens = 3/6 -> 0.5
    assert cldice_score(PRED_A, TARGET_A) == pytest.approx([0.5])


def test_binary_auc_known_case_and_degenerate():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    labels = torch.tensor([0, 0, 1, 1])
    assert binary_auc(scores, labels) == pytest.approx(0.75)
    assert binary_auc(scores.numpy() * 10 - 3, labels.numpy()) == pytest.approx(0.75)  # logits, numpy
    assert math.isnan(binary_auc(scores, torch.zeros(4, dtype=torch.long)))


def test_multilabel_auc_with_degenerate_label():
    scores = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.1, 0.9], [0.35, 0.8, 0.5], [0.8, 0.9, 0.1]])
    labels = torch.tensor([[0, 0, 0], [0, 0, 0], [1, 1, 0], [1, 1, 0]])
    mean, per = multilabel_auc(scores, labels)
    assert per[0] == pytest.approx(0.75) and per[1] == pytest.approx(1.0)
    assert math.isnan(per[2])
    assert mean == pytest.approx(0.875)


def test_multiclass_auc_macro_ovr():
    # class 0: both positives above both negatives -> 1
    # class 1: positive 0.3 beats 0.2, 0.1, loses to 0.4 -> 2/3
    # class 2: positive 0.1 ties 0.1, loses to 0.3, 0.5 -> 0.5/3
    scores = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.1, 0.3], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    labels = torch.tensor([0, 0, 1, 2])
    assert multiclass_auc(scores, labels) == pytest.approx((1 + 2 / 3 + 1 / 6) / 3)


def test_meter_two_batches_equals_one_shot():
    pred = np.stack([PRED_A, EMPTY, PRED_A])
    target = np.stack([TARGET_A, EMPTY, PRED_A])
    one = SegmentationMeter()
    one.update(pred, target, names=["a", "b", "c"])
    two = SegmentationMeter()
    two.update(torch.from_numpy(pred[:2]), torch.from_numpy(target[:2]), names=["a", "b"])
    two.update(pred[2:], target[2:], names=["c"])
    assert two.per_image() == one.per_image()
    assert [r["name"] for r in one.per_image()] == ["a", "b", "c"]
    s = two.summary()
    assert s["dice"]["n"] == 3
    assert s["dice"]["mean"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert s["dice"]["std"] == pytest.approx(np.std([0.5, 1, 1], ddof=1))
    assert set(s) == {"dice", "cldice", "precision", "recall"}
    two.reset()
    assert two.per_image() == []
    two.update(PRED_A, TARGET_A)  # default names, counted from 0
    assert two.per_image()[0]["name"] == "0"
    with pytest.raises(ValueError):
        two.update(pred, target, names=["x"])


def test_meter_gathers_and_drops_padded_duplicates(monkeypatch):
    dist = torch.distributed
    other_rank = [{"name": "c", "dice": 0.0, "cldice": 0.0, "precision": 0.0, "recall": 0.0},
                  {"name": "a", "dice": 0.0, "cldice": 0.0, "precision": 0.0, "recall": 0.0}]

    def fake_gather(out, obj):
        out[0], out[1] = obj, other_rank

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "all_gather_object", fake_gather)
    meter = SegmentationMeter()
    meter.update(np.stack([PRED_A, EMPTY]), np.stack([TARGET_A, EMPTY]), names=["a", "b"])
    rows = meter.per_image()
    assert [r["name"] for r in rows] == ["a", "b", "c"]  # rank 1's padded "a" dropped
    assert rows[0]["dice"] == pytest.approx(0.5)
    assert meter.summary()["dice"]["n"] == 3


def test_mean_std():
    assert mean_std([1, 2, 3, 4]) == pytest.approx((2.5, math.sqrt(5 / 3)))
    assert mean_std([0.7]) == (0.7, 0.0)
    assert mean_std(np.array([2.0, 4.0])) == pytest.approx((3.0, math.sqrt(2)))
    m, s = mean_std([])
    assert math.isnan(m) and math.isnan(s)
