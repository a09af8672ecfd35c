"""Hostile output paths: nothing the user gave is modified, a finished run is refused unless
--resume or --overwrite, a path under a file, a read-only mount or a full disk is one line.
One row (``case_*``) per case, run by :func:`harness.run_case`; ``protect`` lists the inputs
whose bytes must be unchanged afterwards."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from harness import SEG, TINY, Case, pretrain, run_case, seg_folders, xca
from PIL import Image

from priormim.cli import main


def _finished_pretrain(tmp: Path, *extra: str) -> tuple[Path, Path]:
    d = xca(tmp)
    run = tmp / "run"
    assert main(pretrain(d / "images", run, "data.prior=none", *extra)) == 0
    return d, run


def _tmpfs(folder: Path, size: str, *opts: str) -> Path:
    """A real small file system at ``folder`` (root only); skip the case where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    o = ",".join((f"size={size}", *opts))
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", o, "tmpfs", str(folder)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode})")
    return folder


@pytest.fixture(autouse=True)
def _unmount(tmp_path):
    yield
    for p in sorted(tmp_path.rglob("*"), reverse=True):
        if p.is_dir() and p.is_mount():
            subprocess.run(["umount", "-l", str(p)], capture_output=True)


# -- data loss -----------------------------------------------------------------------------------
def case_predict_out_is_the_labelled_folder(tmp):
    train, _ = seg_folders(tmp)
    return Case(["predict", "--model", str(tmp / "model"), "--images", str(train), "--out", str(train)],
                "error", ["--out", "inside --images", "choose another --out"], protect=[train])


def case_predict_out_holds_ground_truth_masks(tmp):
    train, _ = seg_folders(tmp)
    return Case(["predict", "--model", str(tmp / "model"), "--images", str(train / "images"), "--out", str(train)],
                "error", ["masks/", "did not write", "--overwrite"], protect=[train])


def case_predict_same_stem_twice(tmp):
    train, _ = seg_folders(tmp)
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(train / "images" / "xca_00000.jpg")
    return Case(["predict", "--model", str(tmp / "model"), "--images", str(train / "images"), "--out", str(tmp / "p")],
                "error", ["xca_00000.jpg", "xca_00000.png", "share the name", "rename"], protect=[train])


def case_pretrain_priors_folder_of_hand_made_masks(tmp):
    d = xca(tmp)
    return Case(pretrain(d / "images", tmp / "run", "data.priors=" + str(d / "masks")), "error",
                ["masks", "no prior manifest", "--manifest"], protect=[d])


def case_pretrain_rerun_into_finished_run(tmp):
    d, run = _finished_pretrain(tmp)
    return Case(pretrain(d / "images", run, "data.prior=none"), "error",
                ["already holds a run", "--resume", "--overwrite"], protect=[d, run])


def case_pretrain_overwrite_replaces_the_whole_run(tmp):
    d, run = _finished_pretrain(tmp, "optim.epochs=2", "train.save_every=1")
    assert (run / "checkpoint-0002.ckpt").is_file()

    def check():
        assert sorted(p.name for p in run.glob("checkpoint-*.ckpt")) == ["checkpoint-0001.ckpt"]  # no stale -0002
        epochs = [json.loads(ln)["epoch"] for ln in (run / "log.jsonl").read_text().splitlines()]
        assert set(epochs) == {0}  # the old run's records are gone, not appended to

    return Case(pretrain(d / "images", run, "data.prior=none") + ["--overwrite"], "ok", [], check=check, protect=[d])


def case_export_out_is_its_checkpoint(tmp):
    ckpt = tmp / "last.ckpt"
    ckpt.write_bytes(b"PK\x03\x04 a checkpoint")
    return Case(["export", "--run", str(ckpt), "--out", str(ckpt)], "error", ["same path as --run"], protect=[ckpt])


def case_export_into_its_run_folder(tmp):
    _, run = _finished_pretrain(tmp)
    return Case(["export", "--run", str(run), "--out", str(run / "again.safetensors")], "ok", ["exported"],
                check=lambda: (run / "again.safetensors").is_file() or pytest.fail("no encoder"))


def case_export_out_exists(tmp):
    _, run = _finished_pretrain(tmp)
    return Case(["export", "--run", str(run), "--out", str(run / "encoder.safetensors")], "error",
                ["already exists", "--overwrite"], protect=[run])


def case_export_not_a_checkpoint(tmp):
    f = tmp / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, f)
    return Case(["export", "--run", str(f), "--out", str(tmp / "enc.safetensors")], "error",
                ["weights.pt", "not a priormim pretraining checkpoint"], protect=[f])


def case_export_out_under_a_file(tmp):
    _, run = _finished_pretrain(tmp)
    (tmp / "afile").write_text("x")
    return Case(["export", "--run", str(run), "--out", str(tmp / "afile" / "enc.safetensors")], "error",
                ["afile is a file", "choose another --out"], protect=[run])


