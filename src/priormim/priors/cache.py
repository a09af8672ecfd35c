"""Folder cache of vessel priors: one binary PNG per image plus a manifest.

``compute_vessel_priors(images, out)`` writes ``<out>/<image stem>.png`` (0/255, the image's
size) for every image of a folder, in same-size batches, and records in
``<out>/manifest.json`` the parameters and, per output file, the source path, size and
modification time and the vessel fraction. A re-run skips every file whose manifest entry
matches (same parameters, same source size and mtime, output present), so an interrupted
job resumes where it stopped; unreadable images are counted, logged and skipped.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from priormim.errors import UserError
from priormim.io import atomic_write_bytes, list_images, read_gray, read_mask, write_png
from priormim.priors.vessel import KEEP_MODES, vessel_mask

__all__ = [
    "MANIFEST_NAME",
    "PriorCacheSummary",
    "compute_vessel_priors",
    "ensure_vessel_priors",
    "prior_path",
    "load_prior",
    "read_manifest",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
_KIND = "vessel"
_VERSION = 1  # bump when the algorithm changes so old caches are recomputed
DEFAULT_PARAMS: dict[str, Any] = {
    "percentile": 92.0,
    "border": 20,
    "keep": "strongest",
    "sigmas": [1.0, 2.0, 3.0, 4.0],
    "black_ridges": True,
    "collimator": True,
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
    percentile: float, border: int, keep: str, sigmas: Sequence[float], black_ridges: bool, collimator: bool
) -> dict[str, Any]:
    """Validate user-facing parameters (UserError) and put them in manifest form."""
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
        "percentile": percentile,
        "border": int(border),
        "keep": keep,
        "sigmas": sig,
        "black_ridges": bool(black_ridges),
        "collimator": bool(collimator),
    }


def _resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for but CUDA is not available; use --device cpu")
    return dev


def read_manifest(out: str | Path) -> dict[str, Any] | None:
    """The manifest of a prior folder, or None if there is none (or it is unreadable)."""
    path = Path(out) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        logger.warning("%s: unreadable manifest (%s); priors will be recomputed", path, exc)
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        logger.warning("%s: manifest has an unexpected layout; priors will be recomputed", path)
        return None
    return data


def _write_manifest(out: Path, params: dict[str, Any], files: dict[str, Any]) -> None:
    data = {"kind": _KIND, "version": _VERSION, "params": params, "files": files}
    atomic_write_bytes(out / MANIFEST_NAME, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


def _source_stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def compute_vessel_priors(
    images: str | Path,
    out: str | Path,
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    percentile: float = 92,
    border: int = 20,
    keep: str = "strongest",
    sigmas: Sequence[float] = (1, 2, 3, 4),
    black_ridges: bool = True,
    collimator: bool = True,
    progress: bool = True,
) -> PriorCacheSummary:
    """Compute the vessel prior of every image in ``images`` into ``out`` (resumable).

    Images are read with :func:`priormim.io.read_gray`, grouped by size into batches of up
    to ``batch_size`` and passed through :func:`priormim.priors.vessel_mask` (see there for
    ``percentile``, ``border``, ``keep``, ``sigmas``, ``black_ridges``, ``collimator``); each mask is
    written atomically as ``<out>/<stem>.png`` (0/255) and the manifest is rewritten
    atomically after every batch. Files already up to date are skipped; unreadable images
    and name clashes (``a.png`` and ``a.jpg``) are reported in the summary, never fatal.

    Raises:
        UserError: missing/empty image folder, ``out`` equal to the image folder, bad
            parameters or an unavailable device.
    """
    images = Path(images)
    out = Path(out)
    files = list_images(images)
    if out.resolve() == images.resolve():
        raise UserError("the output folder is the image folder (priors would overwrite images); pick another --out", out)
    if int(batch_size) != batch_size or batch_size < 1:
        raise UserError(f"batch size must be a whole number >= 1, got {batch_size}")
    params = _normalise_params(percentile, border, keep, sigmas, black_ridges, collimator)
    dev = _resolve_device(device)
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a folder; pick another --out", out)
    out.mkdir(parents=True, exist_ok=True)

    manifest = read_manifest(out)
    entries: dict[str, Any] = {}
    if manifest is not None:
        if manifest.get("params") == params and manifest.get("version") == _VERSION and manifest.get("kind") == _KIND:
            entries = dict(manifest["files"])
        elif manifest["files"]:
            logger.info("%s: parameters changed; recomputing all priors", out / MANIFEST_NAME)

    summary = PriorCacheSummary(n_total=len(files), n_done=0, n_skipped_existing=0, n_failed=0, out=out)

    def fail(path: Path, reason: str) -> None:
        summary.n_failed += 1
        summary.failed.append((path, reason))
        logger.warning("skipped %s: %s", path, reason)

    # Decide what is left to do without reading any pixels.
    pending: list[tuple[Path, str, tuple[int, int]]] = []
    owners: dict[str, Path] = {}
    for path in files:
        name = prior_path(out, path).name
        if name in owners:
            fail(path, f"same prior name {name} as {owners[name].name}; rename one of them")
            continue
        owners[name] = path
        stamp = _source_stamp(path)
        entry = entries.get(name)
        if (
            entry is not None
            and [entry.get("source_size"), entry.get("source_mtime_ns")] == list(stamp)
            and (out / name).is_file()
        ):
            summary.n_skipped_existing += 1
        else:
            entries.pop(name, None)
            pending.append((path, name, stamp))

    bar = tqdm(total=len(files), initial=len(files) - len(pending), disable=not progress, unit="img", desc="vessel priors")
    buckets: dict[tuple[int, int], list[tuple[Path, str, tuple[int, int], np.ndarray]]] = {}

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
        )
        masks = masks[:, 0].cpu().numpy()
        for (path, name, stamp, img), m in zip(batch, masks):
            write_png(out / name, m)
            entries[name] = {
                "source": str(path.resolve()),
                "source_size": stamp[0],
                "source_mtime_ns": stamp[1],
                "height": int(img.shape[0]),
                "width": int(img.shape[1]),
                "vessel_fraction": round(float(m.mean()), 6),
            }
        summary.n_done += len(batch)
        _write_manifest(out, params, entries)
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
        if summary.n_done == 0:  # still record the parameters (e.g. a fresh or stale manifest)
            _write_manifest(out, params, entries)
    finally:
        bar.close()
    return summary


def ensure_vessel_priors(
    images: str | Path,
    out: str | Path,
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = False,
    **params: Any,
) -> PriorCacheSummary:
    """Make sure every image of ``images`` has an up-to-date prior in ``out``; compute only
    the missing ones (pretraining calls this on first use).

    ``params`` (``percentile``, ``border``, ``keep``, ``sigmas``, ``black_ridges``,
    ``collimator``) that are
    not given are taken from ``out``'s manifest when there is one, so a cache made with
    ``priormim prior vessel`` and custom settings is completed, not recomputed; otherwise
    the defaults of :func:`compute_vessel_priors` apply. Given ``params`` that differ from
    the manifest recompute everything.
    """
    unknown = set(params) - set(DEFAULT_PARAMS)
    if unknown:
        raise TypeError(f"unknown vessel prior parameter(s): {', '.join(sorted(unknown))}")
    manifest = read_manifest(out)
    stored = manifest.get("params") if manifest is not None else None
    base = dict(DEFAULT_PARAMS)
    if isinstance(stored, dict) and set(stored) == set(DEFAULT_PARAMS):
        base.update(stored)
    base.update(params)
    return compute_vessel_priors(images, out, batch_size=batch_size, device=device, progress=progress, **base)
