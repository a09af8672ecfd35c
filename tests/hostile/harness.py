"""Hostile input, the harness of the tables in this folder: every case runs the CLI in-process and must end in one of two ways.

* ``error``: exit code 2, exactly one ``priormim: error:`` line on stderr naming the file (or
  key) and the fix, no traceback; or
* ``ok``: exit code 0, no traceback, the bad items skipped with a logged count.

Some cases also check that finished work survived (e.g. the checkpoint before a failed save).
Tiny data (40 px angiograms, 32 px models, one epoch), so the whole table runs in well under a
minute.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from priormim.cli import main
from priormim.data.synth_xca import write_synthetic_xca

TINY = [
    "model.img_size=32",
    "model.encoder_kwargs={patch_size: 4, depth: 2, embed_dim: 32, num_heads: 2}",
    "model.decoder_embed_dim=16", "model.decoder_depth=1", "model.decoder_num_heads=2",
    "optim.batch_size=64",  # capped at the data set size: one step that loads every image
    "optim.warmup_epochs=0", "optim.epochs=1", "data.num_workers=0", "train.progress=false", "train.device=cpu",
]
SEG = ["--model", "unet", "--unet-base", "4", "--img-size", "32", "--epochs", "1", "--batch-size", "2",
       "--device", "cpu", "--seeds", "0"]
PRIOR = ["--sigmas", "1", "2", "--border", "2", "--no-progress"]


@dataclass
class Case:
    argv: list[str]
    expect: str  # "error" or "ok"
    needles: list[str]  # must appear in the error line ("error") or in the logs/output ("ok")
    check: Callable[[], None] | None = None  # what must hold afterwards (work kept, files written)
    patches: list[tuple[object, str, object]] = field(default_factory=list)  # (target, name, value)
    protect: list[Path] = field(default_factory=list)  # the user's inputs: byte-identical afterwards
    code: int | None = None  # exit code when not the default (2 for "error", 0 for "ok")


# -- data builders -------------------------------------------------------------------------------
def xca(tmp: Path, n: int = 6) -> Path:
    root = tmp / "xca"
    write_synthetic_xca(root, n=n, size=40, seed=0)
    return root


def png_bytes(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def grey(seed: int = 0, size: int = 40) -> np.ndarray:
    return (np.random.default_rng(seed).random((size, size)) * 255).astype(np.uint8)


def dicom_bytes(tmp: Path, arr: np.ndarray) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp / "tmp.dcm"
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "XA", *arr.shape, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(arr.astype(np.uint16)).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    data = path.read_bytes()
    path.unlink()
    return data


def pretrain(data: Path, out: Path, *extra: str, flag: str = "--data") -> list[str]:
    return ["pretrain", "--config", "mae", flag, str(data), "--out", str(out), *TINY, *extra]


def seg_folders(tmp: Path) -> tuple[Path, Path]:
    root = xca(tmp, n=8)
    train, test = tmp / "train", tmp / "test"
    for d, names in ((train, sorted(os.listdir(root / "images"))[:5]), (test, sorted(os.listdir(root / "images"))[5:])):
        for sub in ("images", "masks"):
            (d / sub).mkdir(parents=True)
            for n in names:
                shutil.copy(root / sub / n, d / sub / n)
    return train, test


def ckpt_epoch(path: Path) -> int:
    import torch

    return int(torch.load(path, weights_only=True)["epoch"])



def tree_hashes(paths: list[Path]) -> dict[str, str]:
    """sha256 of every file under ``paths`` (files or folders), keyed by path: what the user gave."""
    out: dict[str, str] = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    assert out or not paths, f"nothing to protect under {paths}"
    return out


def run_case(builder: Callable[[Path], Case], tmp: Path, capsys, caplog, monkeypatch) -> None:
    """Build the case in ``tmp``, run the CLI in-process, check the outcome, then that every
    protected input is unchanged (same files, same bytes)."""
    caplog.set_level(logging.WARNING)
    case = builder(tmp)
    before = tree_hashes(case.protect)
    capsys.readouterr()
    with monkeypatch.context() as mp:
        for target, attr, value in case.patches:
            mp.setattr(target, attr, value)
        rc = main(case.argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in caplog.text, captured.err[-2000:]
    if case.expect == "error":
        lines = [ln for ln in captured.err.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("priormim: error:")]
        assert rc == (case.code or 2) and len(errors) == 1, (rc, captured.err[-2000:])
        for needle in case.needles:
            assert needle in errors[0], (needle, errors[0])
    else:
        assert rc == (case.code or 0), (rc, captured.err[-2000:])
        text = captured.out + captured.err + caplog.text
        for needle in case.needles:
            assert needle in text, (needle, text[-3000:])
    if case.check is not None:
        case.check()
    assert tree_hashes(case.protect) == before, "an input file was modified, added or removed"
