"""`priormim ingest` on synthetic cine runs with known peak frames."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from priormim.cli import main
from priormim.data.manifest import read_manifest
from priormim.data.synth_cine import synthesize_cine, write_synthetic_cine
from priormim.errors import UserError
from priormim.ingest.dedup import dhash, near_duplicates
from priormim.ingest.run import ingest, merge_ingest_shards
from priormim.ingest.select import contrast_curve, parse_frame_rule, select_frames

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_peak_selection_matches_ground_truth():
    tp = fp = fn = 0
    for seed in range(4):
        cine = synthesize_cine(size=96, frames=32, seed=100 + seed)
        scores = contrast_curve(cine.frames.astype(np.float32) / 255)
        got = set(select_frames(scores, parse_frame_rule("peak")).tolist())
        truth = set(np.flatnonzero(cine.peak).tolist())
        tp, fp, fn = tp + len(got & truth), fp + len(got - truth), fn + len(truth - got)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)


def test_frame_rules_and_dedup():
    scores = np.array([0, 0, 1, 5, 9, 10, 8, 3, 1, 0], dtype=float)
    assert select_frames(scores, parse_frame_rule("peak")).tolist() == [3, 4, 5, 6]
    assert select_frames(scores, parse_frame_rule("peak:2")).tolist() == [3, 5]
    assert select_frames(scores, parse_frame_rule("every:4")).tolist() == [0, 4, 8]
    assert select_frames(np.ones(5), parse_frame_rule("peak")).tolist() == [0, 1, 2, 3, 4]  # no bolus: all
    with pytest.raises(UserError, match="--frames"):
        parse_frame_rule("best")
    frames = synthesize_cine(size=64, frames=10, seed=0).frames.astype(np.float32) / 255
    repeated = np.repeat(frames[4:8], 2, axis=0)  # a frame-rate conversion doubled every frame
    dup = near_duplicates(dhash(repeated), max_distance=2)
    assert dup.tolist() == [False, True] * 4
    assert not near_duplicates(dhash(repeated), max_distance=-1).any()


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("archive")
    write_synthetic_cine(root / "a", n=3, size=64, frames=24, formats=("dcm",), seed=1)
    write_synthetic_cine(root / "b", n=2, size=64, frames=24, formats=("mp4",), seed=2)
    (root / "b" / "notes.txt").write_text("not an image")
    (root / "b" / "broken.dcm").write_bytes(b"\0" * 200)
    return root


def test_ingest_writes_deidentified_pool_and_manifest(archive: Path, tmp_path: Path):
    out = tmp_path / "pool"
    s = ingest([archive], out, workers=1, progress=False)
    assert s.n_sources == 6 and s.n_failed == 1 and s.n_rows > 0 and s.manifest == out / "manifest.csv"
    entries = read_manifest(s.manifest)
    assert len(entries) == s.n_rows == s.n_selected - s.n_duplicates
    e = entries[0]
    assert e.image.is_file() and e.image.stat().st_size == e.bytes
    assert {"source", "frame", "contrast", "phash", "n_frames", "kind"} <= set(e.extra)
    assert {x.extra["kind"] for x in entries} == {"dicom", "video"}
    # names are content hashes; nothing in the pool names the patient or the source files
    for f in out.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert b"SYNTHETIC" not in data and b"cine_0" not in data and b"SYN0" not in data, f
    assert not list(tmp_path.glob("*.csv"))  # no mapping unless asked
    s2 = ingest([archive], out, progress=False, mapping=tmp_path / "map.csv")
    assert s2.n_done == 0 and s2.n_resumed == 6
    assert "cine_0000.dcm" in (tmp_path / "map.csv").read_text()


def test_shards_merge_to_the_unsharded_manifest(archive: Path, tmp_path: Path):
    whole = ingest([archive], tmp_path / "whole", progress=False)
    out = tmp_path / "sharded"
    first = ingest([archive], out, shard=(0, 2), progress=False)
    assert not first.merged
    with pytest.raises(UserError, match="1 of 2 shards are missing"):
        merge_ingest_shards(out)
    second = ingest([archive], out, shard=(1, 2), progress=False)
    assert second.merged
    assert (out / "manifest.csv").read_bytes() == whole.manifest.read_bytes()


def test_kill_9_then_rerun_gives_the_same_manifest(archive: Path, tmp_path: Path):
    reference = ingest([archive], tmp_path / "ref", progress=False).manifest.read_bytes()
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "priormim", "ingest", str(archive), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / "ingest.journal.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.is_file() and journal.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.csv").exists(), "the run finished before it was killed"
    with open(journal, "ab") as f:
        f.write(b'{"key": "torn')  # a write cut by the kill
    assert main(["ingest", str(archive), "--out", str(out), "--no-progress"]) == 0
    assert (out / "manifest.csv").read_bytes() == reference


def test_cli_exit_code_when_nothing_is_readable(tmp_path: Path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.dcm").write_bytes(b"garbage")
    assert main(["ingest", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    assert "skipped" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2


def test_written_pngs_hold_the_source_frames_exactly(tmp_path: Path):
    from PIL import Image

    from priormim.data.synth_cine import write_cine_dicom

    cine = synthesize_cine(size=64, frames=10, seed=5)
    write_cine_dicom(tmp_path / "in" / "run.dcm", cine.frames, syntax="jpeg-lossless")
    s = ingest([tmp_path / "in"], tmp_path / "pool", frames="all", dedup_bits=-1, progress=False)
    entries = read_manifest(s.manifest)
    assert sorted(int(e.extra["frame"]) for e in entries) == list(range(10))
    for e in entries:
        with Image.open(e.image) as im:
            assert im.mode == "L" and not im.info  # grey, no metadata chunks
            np.testing.assert_array_equal(np.asarray(im), cine.frames[int(e.extra["frame"])])
