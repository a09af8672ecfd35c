"""benchmarks/gpu_check.py runs end to end on the CPU at toy size (GPU rows: not measured)."""

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_tiny_on_cpu_writes_the_table(tmp_path):
    mod = _load()
    out = tmp_path / "check.md"
    assert mod.main(["--tiny", "--device", "cpu", "--out", str(out)]) == 0
    text = out.read_text()
    for row in ("mae: images/s", "vasomim: images/s", "VasoMIM / MAE step time", "segmentor guidance pass",
                "masking draw", "vesselness", "guided masking"):
        assert row in text, row
    assert "mae compiled: images/s | not measured (no GPU)" in text
    assert "peak memory | not measured" in text


def test_per_sample_reference_masks_exactly_n_mask_and_prefers_heavy_patches():
    mod = _load()
    p = torch.zeros(3, 16)
    p[:, :4] = 1.0
    torch.manual_seed(0)
    m = mod.per_sample_guided_mask(p, 0.75, 1.0)
    assert m.sum(1).tolist() == [12, 12, 12] and bool(m[:, :4].all())
