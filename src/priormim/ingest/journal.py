"""Crash-safe progress of an ingest run: one JSON line per finished source.

A worker writes a source's frames (each atomically, named by content hash) *before* the
main process appends the source's line to the journal and fsyncs it, so a line never names
a frame that is not complete on disk. After ``kill -9`` the journal may end in a partial
line; :func:`read_journal` drops it (and :func:`compact_journal` rewrites the file without
it), so the next run redoes exactly the sources that have no complete line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from priormim.io import atomic_write_bytes

__all__ = ["append_record", "compact_journal", "journal_name", "read_journal"]


def journal_name(shard: tuple[int, int] | None) -> str:
    return "ingest.journal.jsonl" if shard is None else f"ingest.shard-{shard[0]:04d}-of-{shard[1]:04d}.jsonl"


def read_journal(path: Path) -> list[dict[str, Any]]:
    """Complete records of a journal (a torn last line is ignored); [] when absent."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # torn write of a killed run
    return records


def compact_journal(path: Path, records: list[dict[str, Any]]) -> None:
    """Rewrite ``path`` atomically with exactly ``records``."""
    atomic_write_bytes(path, b"".join(json.dumps(r, sort_keys=True).encode() + b"\n" for r in records))


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one record and fsync, so a completed source survives a crash right after."""
    with open(path, "ab") as f:
        f.write(json.dumps(record, sort_keys=True).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
