"""``ingest``: an archive of DICOM cine runs, videos and images -> a pretraining pool.

Per source: read every frame (:mod:`priormim.ingest.sources`), score contrast and select
frames (:mod:`priormim.ingest.select`), drop near-duplicates (:mod:`priormim.ingest.dedup`),
write de-identified PNGs (:mod:`priormim.ingest.process`). Sources run in a process pool;
the main process journals each finished source (:mod:`priormim.ingest.journal`) and at the end
writes the data manifest (:mod:`priormim.data.manifest`, extra provenance columns) that
``priormim pretrain --manifest`` and ``priormim prior vessel --images`` read.

Rows are ordered by (source id, frame), so an interrupted and resumed run writes the same
manifest, byte for byte, as an uninterrupted one. ``shard=(i, n)`` processes every n-th
source of the sorted list and writes ``manifest.shard-I-of-N.csv``; the last shard to finish
(or :func:`merge_ingest_shards`) merges them into ``manifest.csv``, checking for missing
shards and duplicates.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from priormim.data.manifest import ManifestEntry, parse_shard, shard_paths, write_manifest
from priormim.errors import UserError
from priormim.ingest.journal import append_record, compact_journal, journal_name, read_journal
from priormim.ingest.process import IngestParams, process_source, source_key
from priormim.ingest.select import parse_frame_rule
from priormim.ingest.sources import discover_sources
from priormim.io import atomic_write_bytes

__all__ = ["INGEST_COLUMNS", "IngestSummary", "ingest", "merge_ingest_shards"]

log = logging.getLogger(__name__)

_STANDARD = ("image", "bytes", "sha256")
# Provenance columns after the standard ones, in this order (empty where not applicable).
INGEST_COLUMNS = ("source", "kind", "frame", "n_frames", "contrast", "phash", "height", "width",
                  "bits_stored", "modality", "pixel_spacing_mm", "frame_time_ms", "fps")


@dataclass
class IngestSummary:
    """What one :func:`ingest` run did (counts over the sources of this run's shard)."""

    out: Path
    manifest: Path | None = None
    n_sources: int = 0
    n_done: int = 0  # sources processed by this run
    n_resumed: int = 0  # sources already in the journal of an earlier run
    n_failed: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    n_frames: int = 0  # frames read (all sources of the shard)
    n_selected: int = 0  # kept by the frame rule
    n_duplicates: int = 0  # dropped as near-duplicates within a sequence
    n_rows: int = 0  # frames in the manifest
    n_cross_duplicates: int = 0  # identical frames from different sources, listed once
    merged: bool = False

    def line(self) -> str:
        text = (f"ingest into {self.out}: {self.n_sources} sources ({self.n_done} done now, {self.n_resumed} resumed, "
                f"{self.n_failed} skipped); {self.n_frames} frames read, {self.n_selected} selected, "
                f"{self.n_duplicates} near-duplicates dropped, {self.n_rows} frames listed")
        if self.manifest is not None:
            text += f" -> {self.manifest}"
        return text


def _entries(records: list[dict[str, Any]]) -> tuple[list[ManifestEntry], int]:
    """Manifest entries of journal records, ordered by (source id, frame); an image named
    twice (the same frame in two sources) is listed once. Returns (entries, duplicates)."""
    rows = sorted((r for rec in records for r in rec.get("rows", [])), key=lambda r: (r["source"], int(r["frame"])))
    seen: set[str] = set()
    out, dups = [], 0
    for r in rows:
        if r["image"] in seen:
            dups += 1
            continue
        seen.add(r["image"])
        extra = {k: str(r.get(k, "")) for k in INGEST_COLUMNS}
        out.append(ManifestEntry(image=Path(r["image"]), bytes=int(r["bytes"]), sha256=r["sha256"], extra=extra))
    return out, dups


def _write(out: Path, name: str, records: list[dict[str, Any]]) -> tuple[Path, int, int]:
    entries, dups = _entries(records)
    # Entries hold paths relative to ``out``; write_manifest keeps them relative to the manifest.
    path = write_manifest(out / name, [ManifestEntry(**{**e.__dict__, "image": out / e.image}) for e in entries])
    return path, len(entries), dups


def _manifest_name(fmt: str, shard: tuple[int, int] | None) -> str:
    suffix = ".parquet" if fmt == "parquet" else ".csv"
    return "manifest" + ("" if shard is None else f".shard-{shard[0]:04d}-of-{shard[1]:04d}") + suffix


def ingest(
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    frames: str = "peak",
    level: float = 0.4,
    dedup_bits: int = 2,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    mapping: str | Path | None = None,
    manifest_format: str = "csv",
    contrast_size: int = 128,
    bright_vessels: bool = False,
    progress: bool = True,
) -> IngestSummary:
    """Turn DICOM files (single or multi-frame, any supported transfer syntax), videos and
    images under ``inputs`` into de-identified PNG frames and a data manifest in ``out``.

    Args:
        frames: ``all``, ``peak``, ``every:K`` or ``peak:K`` (:mod:`priormim.ingest.select`).
        level: energy level of the ``peak`` run (0.4 is about half the peak iodine).
        dedup_bits: near-duplicate distance in dHash bits (of 256); ``-1`` keeps every frame.
        workers: processes (1: in this process).
        shard: ``(i, n)``: only every n-th source from the i-th (one SLURM array task each).
        mapping: also write this CSV (source id -> original path). It identifies the sources:
            keep it apart from the pool. Not written unless asked for.
        manifest_format: ``csv`` or ``parquet`` (needs pyarrow).

    Raises:
        UserError: bad options, no inputs, or ``out`` inside an input folder's files.
    """
    out = Path(out)
    rule = parse_frame_rule(frames, level=level)
    if manifest_format not in ("csv", "parquet"):
        raise UserError(f"--format must be csv or parquet, got {manifest_format!r}")
    if int(workers) < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    params = IngestParams(rule=rule, dedup_bits=int(dedup_bits), contrast_size=int(contrast_size),
                          bright_vessels=bool(bright_vessels))
    out_resolved = out.resolve()
    sources = [p for p in discover_sources(inputs) if out_resolved not in p.parents]
    if not sources:
        raise UserError("every input file is inside the output folder; pick another --out", out)
    mine = sources if shard is None else shard_paths(sources, *shard)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output folder ({exc.strerror or exc}); pick another --out", out) from exc

    journal = out / journal_name(shard)
    keys = {source_key(p): p for p in mine}
    want = params.as_dict()
    done: dict[str, dict[str, Any]] = {}
    for rec in read_journal(journal):
        p = keys.get(rec.get("key", ""))
        if p is None or rec.get("params") != want:
            continue
        st = p.stat()
        if (rec.get("size"), rec.get("mtime_ns")) == (st.st_size, st.st_mtime_ns):
            done[rec["key"]] = rec
    compact_journal(journal, list(done.values()))  # drops a torn last line and stale records

    summary = IngestSummary(out=out, n_sources=len(mine), n_resumed=len(done))
    pending = [p for k, p in keys.items() if k not in done]
    bar = tqdm(total=len(mine), initial=len(done), disable=not progress, unit="src", desc="ingest")

    def finish(rec: dict[str, Any]) -> None:
        append_record(journal, rec)
        done[rec["key"]] = rec
        summary.n_done += 1
        bar.update(1)

    try:
        if workers == 1 or len(pending) <= 1:
            for p in pending:
                finish(process_source(str(p), str(out), params))
        else:
            with ProcessPoolExecutor(max_workers=int(workers)) as pool:
                futures = [pool.submit(process_source, str(p), str(out), params) for p in pending]
                for fut in as_completed(futures):
                    finish(fut.result())
    finally:
        bar.close()

    records = [done[k] for k in keys if k in done]
    for rec in records:
        if rec.get("error"):
            summary.n_failed += 1
            summary.failed.append((keys[rec["key"]], rec["error"]))
        summary.n_frames += rec["n_frames"]
        summary.n_selected += rec["n_selected"]
        summary.n_duplicates += rec["n_duplicates"]
    if mapping is not None:
        _write_mapping(Path(mapping), records, keys, shard)
    name = _manifest_name(manifest_format, shard)
    if any(rec.get("rows") for rec in records):
        summary.manifest, summary.n_rows, summary.n_cross_duplicates = _write(out, name, records)
    if shard is not None:
        atomic_write_bytes(out / (journal_name(shard) + ".done"), f"{len(mine)}\n".encode())
        if all((out / (journal_name((i, shard[1])) + ".done")).is_file() for i in range(shard[1])):
            summary.manifest, summary.n_rows = merge_ingest_shards(out, count=shard[1], manifest_format=manifest_format)
            summary.merged = True
    return summary


def _write_mapping(path: Path, records: list[dict[str, Any]], keys: dict[str, Path], shard: tuple[int, int] | None) -> None:
    if shard is not None:
        path = path.with_name(f"{path.stem}.shard-{shard[0]:04d}-of-{shard[1]:04d}{path.suffix or '.csv'}")
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(["source", "path"])
    for rec in sorted(records, key=lambda r: r.get("source", "")):
        if rec.get("source"):
            w.writerow([rec["source"], str(keys[rec["key"]])])
    atomic_write_bytes(path, text.getvalue().encode("utf-8"))


def merge_ingest_shards(out: str | Path, *, count: int | None = None, manifest_format: str = "csv") -> tuple[Path, int]:
    """Merge the shard journals of ``out`` into ``manifest.csv`` (or ``.parquet``).

    Fails naming missing or unfinished shards (gaps) and shards that processed the same
    source (overlapping input lists); the same frame from two sources is listed once.
    Returns ``(manifest path, rows)``.
    """
    out = Path(out)
    if count is None:
        counts = sorted({int(p.name.split("-of-")[1].split(".")[0]) for p in out.glob("ingest.shard-*-of-*.jsonl")})
        if not counts:
            raise UserError("holds no ingest shard journals; run `priormim ingest --shard I/N` first", out)
        if len(counts) > 1:
            raise UserError(f"holds shard journals of different runs (N = {', '.join(map(str, counts))}); delete the stale ones", out)
        count = counts[0]
    missing = [i for i in range(count) if not (out / (journal_name((i, count)) + ".done")).is_file()]
    if missing:
        listed = ", ".join(f"{i}/{count}" for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise UserError(f"{len(missing)} of {count} shards are missing or unfinished ({listed}); run them, then merge again", out)
    records: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    params = set()
    for i in range(count):
        for rec in read_journal(out / journal_name((i, count))):
            if rec["key"] in seen and seen[rec["key"]] != i:
                raise UserError(f"shards {seen[rec['key']]} and {i} both ingested one source; the shards were run on "
                                "different input lists: re-run them with the same inputs", out)
            seen[rec["key"]] = i
            params.add(repr(sorted(rec["params"].items())))
            records.append(rec)
    if len(params) > 1:
        raise UserError("the shards were run with different options; re-run them with the same --frames/--dedup", out)
    path, n, dups = _write(out, _manifest_name(manifest_format, None), records)
    if dups:
        log.info("%d frames appear in more than one source; listed once", dups)
    return path, n


def parse_shard_arg(text: str | None) -> tuple[int, int] | None:
    return None if text is None else parse_shard(text)
