"""Folder cache of vessel priors: one binary PNG per image plus a manifest.

``compute_vessel_priors(images, out)`` writes ``<out>/<image stem>.png`` (0/255, the image's
size) for every image of a folder, in same-size batches, and records in
``<out>/manifest.json`` the parameters and, per output file, the source path, size and
modification time and the vessel fraction. A re-run skips every file whose manifest entry
matches (same parameters, same source size and mtime, output present), so an interrupted
job resumes where it stopped; unreadable images are counted, logged and skipped. The
parameters include the recipe (``preset``: ``official`` or ``priormim``, see
:func:`priormim.priors.vessel_mask`), so priors of one recipe are never reused for the other.
The state files (``manifest.json``, shard states and their merge, ``manifest.csv``) are
read and written by :mod:`~priormim.priors.cache_state`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from priormim.devices import resolve_device
from priormim.errors import UserError
from priormim.io import list_images, read_gray, read_mask, write_png
from priormim.priors.cache_state import (  # noqa: F401 - MANIFEST_NAME, merge_vessel_shards, read_manifest re-exported
    KIND, MANIFEST_NAME, VERSION, merge_if_complete, merge_vessel_shards, read_manifest, refuse_foreign_folder,
    shard_state_name, source_stamp, write_data_manifest, write_state,
)
from priormim.priors.vessel import KEEP_MODES, PRESET_DEFAULTS, PRESETS, vessel_mask

__all__ = [
    "MANIFEST_NAME",
    "PriorCacheSummary",
    "compute_vessel_priors",
    "ensure_vessel_priors",
    "merge_vessel_shards",
    "prior_path",
    "load_prior",
    "read_manifest",
]

logger = logging.getLogger(__name__)

# Parameters besides ``preset``; None takes the preset's value (PRESET_DEFAULTS).
DEFAULT_PARAMS: dict[str, Any] = {
    "percentile": 92.0,
    "border": 20,
    "keep": None,
    "sigmas": [1.0, 2.0, 3.0, 4.0],
    "black_ridges": True,
    "collimator": None,
}


@dataclass
class PriorCacheSummary:
    """What one :func:`compute_vessel_priors` run did."""

    n_total: int  # images in the folder
    n_done: int  # priors computed and written by this run
    n_skipped_existing: int  # up to date from an earlier run
    n_failed: int  # unreadable images (see ``failed``)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (image, reason)
    out: Path = Path(".")
    merged: bool = False  # sharded run: this shard completed the set and merged the manifests

    def line(self) -> str:
        """One-line human summary, naming the failed files."""
        text = (
            f"vessel priors in {self.out}: {self.n_done} done, "
            f"{self.n_skipped_existing} skipped (already up to date), {self.n_failed} failed"
        )
        if self.failed:
            text += " (" + ", ".join(p.name for p, _ in self.failed) + ")"
        return text


def prior_path(out_dir: str | Path, image_path: str | Path) -> Path:
    """Where the prior of ``image_path`` lives: ``<out_dir>/<image stem>.png``."""
    return Path(out_dir) / f"{Path(image_path).stem}.png"


def load_prior(out_dir: str | Path, image_path: str | Path) -> np.ndarray:
    """The cached vessel prior of ``image_path`` as ``bool [H, W]``.

    Raises UserError naming the missing file and the command that makes it.
    """
    path = prior_path(out_dir, image_path)
    if not path.is_file():
        raise UserError(
            f"no vessel prior for {Path(image_path).name}; run "
            f"`priormim prior vessel --images <image folder> --out {Path(out_dir)}`",
            path,
        )
    return read_mask(path)


def _normalise_params(
    preset: str, percentile: float, border: int, keep: str | None, sigmas: Sequence[float], black_ridges: bool,
    collimator: bool | None,
) -> dict[str, Any]:
    """Validate user-facing parameters (UserError) and put them in manifest form, with
    ``keep`` and ``collimator`` resolved from the preset when None."""
    if preset not in PRESETS:
        raise UserError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}; e.g. --preset official")
    keep = PRESET_DEFAULTS[preset]["keep"] if keep is None else keep
    collimator = PRESET_DEFAULTS[preset]["collimator"] if collimator is None else collimator
    try:
        sig = [float(s) for s in sigmas]
        percentile = float(percentile)
    except (TypeError, ValueError) as exc:
        raise UserError(f"vessel prior parameters must be numbers ({exc})") from exc
    if not sig or any(not math.isfinite(s) or s <= 0 for s in sig):
        raise UserError(f"sigmas must be positive numbers, got {sig}; e.g. --sigmas 1 2 3 4")
    if not 0 <= percentile < 100:
        raise UserError(f"percentile must be in [0, 100), got {percentile}; e.g. --percentile 92")
    if int(border) != border or border < 0:
        raise UserError(f"border must be a whole number of pixels >= 0, got {border}")
    if keep not in KEEP_MODES:
        raise UserError(f"keep must be one of {', '.join(KEEP_MODES)}, got {keep!r}")
    return {
        "preset": preset,
        "percentile": percentile,
        "border": int(border),
        "keep": keep,
        "sigmas": sig,
        "black_ridges": bool(black_ridges),
        "collimator": bool(collimator),
    }




_FLUSH_SECONDS = 10.0  # rewrite the state file at most this often (and at the end)


def compute_vessel_priors(
    images: str | Path | Sequence[Path],
    out: str | Path,
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    percentile: float = 92,
    border: int = 20,
    keep: str | None = None,
    sigmas: Sequence[float] = (1, 2, 3, 4),
    black_ridges: bool = True,
    collimator: bool | None = None,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
    preset: str = "official",
) -> PriorCacheSummary:
    """Compute the vessel prior of every image in ``images`` into ``out`` (resumable).

    ``images`` is a folder, or a list of image paths (e.g. from a data manifest).
    Images are read with :func:`priormim.io.read_gray`, grouped by size into batches of up
    to ``batch_size`` and passed through :func:`priormim.priors.vessel_mask` (see there for
    ``preset``, ``percentile``, ``border``, ``keep``, ``sigmas``, ``black_ridges``, ``collimator``;
    ``preset="official"``, the default, is the official VasoMIM recipe and quantises every
    image to 8 bits as :func:`priormim.io.to_uint8` does; ``keep`` and ``collimator`` left at
    None take the preset's values); each mask is
    written atomically as ``<out>/<stem>.png`` (0/255). The state (``manifest.json``:
    parameters and, per prior, source path, size, mtime, SHA-256, prior SHA-256) is rewritten
    atomically every few seconds and at the end, plus a data manifest ``manifest.csv``
    (:mod:`priormim.data.manifest`) for ``priormim pretrain --manifest``.

    A re-run skips every file whose entry matches (same size and mtime, or same SHA-256 when
    only the mtime moved) and whose output exists. Any other parameters than the state
    file's (another ``preset`` included) recompute every prior, with a logged message. Unreadable images and name clashes
    (``a.png`` and ``a.jpg``) are reported in the summary, never fatal.

    ``shard=(i, n)`` processes only shard ``i`` of ``n`` (:func:`priormim.data.manifest.shard_paths`:
    every n-th image of the sorted list) and keeps its state in
    ``manifest.shard-000i-of-000n.json`` / ``.csv``, so n jobs can share ``out``; the shard
    that completes last merges them into ``manifest.json`` / ``manifest.csv``
    (:func:`merge_vessel_shards`).

    Raises:
        UserError: missing/empty image folder, ``out`` equal to the image folder, bad
            parameters or an unavailable device.
    """
    from priormim.io_manifest import file_sha256, shard_paths

    out = Path(out)
    if isinstance(images, (str, Path)):
        images = Path(images)
        files = list_images(images)
        if out.resolve() == images.resolve():
            raise UserError("the output folder is the image folder (priors would overwrite images); pick another --out", out)
    else:
        files = sorted((Path(p) for p in images), key=str)
        if not files:
            raise UserError("no images to compute vessel priors for", out)
    if int(batch_size) != batch_size or batch_size < 1:
        raise UserError(f"batch size must be a whole number >= 1, got {batch_size}")
    params = _normalise_params(preset, percentile, border, keep, sigmas, black_ridges, collimator)
    dev = resolve_device(device)
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a folder; pick another --out", out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output folder ({exc.strerror or exc}); pick another --out", out) from exc
    if not os.access(out, os.W_OK):
        raise UserError("the output folder is not writable; fix its permissions or pick another --out", out)

    refuse_foreign_folder(out)
    state_name = MANIFEST_NAME if shard is None else shard_state_name(*shard)
    csv_name = "manifest.csv" if shard is None else state_name.replace(".json", ".csv")

    def matching(manifest: dict[str, Any] | None) -> dict[str, Any]:
        if manifest is None:
            return {}
        if manifest.get("params") == params and manifest.get("version") == VERSION and manifest.get("kind") == KIND:
            return dict(manifest["files"])
        old = manifest.get("params") if isinstance(manifest.get("params"), dict) else {}
        if manifest["files"] and old.get("preset") != params["preset"]:
            logger.warning("%s: priors were made with preset %s; recomputing all with preset %s",
                           out / state_name, old.get("preset"), params["preset"])
        elif manifest["files"]:
            logger.info("%s: parameters changed; recomputing all priors", out / state_name)
        return {}

    entries = matching(read_manifest(out, state_name))
    if shard is not None:  # a merged (or unsharded) manifest of an earlier run counts as done too
        for name, e in matching(read_manifest(out)).items():
            entries.setdefault(name, e)

    summary = PriorCacheSummary(n_total=0, n_done=0, n_skipped_existing=0, n_failed=0, out=out)

    def fail(path: Path, reason: str) -> None:
        summary.n_failed += 1
        summary.failed.append((path, reason))
        logger.warning("skipped %s: %s", path, reason)

    # Name clashes are decided over the whole list, so that shards agree on the owner.
    owners: dict[str, Path] = {}
    clashes: list[tuple[Path, str]] = []
    unique: list[Path] = []
    for path in files:
        name = prior_path(out, path).name
        if name in owners:
            clashes.append((path, f"same prior name {name} as {owners[name].name}; rename one of them"))
            continue
        owners[name] = path
        unique.append(path)
    mine = set(files if shard is None else shard_paths(files, *shard))
    summary.n_total = len(mine)
    for path, reason in clashes:
        if path in mine:
            fail(path, reason)

    # Decide what is left to do without reading any pixels (a checksum only when the mtime moved).
    pending: list[tuple[Path, str, tuple[int, int]]] = []
    shard_entries: dict[str, Any] = {}
    for path in unique:
        if path not in mine:
            continue
        name = prior_path(out, path).name
        stamp = source_stamp(path)
        entry = entries.get(name)
        done = False
        if entry is not None and (out / name).is_file():
            if [entry.get("source_size"), entry.get("source_mtime_ns")] == list(stamp):
                done = True
            elif entry.get("sha256") and entry.get("source_size") == stamp[0] and file_sha256(path) == entry["sha256"]:
                entry = {**entry, "source_mtime_ns": stamp[1]}  # touched, not changed
                done = True
        if done:
            summary.n_skipped_existing += 1
            shard_entries[name] = entry
        else:
            pending.append((path, name, stamp))
    entries = shard_entries
    extra = None if shard is None else {"shard": list(shard), "complete": False}

    bar = tqdm(total=len(mine), initial=len(mine) - len(pending), disable=not progress, unit="img", desc="vessel priors")
    buckets: dict[tuple[int, int], list[tuple[Path, str, tuple[int, int], np.ndarray]]] = {}
    last_flush = time.monotonic()

    def flush(force: bool = False) -> None:
        nonlocal last_flush
        if force or time.monotonic() - last_flush >= _FLUSH_SECONDS:
            write_state(out, params, entries, name=state_name, extra=extra)
            last_flush = time.monotonic()

    if not (out / state_name).exists():
        flush(force=True)  # before the first prior: the folder is marked as priormim's own cache

    def run_batch(batch: list[tuple[Path, str, tuple[int, int], np.ndarray]]) -> None:
        x = torch.from_numpy(np.stack([item[3] for item in batch])).unsqueeze(1).to(dev)
        masks = vessel_mask(
            x,
            percentile=params["percentile"],
            border=params["border"],
            keep=params["keep"],
            sigmas=params["sigmas"],
            black_ridges=params["black_ridges"],
            collimator=params["collimator"],
            preset=params["preset"],
        )
        masks = masks[:, 0].cpu().numpy()
        for (path, name, stamp, img), m in zip(batch, masks):
            write_png(out / name, m)
            entries[name] = {
                "source": str(path.resolve()),
                "source_size": stamp[0],
                "source_mtime_ns": stamp[1],
                "sha256": file_sha256(path),
                "prior_sha256": file_sha256(out / name),
                "height": int(img.shape[0]),
                "width": int(img.shape[1]),
                "vessel_fraction": round(float(m.mean()), 6),
            }
        summary.n_done += len(batch)
        flush()
        bar.update(len(batch))

    try:
        for path, name, stamp in pending:
            try:
                img = read_gray(path)
            except UserError as exc:
                fail(path, str(exc))
                bar.update(1)
                continue
            bucket = buckets.setdefault(img.shape, [])
            bucket.append((path, name, stamp, img))
            if len(bucket) >= batch_size:
                run_batch(buckets.pop(img.shape))
        for shape in list(buckets):
            run_batch(buckets.pop(shape))
        if extra is not None:
            extra["complete"] = True
    finally:
        bar.close()
        try:
            flush(force=True)
        except OSError as exc:
            raise UserError(f"cannot write the prior manifest ({exc.strerror or exc}); free disk space or fix permissions",
                            out / state_name) from exc
    write_data_manifest(out, entries, csv_name)
    if shard is not None:
        summary.merged = merge_if_complete(out, shard[1])
    return summary


def ensure_vessel_priors(
    images: str | Path,
    out: str | Path,
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = False,
    preset: str = "official",
    **params: Any,
) -> PriorCacheSummary:
    """Make sure every image of ``images`` has an up-to-date prior in ``out``; compute only
    the missing ones (pretraining calls this on first use).

    ``preset`` is the recipe (``"official"`` or ``"priormim"``, see
    :func:`priormim.priors.vessel_mask`). When ``out``'s manifest was made with the same
    preset, ``params`` (``percentile``, ``border``, ``keep``, ``sigmas``, ``black_ridges``,
    ``collimator``) that are not given are taken from it, so a cache made with ``priormim
    prior vessel`` and custom settings is completed, not recomputed; otherwise the defaults
    of :func:`compute_vessel_priors` apply. A manifest of the other preset, or given
    ``params`` that differ from the manifest, recompute everything (logged).
    """
    unknown = set(params) - set(DEFAULT_PARAMS)
    if unknown:
        raise TypeError(f"unknown vessel prior parameter(s): {', '.join(sorted(unknown))}")
    manifest = read_manifest(out)
    stored = dict(manifest.get("params") or {}) if manifest is not None else {}
    base = dict(DEFAULT_PARAMS)
    if stored.pop("preset", None) == preset and set(stored) == set(DEFAULT_PARAMS):
        base.update(stored)
    base.update(params)
    return compute_vessel_priors(
        images, out, batch_size=batch_size, device=device, progress=progress, preset=preset, **base
    )
