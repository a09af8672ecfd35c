"""Cells: the resumable units of a bench run.

A cell is one folder of work (a pretraining run of one method and seed, a fine-tuning run of
one method, data set and seed, ...). It is finished when ``<folder>/done.json`` exists; that
file is written atomically after everything else, so a crash at any point leaves the cell
unfinished and the next run redoes it. A failing cell writes ``error.log`` and the run goes
on; cells that need it are reported as blocked.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from priormim.io import atomic_write_bytes

log = logging.getLogger(__name__)

DONE = "done.json"
ERROR = "error.log"


@dataclass
class Cell:
    """One unit of work and where it lives."""

    kind: str  # "segmentor" | "pretrain" | "vesselness" | "finetune"
    method: str
    folder: Path
    seed: int | None = None
    dataset: str | None = None
    needs: tuple[Path, ...] = ()  # folders of cells that must be finished first
    estimate_s: float = 0.0  # predicted seconds (see priormim.benchmark.estimate)

    @property
    def marker(self) -> Path:
        return self.folder / DONE

    def is_done(self) -> bool:
        return self.marker.is_file()

    def title(self) -> str:
        parts = [self.kind, self.method]
        if self.dataset:
            parts.append(f"on {self.dataset}")
        if self.seed is not None:
            parts.append(f"seed {self.seed}")
        return " ".join(parts)


@dataclass
class CellOutcome:
    cell: Cell
    status: str  # "ran" | "skipped" (already done) | "failed" | "blocked" (a needed cell is not done)
    seconds: float = 0.0
    error: str | None = None


def read_done(folder: Path) -> dict[str, Any] | None:
    """The completion record of a cell folder, or None if it is unfinished."""
    try:
        return json.loads((Path(folder) / DONE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


@dataclass
class Progress:
    """Prints one line per cell: index, title, what happened, its time, total elapsed, ETA.

    The ETA sums the estimates of the cells still to do, each kind (pretrain, finetune, ...)
    scaled by how far off the estimates of that kind's finished cells were.
    """

    cells: list[Cell]
    echo: Callable[[str], None] = print
    start: float = field(default_factory=time.perf_counter)
    index: int = 0
    pending: dict[int, Cell] = field(default_factory=dict)  # id -> cell still to do
    estimated: dict[str, float] = field(default_factory=dict)  # kind -> estimates of the cells run
    actual: dict[str, float] = field(default_factory=dict)  # kind -> their actual seconds

    def __post_init__(self) -> None:
        self.pending = {id(c): c for c in self.cells if not c.is_done()}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        total = 0.0
        for c in self.pending.values():
            est, act = self.estimated.get(c.kind, 0.0), self.actual.get(c.kind, 0.0)
            total += c.estimate_s * (act / est if est > 0 else 1.0)
        return total

    def report(self, outcome: CellOutcome) -> None:
        self.index += 1
        cell = outcome.cell
        self.pending.pop(id(cell), None)
        if outcome.status == "ran" and cell.estimate_s > 0:
            self.estimated[cell.kind] = self.estimated.get(cell.kind, 0.0) + cell.estimate_s
            self.actual[cell.kind] = self.actual.get(cell.kind, 0.0) + outcome.seconds
        what = {"ran": f"done in {outcome.seconds:.1f} s", "skipped": "already done, skipped",
                "failed": f"FAILED after {outcome.seconds:.1f} s: {outcome.error}",
                "blocked": "blocked (a cell it needs did not finish)"}[outcome.status]
        line = f"[{self.index:>3}/{len(self.cells)}] {cell.title():<52} {what}  (elapsed {_fmt_duration(self.elapsed())}"
        left = self.remaining()
        if left > 0 and outcome.status != "skipped":
            line += f", ~{_fmt_duration(left)} left"
        self.echo(line + ")")


def run_cell(cell: Cell, work: Callable[[], dict[str, Any] | None]) -> CellOutcome:
    """Skip a finished cell, refuse a blocked one, else run ``work()`` and mark it done.

    ``work`` returns extra fields for ``done.json`` (or None). Any exception is caught,
    written with its traceback to ``<folder>/error.log`` and returned as a failed outcome.
    """
    if cell.is_done():
        return CellOutcome(cell, "skipped")
    if any(not (Path(n) / DONE).is_file() for n in cell.needs):
        return CellOutcome(cell, "blocked")
    cell.folder.mkdir(parents=True, exist_ok=True)
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        extra = work() or {}
    except Exception as exc:  # noqa: BLE001 - one failing cell must not stop the others
        seconds = time.perf_counter() - t0
        (cell.folder / ERROR).write_text(traceback.format_exc(), encoding="utf-8")
        log.error("%s failed: %s (traceback in %s)", cell.title(), exc, cell.folder / ERROR)
        return CellOutcome(cell, "failed", seconds, f"{type(exc).__name__}: {exc}".splitlines()[0][:200])
    seconds = time.perf_counter() - t0
    record = {"kind": cell.kind, "method": cell.method, "dataset": cell.dataset, "seed": cell.seed,
              "seconds": round(seconds, 2), "cpu_seconds": round(time.process_time() - cpu0, 2),
              "estimate_s": round(cell.estimate_s, 2),
              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra}
    (cell.folder / ERROR).unlink(missing_ok=True)
    atomic_write_bytes(cell.marker, json.dumps(record, indent=1).encode("utf-8"))
    return CellOutcome(cell, "ran", seconds)
