"""Golden runs (issue 13): every packaged recipe's 2-epoch tiny run, and one segmentation and one
classification fine-tuning, give the numbers recorded in golden.json (abs / rel 1e-6).

A difference names the run, the step and the term. If the change of behaviour is intended,
re-record with ``python tests/golden/record.py --write`` in the commit that changes it, with
the reason in the commit message.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from priormim.config import PACKAGED_CONFIGS


def _load_record():
    # --import-mode=importlib: a test module cannot import its neighbour by name.
    name = "priormim_golden_record"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("record.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules[name]


record = _load_record()
GOLDEN = json.loads(record.GOLDEN_PATH.read_text())
RUNS = (*record.RECIPES, *record.FINETUNES)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    """One scratch folder for all golden runs (the data is written once, the MAE run is shared
    by the fine-tunings); each run seeds everything itself."""
    return record.GoldenRunner(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("name", RUNS)
def test_golden_run(name, runner):
    problems = record.compare(GOLDEN["runs"].get(name), runner.run(name), run=name)
    if problems:
        pytest.fail(record.failure_message(name, problems, GOLDEN.get("environment")), pytrace=False)


def test_golden_covers_every_packaged_recipe():
    packaged = {p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")}
    assert packaged == set(record.RECIPES) | set(record.LEFT_OUT), (
        "a packaged recipe was added or removed: add it to record.RECIPES (or LEFT_OUT, saying why) and "
        f"re-record with `{record.RECORD_COMMAND}`")
    assert set(GOLDEN["runs"]) == set(RUNS), f"golden.json does not hold every run; `{record.RECORD_COMMAND}`"


def test_golden_file_is_small_and_complete():
    assert record.GOLDEN_PATH.stat().st_size < 200_000
    for name in record.RECIPES:
        steps = GOLDEN["runs"][name]["steps"]
        assert [r["epoch"] for r in steps] == [0, 0, 1, 1], name  # 2 epochs x 2 steps, every step logged
        assert {"loss", "lr", "masked_vessel_share"} <= set(steps[0]), name
        assert not any(k.endswith("time_s") for r in steps for k in r), name
    for name in record.FINETUNES:
        assert [r["epoch"] for r in GOLDEN["runs"][name]["epochs"]] == [1, 2], name


def test_compare_names_run_step_and_term():
    """The comparison fails on a changed number, a new term and a lost term, and says where."""
    expected = GOLDEN["runs"]["vasomim"]
    assert record.compare(expected, copy.deepcopy(expected), run="vasomim") == []
    actual = copy.deepcopy(expected)
    actual["steps"][2]["loss_cons"] *= 1 + 1e-5
    actual["steps"][3]["loss_new"] = 1.0
    del actual["epochs"][0]["beta"]
    problems = record.compare(expected, actual, run="vasomim")
    assert len(problems) == 3, problems
    changed, = [p for p in problems if "loss_cons" in p]
    assert changed.startswith("vasomim, step record 2 (epoch 1, step 3): loss_cons = "), changed
    assert any("step record 3" in p and "new term 'loss_new'" in p for p in problems), problems
    assert any("epoch record 0" in p and "term 'beta' of golden.json no longer produced" in p for p in problems)
    within = copy.deepcopy(expected)
    within["steps"][2]["loss_cons"] *= 1 + 1e-7
    assert record.compare(expected, within, run="vasomim") == []
    seg = copy.deepcopy(GOLDEN["runs"]["finetune_seg"])
    seg["final"]["test"]["dice"]["mean"] += 1e-3
    problems = record.compare(GOLDEN["runs"]["finetune_seg"], seg, run="finetune_seg")
    assert problems == [f"finetune_seg, final: test.dice.mean = {seg['final']['test']['dice']['mean']!r}, golden.json "
                        f"has {GOLDEN['runs']['finetune_seg']['final']['test']['dice']['mean']!r}"]
    message = record.failure_message("vasomim", problems)
    assert record.RECORD_COMMAND in message and "reason" in message