def case_export_read_only_mount(tmp):
    _, run = _finished_pretrain(tmp)
    ro = _tmpfs(tmp / "ro", "1M", "ro")
    return Case(["export", "--run", str(run), "--out", str(ro / "enc.safetensors")], "error",
                ["enc.safetensors", "Read-only file system", "choose another output folder"], protect=[run])


def case_train_segmentor_out_under_a_file(tmp):
    d = xca(tmp)
    (tmp / "afile").write_text("x")
    return Case(["train-segmentor", "--images", str(d / "images"), "--out", str(tmp / "afile" / "seg.safetensors"),
                 "--epochs", "1", "--img-size", "32"], "error", ["afile is a file"], protect=[d / "images"])


def case_finetune_cls_out_under_a_file(tmp):
    (tmp / "data").mkdir()
    (tmp / "afile").write_text("x")
    return Case(["finetune", "cls", "--encoder", "none", "--train", str(tmp / "data"), "--test", str(tmp / "data"),
                 "--out", str(tmp / "afile" / "o"), "--device", "cpu"], "error", ["afile", "choose another --out"])


def case_prior_gaze_out_under_a_file(tmp):
    from priormim.data.synth_cxr import write_synthetic_cxr

    root = tmp / "cxr"
    write_synthetic_cxr(root, n=2, size=32, seed=0)
    (tmp / "afile").write_text("x")
    return Case(["prior", "gaze", "--format", "reflacx", "--root", str(root / "gaze"), "--images", str(root / "images"),
                 "--out", str(tmp / "afile" / "gz"), "--quiet"], "error", ["afile"], protect=[root])


def case_finetune_seg_rerun_with_other_options(tmp):
    train, test = seg_folders(tmp)
    base = ["finetune", "seg", "--train", str(train), "--test", str(test), "--out", str(tmp / "o"), *SEG]
    assert main(base) == 0
    before = (tmp / "o" / "seed0" / "metrics.json").read_bytes()

    def check():
        assert (tmp / "o" / "seed0" / "metrics.json").read_bytes() == before

    argv = [a if a != "4" else "8" for a in base]  # --unet-base 8
    return Case(argv, "error", ["seed 0", "--unet-base-channels", "--overwrite"], check=check, protect=[train, test])


def case_finetune_seg_overwrite_retrains(tmp):
    train, test = seg_folders(tmp)
    base = ["finetune", "seg", "--train", str(train), "--test", str(test), "--out", str(tmp / "o"), *SEG]
    assert main(base) == 0

    def check():
        cfg = json.loads((tmp / "o" / "seed0" / "metrics.json").read_text())["config"]
        assert cfg["unet_base_channels"] == 8

    argv = [a if a != "4" else "8" for a in base] + ["--overwrite"]
    return Case(argv, "ok", [], check=check, protect=[train, test])


# -- full disk -----------------------------------------------------------------------------------
def case_pretrain_real_full_disk(tmp):
    d = xca(tmp)
    small = _tmpfs(tmp / "small", "160k")  # the config and logs fit, a checkpoint does not
    return Case(pretrain(d / "images", small / "run", "data.prior=none"), "error",
                ["No space left on device", "free disk space"], protect=[d])


def case_pretrain_torch_save_runtime_error(tmp):
    import priormim.training.checkpoint as ck

    d = xca(tmp)

    def save(obj, f, *a, **k):  # what torch.save raises on a full disk
        Path(f).write_bytes(b"PK\x03\x04partial")
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    def check():
        assert not list((tmp / "run").glob(".*.tmp"))

    return Case(pretrain(d / "images", tmp / "run", "data.prior=none"), "error",
                ["last.ckpt", "file write failed", "free disk space", "--resume"], check=check,
                patches=[(ck.torch, "save", save)], protect=[d])


CASES = {name[len("case_"):]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_output(name, tmp_path, capsys, caplog, monkeypatch):
    run_case(CASES[name], tmp_path, capsys, caplog, monkeypatch)


# -- permissions ---------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_get_the_users_umask(umask, tmp_path):
    """Encoders, checkpoints, results, priors and config: 0o666 less the umask, never mkstemp's 0600."""
    import os

    d = xca(tmp_path)
    old = os.umask(umask)
    try:
        assert main(pretrain(d / "images", tmp_path / "run", *TINY)) == 0
        assert main(["prior", "vessel", "--images", str(d / "images"), "--out", str(tmp_path / "pri"),
                     "--sigmas", "1", "--border", "2", "--no-progress"]) == 0
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    files = [tmp_path / "run" / n for n in ("last.ckpt", "encoder.safetensors", "history.json", "config.yaml")]
    files += [tmp_path / "pri" / "manifest.json", next((tmp_path / "pri").glob("*.png"))]
    for f in files:
        assert f.stat().st_mode & 0o777 == want, (f.name, oct(f.stat().st_mode & 0o777), oct(want))
