"""``bench.json``: what a bench folder was made with, read back by the runner and the report.

The runner writes the record (settings, data sets, pool, last run); a re-run checks that the
settings which decide the data and the budget did not change (:func:`check_same_setup`), and
the report rebuilds its data sets and budget from it. This module holds only the file format,
so the report can read a bench folder without importing the runner.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from priormim.benchmark.budgets import Budget
from priormim.benchmark.data import SegDataset
from priormim.errors import UserError

__all__ = ["BENCH_FILE", "FIXED_KEYS", "SEGMENTOR", "budget_from_record", "check_same_setup", "dataset_from_record",
           "dataset_record", "hash_names", "read_bench_record"]

BENCH_FILE = "bench.json"
SEGMENTOR = "_segmentor"  # pretrain/<SEGMENTOR>/seed<k>/: the frozen consistency segmentor, not a recipe
# bench.json keys that must match on a re-run (seeds and methods may change freely).
FIXED_KEYS = ("suite", "budget", "data_seed", "real", "unlabelled", "real_in_pool", "pool")


def hash_names(names: list[str]) -> str:
    """A short stable fingerprint of a list of file names."""
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def dataset_record(ds: SegDataset) -> dict:
    return {"name": ds.name, "kind": ds.kind, "image_size": ds.image_size,
            **{k: str(getattr(ds, k)) for k in ("train", "val", "test", "root") if getattr(ds, k) is not None},
            "split_seed": ds.split_seed, "split": ds.split}


def dataset_from_record(d: dict) -> SegDataset:
    paths = {k: Path(d[k]) for k in ("train", "val", "test", "root") if d.get(k)}
    return SegDataset(name=d["name"], kind=d["kind"], image_size=int(d["image_size"]), split_seed=int(d.get("split_seed", 0)),
                      split=d.get("split") or {}, **paths)


def budget_from_record(record: dict) -> Budget:
    """The record's budget (fields a newer version added and this one lacks are left out)."""
    known = {f.name for f in dataclasses.fields(Budget)}
    return Budget(**{k: v for k, v in record["budget"].items() if k in known})


def read_bench_record(out: Path) -> dict | None:
    """The parsed ``bench.json`` of ``out``, None when there is none; UserError when unreadable."""
    path = Path(out) / BENCH_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"unreadable ({exc}); delete it to start the bench in this folder again", path) from exc


def check_same_setup(old: dict | None, new: dict, out: Path) -> None:
    """UserError if ``out`` holds cells made with other data or another budget."""
    if old is None:
        return
    differ = [k for k in FIXED_KEYS if k in new and old.get(k) != new.get(k)]
    if differ:
        raise UserError(
            f"holds a bench made with a different {', '.join(differ)}; finished cells would not be comparable. "
            "Use a new --out (seeds and methods may change between runs, the data and budget may not)", out)
