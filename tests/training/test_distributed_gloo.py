"""Two CPU processes (gloo) against one: same global batch, same losses; rank 0 alone writes.

What makes the comparison exact rather than statistical (see priormim.training.distributed):

* the shuffle depends on (seed, epoch) only and global batch b is the same slice of it for any
  world size; rank r takes the r-th half of it, so 2 x 2 images per step = 1 x 4 images;
* each sample's crop/flip and (``train.deterministic``) its mask come from a generator seeded
  by (seed, epoch, sample index), not from a per-rank or per-worker stream, so a sample gets
  the same crop and mask whichever rank, batch position or loader worker handles it (the two
  ranks even use one loader worker each, the single process none);
* DDP averages the two equal-size half-batch gradients = the gradient of the mean loss over
  the global batch. What remains is float summation order: tolerance 1e-4.

The ranks are started as torchrun would start them (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT in the environment, ``python -m priormim pretrain``), through a small
bootstrap that records, with a Python audit hook, every file rank 1 opens for writing,
creates, renames or deletes in the run and prior folders: there must be none.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from priormim.config import load_config
from priormim.training.pretrain import pretrain

BOOT = r"""
import json, os, sys
watch = [os.path.realpath(p) for p in json.loads(os.environ["PRIORMIM_TEST_WATCH"])]
report = os.environ["PRIORMIM_TEST_REPORT"]
seen = []
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

def inside(p):
    try:
        p = os.path.realpath(os.fsdecode(p))
    except TypeError:
        return None
    return p if any(p == w or p.startswith(w + os.sep) for w in watch) else None

def hook(event, args):
    if event == "open":
        path, mode, flags = args
        if isinstance(path, (str, bytes, os.PathLike)) and isinstance(flags, int) and flags & WRITE:
            p = inside(path)
            if p: seen.append(("open-for-write", p))
    elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.rename", "os.truncate", "os.utime", "os.chmod"):
        for a in args[:2] if event == "os.rename" else args[:1]:
            p = inside(a) if isinstance(a, (str, bytes, os.PathLike)) else None
            if p: seen.append((event, p))

sys.addaudithook(hook)
import torch
torch.set_num_threads(1)
from priormim.cli import main
rc = main(sys.argv[1:])
with open(report, "w") as f:
    json.dump({"rc": rc, "writes": seen}, f)
sys.exit(rc)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_and_only_rank0_writes(tiny_xca, tiny_overrides, tmp_path):
    common = [
        *tiny_overrides,
        "optim.epochs=2",
        "optim.blr=1e-2",  # large enough that a wrong batch or mask shows in the second epoch
        "train.deterministic=true",
        "train.device=cpu",
        "train.log_every=1",
        "data.prior=vessel",
        "masking.name=anatomy",
        "masking.kwargs={beta_start: 0.25, beta_end: 0.75}",
    ]
    data = tiny_xca / "images"
    # One process, global batch 4 (computes the vessel priors the ranks then reuse).
    single = pretrain(load_config("mae", [*common, f"data.images={data}", "optim.batch_size=4"]), tmp_path / "one")

    run = tmp_path / "two"
    watch = [str(run), str(tiny_xca / "priors")]
    argv = ["pretrain", "--config", "mae", "--data", str(data), "--out", str(run), *common,
            "optim.batch_size=2", "data.num_workers=1"]
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1",
                   PRIORMIM_TEST_WATCH=json.dumps(watch), PRIORMIM_TEST_REPORT=str(tmp_path / f"rank{rank}.json"))
        procs.append(subprocess.Popen([sys.executable, "-c", BOOT, *argv], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=150))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, (out, err)) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{err[-3000:]}"
        assert "Traceback" not in err, err[-3000:]

    # Same per-epoch numbers as the single process (rank 0's history, reduced over ranks).
    two = json.loads((run / "history.json").read_text())
    assert [h["step"] for h in two] == [h["step"] for h in single.history] == [2, 4]
    for h2, h1 in zip(two, single.history):
        for key in ("loss", "loss_rec", "masked_vessel_share"):
            assert h2[key] == pytest.approx(h1[key], rel=1e-4, abs=1e-6), (h2["epoch"], key)
        assert h2["lr"] == pytest.approx(h1["lr"], rel=1e-9)
        assert h2["beta"] == h1["beta"]
    # One log line per global step (rank 0 only). Per-step values are rank 0's half batch
    # (train_one_epoch reduces only the epoch means), so only the epoch records are compared.
    lines = lambda d: (d / "log.jsonl").read_text().splitlines()  # noqa: E731
    assert len(lines(run)) == len(lines(tmp_path / "one"))

    # Rank 0 wrote the same files as the single process; rank 1 wrote nothing at all.
    names = lambda d: sorted(p.name for p in d.iterdir())  # noqa: E731
    assert names(run) == names(tmp_path / "one")
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r1["rc"] == 0 and r1["writes"] == []
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    assert any(p.endswith("last.ckpt") for _, p in r0["writes"])  # the hook does see writes
    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2  # each rank's RNG streams, for --resume
