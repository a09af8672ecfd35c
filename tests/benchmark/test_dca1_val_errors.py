"""benchmarks/dca1_val_errors.py: each kind of wrong pixel on hand-drawn masks."""

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def load():
    spec = importlib.util.spec_from_file_location("dca1_val_errors", ROOT / "benchmarks" / "dca1_val_errors.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_error_kinds_on_drawn_masks():
    ve = load()
    gt = np.zeros((64, 64), bool)
    gt[30:34, 12:50] = True  # an annotated vessel, 4 px wide
    gt[34:60, 40:42] = True  # an annotated branch the prediction misses
    pred = np.zeros_like(gt)
    pred[29:35, 12:50] = True  # the vessel drawn 6 px wide: a 1-px rim of false positives each side
    pred[0:40, 2:10] = True  # a thick tube entering from the border, far from any vessel: catheter signature
    pred[50:52, 20:30] = True  # a thin false branch inside the field: detached, not a catheter
    k = ve.error_kinds(pred, gt)
    assert k["rim false positive"].sum() == 2 * 38 - 2  # the rim's row 34 meets the branch at columns 40-41
    assert k["catheter signature"].sum() == 40 * 8
    assert k["detached false positive"].sum() == 40 * 8 + 2 * 10
    # the branch below the prediction (rows 35-59): rows 35-36 are within 2 px of it (rim), 37-59 are lost
    assert k["rim miss"].sum() == 2 * 2 and k["detached miss"].sum() == 23 * 2
    kinds = sum(k[x].astype(int) for x in ("rim false positive", "rim miss", "detached false positive", "detached miss"))
    assert (kinds == (pred ^ gt)).all()  # rim and detached split the wrong pixels exactly once
    fixed = ve.corrected(pred, gt, "catheter signature", k["catheter signature"])
    assert ve.dice(fixed, gt) > ve.dice(pred, gt) and not fixed[0:40, 2:10].any()
    assert ve.dice(ve.corrected(pred, gt, "detached miss", k["detached miss"]), gt) > ve.dice(pred, gt)
