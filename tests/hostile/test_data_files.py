"""Hostile data files: corrupt, truncated, odd-format images and masks, full disks while
writing. One row (``case_*``) per case, run by :func:`harness.run_case`."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
from harness import PRIOR, SEG, Case, ckpt_epoch, dicom_bytes, grey, png_bytes, pretrain, run_case, seg_folders, xca
from PIL import Image

from priormim.cli import main

# -- the cases -----------------------------------------------------------------------------------
def case_pretrain_corrupt_png(tmp):
    d = xca(tmp)
    (d / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return Case(pretrain(d / "images", tmp / "run"), "ok", ["1 image(s) could not be read and are skipped", "broken.png"],
                check=lambda: (tmp / "run" / "encoder.safetensors").is_file() or pytest.fail("no encoder"))


def case_pretrain_truncated_png_no_prior(tmp):
    d = xca(tmp)
    good = (d / "images" / sorted(os.listdir(d / "images"))[0]).read_bytes()
    (d / "images" / "cut.png").write_bytes(good[: len(good) // 2])
    return Case(pretrain(d / "images", tmp / "run", "data.prior=none"), "ok",
                ["1 unreadable image load(s) were skipped", "cut.png"])


def case_pretrain_truncated_jpeg(tmp):
    d = xca(tmp)
    jpg = png_bytes(grey(3), "JPEG")
    (d / "images" / "cut.jpg").write_bytes(jpg[: len(jpg) // 2])
    return Case(pretrain(d / "images", tmp / "run"), "ok", ["1 image(s) could not be read", "cut.jpg"])


def case_prior_corrupt_and_truncated_dicom(tmp):
    d = xca(tmp)
    (d / "images" / "garbage.dcm").write_bytes(b"DICM" * 50)
    raw = dicom_bytes(tmp, grey(4).astype(np.uint16) * 200)
    (d / "images" / "cut.dcm").write_bytes(raw[: len(raw) - 2000])
    (d / "images" / "fine.dcm").write_bytes(raw)
    return Case(["prior", "vessel", "--images", str(d / "images"), "--out", str(tmp / "pri"), *PRIOR], "ok",
                ["7 done", "2 failed", "cut.dcm", "garbage.dcm"])


def case_pretrain_16bit_rgb_and_no_vessel_images(tmp):
    d = xca(tmp)
    Image.fromarray((grey(5).astype(np.uint16) * 16)).save(d / "images" / "deep.png")  # 12 bits used of 16
    Image.fromarray(np.stack([grey(6)] * 3, axis=-1)).save(d / "images" / "colour.png")
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(d / "images" / "flat.png")  # nothing vessel-like

    def check():
        for name in ("deep.png", "colour.png", "flat.png"):
            assert (d / "priors" / "vessel" / name).is_file(), name

    return Case(pretrain(d / "images", tmp / "run"), "ok", [], check=check)


def case_pretrain_non_image_files(tmp):
    d = xca(tmp)
    (d / "images" / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    (d / "images" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden
    (d / "images" / "readme.png").write_text("a text file with an image name")
    return Case(pretrain(d / "images", tmp / "run"), "ok", ["1 image(s) could not be read", "readme.png"])


def case_pretrain_empty_folder(tmp):
    (tmp / "empty").mkdir()
    return Case(pretrain(tmp / "empty", tmp / "run"), "error", ["empty", "holds no images", "point to the folder"])


def case_seg_mask_wrong_size(tmp):
    train, test = seg_folders(tmp)
    mask = sorted((train / "masks").iterdir())[1]
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(mask)
    return Case(["finetune", "seg", "--train", str(train), "--test", str(test), "--out", str(tmp / "o"), *SEG],
                "error", [mask.name, "resize the mask"])


def case_seg_mask_not_binary(tmp):
    train, test = seg_folders(tmp)
    mask = sorted((test / "masks").iterdir())[0]
    Image.fromarray(grey(7)).save(mask)
    return Case(["finetune", "seg", "--train", str(train), "--test", str(test), "--out", str(tmp / "o"), *SEG],
                "error", [mask.name, "not binary", "save it with two values only"])


def case_seg_corrupt_images_in_train_and_test(tmp):
    train, test = seg_folders(tmp)
    for d, name in ((train, "bad_train"), (test, "bad_test")):
        (d / "images" / f"{name}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
        Image.fromarray(np.zeros((40, 40), np.uint8)).save(d / "masks" / f"{name}.png")

    def check():
        m = json.loads((tmp / "o" / "seed0" / "metrics.json").read_text())
        assert m["data"]["n_skipped_unreadable"] == 2 and m["data"]["n_test"] == 3

    return Case(["finetune", "seg", "--train", str(train), "--test", str(test), "--out", str(tmp / "o"), *SEG],
                "ok", ["2 unreadable image/mask pair(s) skipped", "bad_test", "bad_train"], check=check)


def case_pretrain_all_zero_prior(tmp):
    from priormim.priors.cache import compute_vessel_priors

    d = xca(tmp)
    pri = d / "priors" / "vessel"
    compute_vessel_priors(d / "images", pri, sigmas=(1, 2), border=2, progress=False)
    for p in sorted(pri.glob("*.png")):
        Image.fromarray(np.zeros((40, 40), np.uint8)).save(p)  # no vessel anywhere: guided masking falls back
    return Case(pretrain(d / "images", tmp / "run", "masking.name=anatomy", "masking.kwargs={beta_start: 1.0, beta_end: 1.0}"),
                "ok", [])


def case_pretrain_manifest_nan_gaze_prior(tmp):
    d = xca(tmp)
    rows = ["image,prior"]
    for i, img in enumerate(sorted((d / "images").iterdir())):
        heat = np.random.default_rng(i).random((40, 40)).astype(np.float32)
        if i == 2:
            heat[5, 5] = np.nan
        np.save(tmp / f"{img.stem}.npy", heat / np.nansum(heat))
        rows.append(f"{img.relative_to(tmp)},{img.stem}.npy")
    (tmp / "manifest.csv").write_text("\n".join(rows) + "\n")
    return Case(pretrain(tmp / "manifest.csv", tmp / "run", "data.prior=gaze", "masking.name=gaze", flag="--manifest"),
                "ok", ["1 unreadable image load(s) were skipped", "not a gaze prior"])


def case_gaze_fixations_outside_the_image(tmp):
    from priormim.data.synth_cxr import write_synthetic_cxr

    root = tmp / "cxr"
    write_synthetic_cxr(root, n=2, size=32, seed=0)
    fix = sorted((root / "gaze" / "main_data").glob("*/fixations.csv"))[0]
    lines = fix.read_text().splitlines()
    header = lines[0].split(",")
    xi, yi = header.index("x_position"), header.index("y_position")
    for k in (1, 2):
        cells = lines[k].split(",")
        cells[xi], cells[yi] = "99999", "-500"
        lines[k] = ",".join(cells)
    fix.write_text("\n".join(lines) + "\n")
    argv = ["prior", "gaze", "--format", "reflacx", "--root", str(root / "gaze"), "--images", str(root / "images"),
            "--out", str(tmp / "gz"), "--quiet"]
    def check():
        totals = json.loads((tmp / "gz" / "manifest.json").read_text())["totals"]
        assert totals["dropped_outside"] >= 2 and totals["cached"] == 2
        from priormim.data.manifest import read_manifest

        rows = read_manifest(tmp / "gz" / "manifest.csv")  # ready for `pretrain --manifest`
        assert len(rows) == 2 and all(r.prior.suffix == ".npy" and r.sha256 for r in rows)

    return Case(argv, "ok", ["outside the image/shown region"], check=check)


def case_manifest_missing_image_column(tmp):
    (tmp / "m.csv").write_text("path,prior\nimages/a.png,\n")
    return Case(pretrain(tmp / "m.csv", tmp / "run", flag="--manifest"), "error", ["m.csv", "no 'image' column", "header"])


def case_cls_labels_csv_missing_column(tmp):
    root = tmp / "cxr"
    (root / "images").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(grey(i, 32)).save(root / "images" / f"x{i}.png")
    (root / "labels.csv").write_text("file,label\n" + "".join(f"x{i}.png,{i % 2}\n" for i in range(4)))
    argv = ["finetune", "cls", "--encoder", "none", "--train", str(root), "--test", str(root), "--out", str(tmp / "o"),
            "--num-workers", "0", "--device", "cpu"]
    return Case(argv, "error", ["labels.csv", "'image'", "fix the header row"])


def case_config_file_unknown_key(tmp):
    d = xca(tmp)
    cfg = tmp / "recipe.yaml"
    cfg.write_text("method: mae\noptim:\n  epochs: 1\n  learning_rate: 0.1\n")
    return Case(["pretrain", "--config", str(cfg), "--data", str(d / "images"), "--out", str(tmp / "run")],
                "error", ["recipe.yaml", "optim.learning_rate", "valid:"])


def case_config_wrong_type(tmp):
    d = xca(tmp)
    return Case(pretrain(d / "images", tmp / "run", "optim.epochs=many"), "error", ["'optim.epochs' must be int", "many"])


def case_output_folder_not_writable(tmp):
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    d = xca(tmp)
    locked = tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    return Case(pretrain(d / "images", locked / "run", "data.prior=none"), "error", ["locked", "choose another --out"])


def case_disk_full_while_saving_checkpoint(tmp):
    import priormim.training.checkpoint as ck

    d = xca(tmp)
    real_save = ck.torch.save
    calls = []

    def save(obj, f, *a, **k):  # epoch 1 saves last.ckpt + checkpoint-0001; the disk is full at epoch 2
        calls.append(f)
        if len(calls) > 2:
            with open(f, "wb") as fh:
                fh.write(b"PK\x03\x04partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    run = tmp / "run"

    def check():
        assert ckpt_epoch(run / "last.ckpt") == 0  # the finished epoch is kept, loadable
        assert not list(run.glob(".*.tmp"))  # the partial write was removed
        assert main(pretrain(d / "images", run, "data.prior=none", "optim.epochs=2", "train.save_every=1") + ["--resume"]) == 0
        assert ckpt_epoch(run / "last.ckpt") == 1

    return Case(pretrain(d / "images", run, "data.prior=none", "optim.epochs=2", "train.save_every=1"), "error",
                ["last.ckpt", "No space left on device", "free disk space"], check=check,
                patches=[(ck.torch, "save", save)])


def case_disk_full_while_writing_priors(tmp):
    import priormim.io as pio

    d = xca(tmp)
    real_fsync = pio.os.fsync
    state = {"n": 0}

    def fsync(fd):
        state["n"] += 1
        if state["n"] > 4:  # the initial manifest and 3 priors fit, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    out = tmp / "pri"

    def check():
        assert not list(out.glob(".*.tmp"))
        assert len(list(out.glob("*.png"))) == 3  # the finished priors are kept
        assert main(["prior", "vessel", "--images", str(d / "images"), "--out", str(out), *PRIOR]) == 0

    return Case(["prior", "vessel", "--images", str(d / "images"), "--out", str(out), "--batch-size", "1", *PRIOR],
                "error", ["pri", "No space left on device", "free disk space"], check=check,
                patches=[(pio.os, "fsync", fsync)])


CASES = {name[len("case_"):]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input(name, tmp_path, capsys, caplog, monkeypatch):
    run_case(CASES[name], tmp_path, capsys, caplog, monkeypatch)
