"""The main job end to end at smoke scale: every stage runs and writes what it promises."""

import json

from priormim.cli import main


def test_quick_demo_runs_every_stage(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--cxr", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["pretraining"]) == {"MAE", "VasoMIM"}
    assert summary["pretraining"]["VasoMIM"]["beta"] == 0.5
    for fig in ("masked_vessel_share.png", "masking_frequency.png", "reconstructions.png", "loss_curves.png"):
        assert (out / "figures" / fig).stat().st_size > 1000
    methods = {r["method"] for r in summary["segmentation"]["rows"]}
    assert {"U-Net (scratch)", "ViT (scratch)", "ViT (MAE)", "ViT (VasoMIM)"} <= methods
    assert len(summary["classification"]["rows"]) == 3
    assert "DSC" in (out / "summary.md").read_text()
    # a re-run reuses the finished pretraining runs
    assert main(["demo", "--quick", "--no-finetune", "--out", str(out)]) == 0
