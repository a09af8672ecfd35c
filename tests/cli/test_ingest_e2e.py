"""End to end without data: `priormim synth cine` -> `priormim ingest` -> `priormim pretrain
--manifest` (VasoMIM: vessel priors computed for the manifest's frames)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from priormim.cli import main
from priormim.cli.synth_cine import SYNTAXES
from priormim.data.manifest import read_manifest
from priormim.data.synth_cine import DICOM_SYNTAXES
from priormim.io import read_gray

TINY = [
    "model.img_size=32",
    "model.encoder_kwargs={patch_size: 4, depth: 2, embed_dim: 32, num_heads: 2}",
    "model.decoder_embed_dim=16", "model.decoder_depth=1", "model.decoder_num_heads=2",
    "optim.batch_size=4", "optim.warmup_epochs=0", "data.num_workers=0", "train.progress=false",
    "consistency.segmentor_epochs=1", "consistency.segmentor_base_channels=4",
]


def test_synth_cine_then_ingest_then_pretrain_on_the_manifest(tmp_path: Path, capsys):
    cine = tmp_path / "cine"
    assert main(["synth", "cine", "--out", str(cine), "--n", "2", "--frames", "12", "--size", "48"]) == 0
    assert sorted(p.name for p in cine.iterdir()) == ["cine_0000.dcm", "cine_0001.dcm", "truth.csv"]
    assert f"priormim ingest {cine}" in capsys.readouterr().out

    pool = tmp_path / "pool"
    mapping = tmp_path / "sources.csv"
    assert main(["ingest", str(cine), "--out", str(pool), "--mapping", str(mapping), "--no-progress"]) == 0
    entries = read_manifest(pool / "manifest.csv")
    assert len(entries) >= 4 and {e.extra["kind"] for e in entries} == {"dicom"}
    assert all(read_gray(e.image).shape == (48, 48) for e in entries)
    # the kept frames are the opacified ones of both runs (ground truth: truth.csv's peak column)
    with open(mapping, newline="") as f:
        names = {r["source"]: Path(r["path"]).name for r in csv.DictReader(f)}
    with open(cine / "truth.csv", newline="") as f:
        peak = {(r["name"], int(r["frame"])): r["peak"] == "1" for r in csv.DictReader(f)}
    kept = [(names[e.extra["source"]], int(e.extra["frame"])) for e in entries]
    assert {name for name, _ in kept} == {"cine_0000.dcm", "cine_0001.dcm"}
    assert np.mean([peak[k] for k in kept]) >= 0.8

    run = tmp_path / "run"
    assert main(["pretrain", "--config", "vasomim", "--manifest", str(pool / "manifest.csv"), "--out", str(run),
                 "optim.epochs=1", *TINY]) == 0
    assert (run / "encoder.safetensors").is_file()
    priors = [p for p in (run / "priors" / "vessel").rglob("*") if p.is_file() and p.suffix == ".png"]
    assert len(priors) == len(entries)  # one vessel prior per manifest frame


def test_synth_cine_cli_knows_every_dicom_syntax(tmp_path: Path):
    assert set(SYNTAXES) == set(DICOM_SYNTAXES)
    assert main(["synth", "cine", "--out", str(tmp_path / "v"), "--n", "1", "--frames", "8", "--size", "32",
                 "--format", "mp4"]) == 0
    assert (tmp_path / "v" / "cine_0000.mp4").is_file()
