"""Cache of per-image gaze heatmaps (the VP-MIM gaze prior) on disk.

Layout of the output folder::

    out/
      <image stem>.npy   float32 [H, W] at the image's own size; sums to 1, or all zero when
                         the image's readings have no valid fixation (masking then falls back
                         to random masking)
      manifest.json      parameters, per-file stats and totals

Images are matched to gaze readings by file stem = ``dicom_id`` (any extension, any size:
fixation coordinates are rescaled from the original image size to the image's size).
Re-running with the same parameters skips files already finished; images without gaze
data or unreadable images are counted, logged and skipped (retried on the next run).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from priormim.errors import UserError
from priormim.io import atomic_write_bytes, list_images, read_gray
from priormim.priors.gaze import GazeRecords, gaze_heatmap_stats, read_egd, read_reflacx

log = logging.getLogger(__name__)

__all__ = ["GazeCacheSummary", "compute_gaze_priors", "load_gaze_prior", "gaze_prior_path", "MANIFEST_NAME", "FORMATS"]

MANIFEST_NAME = "manifest.json"
FORMATS = ("reflacx", "egd")
# Bump when the heatmap definition changes so old caches are not silently mixed in.
HEATMAP_VERSION = 1
_FLUSH_EVERY = 50


@dataclass
class GazeCacheSummary:
    """What a :func:`compute_gaze_priors` run did (counts over the images folder)."""

    out_dir: Path
    manifest_path: Path
    n_images: int
    written: int  # heatmaps computed in this run (including all-zero ones)
    skipped_existing: int  # finished in an earlier run
    empty: int  # all-zero heatmaps (no valid fixation), this and earlier runs
    missing_gaze: int  # image stem not in the gaze data
    unreadable: int  # image could not be read
    duplicate_stem: int  # a second image with the same stem (would overwrite <stem>.npy)
    dropped_outside: int  # fixations, over all cached images
    dropped_nonpositive_duration: int
    dropped_invalid: int
    gaze: dict  # summary of the whole gaze dataset (GazeRecords.summary())

    def lines(self) -> list[str]:
        return [
            f"gaze priors in {self.out_dir}: {self.n_images} images, {self.written} written, "
            f"{self.skipped_existing} already done",
            f"  images without valid fixations (all-zero prior): {self.empty}",
            f"  skipped: {self.missing_gaze} without gaze data, {self.unreadable} unreadable, "
            f"{self.duplicate_stem} duplicate names",
            f"  dropped fixations: {self.dropped_outside} outside the image/shown region, "
            f"{self.dropped_nonpositive_duration} with duration <= 0, {self.dropped_invalid} invalid values",
            f"  manifest: {self.manifest_path}",
        ]


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _load_manifest(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            raise ValueError("not a gaze prior manifest")
        return data
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read ({exc}); delete it or re-run with --overwrite", path) from exc


def _write_manifest(path: Path, params: dict, files: dict, gaze: dict) -> dict:
    ok = [v for v in files.values() if v.get("status") in ("ok", "empty")]
    totals = {
        "cached": len(ok),
        "empty": sum(v["status"] == "empty" for v in ok),
        "missing_gaze": sum(v.get("status") == "missing_gaze" for v in files.values()),
        "unreadable": sum(v.get("status") == "unreadable" for v in files.values()),
        "duplicate_stem": sum(v.get("status") == "duplicate_stem" for v in files.values()),
        "dropped_outside": sum(v.get("dropped_outside", 0) for v in ok),
        "dropped_nonpositive_duration": sum(v.get("dropped_nonpositive_duration", 0) for v in ok),
        "dropped_invalid": sum(v.get("dropped_invalid", 0) for v in ok),
    }
    doc = {"params": params, "totals": totals, "gaze_dataset": gaze, "files": dict(sorted(files.items()))}
    atomic_write_bytes(path, json.dumps(doc, indent=1).encode())
    return totals


def _read_records(fmt: str, root: Path, sigma_px: float) -> GazeRecords:
    if fmt == "reflacx":
        return read_reflacx(root)
    if fmt == "egd":
        return read_egd(root, sigma_px=sigma_px)
    raise UserError(f"unknown gaze format {fmt!r}; use one of {', '.join(FORMATS)}")


def compute_gaze_priors(
    *,
    format: str,  # noqa: A002 - mirrors the CLI's --format
    root: str | Path,
    images: str | Path,
    out: str | Path,
    sigma_px: float = 150.0,
    overwrite: bool = False,
    progress: bool = True,
) -> GazeCacheSummary:
    """Compute and cache one gaze heatmap per image (see the module docstring).

    Args:
        format: ``"reflacx"`` or ``"egd"``.
        root: the gaze dataset folder. images: folder of images named ``<dicom_id>.<ext>``.
        out: output folder (created). sigma_px: EGD-CXR Gaussian sigma in original pixels.
        overwrite: recompute every file, even if finished or made with other parameters.
        progress: show a progress bar.
    Raises:
        UserError: bad folders / files, or ``out`` made with other parameters.
    """
    from tqdm import tqdm

    fmt = str(format).lower()
    if fmt not in FORMATS:
        raise UserError(f"unknown gaze format {fmt!r}; use one of {', '.join(FORMATS)}")
    root, images, out = Path(root), Path(images), Path(out)
    image_files = list_images(images)
    records = _read_records(fmt, root, sigma_px)
    gaze = records.summary()
    if records.n_images == 0:
        raise UserError("holds no gaze readings; check the folder and --format", root)

    params = {
        "format": fmt,
        "sigma": "1 degree of visual angle (angular resolution)" if fmt == "reflacx" else f"{float(sigma_px)} px",
        "sigma_px": float(sigma_px) if fmt == "egd" else None,
        "heatmap_version": HEATMAP_VERSION,
        "root": str(root.resolve()),
        "layout": "<stem>.npy float32 [H, W] at the image's size; sums to 1, or all zero",
    }
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST_NAME
    old = None if overwrite else _load_manifest(manifest_path)
    if old is not None:
        keys = ("format", "sigma_px", "heatmap_version")
        old_params = old.get("params", {})
        if any(old_params.get(k) != params[k] for k in keys):
            raise UserError(
                f"was made with other parameters ({', '.join(f'{k}={old_params.get(k)}' for k in keys)}); "
                "use a new --out folder or --overwrite",
                manifest_path,
            )
    files: dict[str, dict] = {} if old is None else dict(old["files"])

    written = skipped = 0
    seen: set[str] = set()
    since_flush = 0
    try:
        for path in tqdm(image_files, desc="gaze priors", unit="img", disable=not progress):
            stem = path.stem
            target = out / f"{stem}.npy"
            if stem in seen:
                log.warning("%s: another image already has the name %r; skipped", path, stem)
                files[f"{stem}{path.suffix}"] = {"status": "duplicate_stem", "image": path.name}
                continue
            seen.add(stem)
            entry = files.get(stem)
            if entry is not None and entry.get("status") in ("ok", "empty") and target.is_file():
                skipped += 1
                continue
            readings = records.readings.get(stem)
            if readings is None:
                log.info("%s: no gaze data for dicom_id %r; skipped", path, stem)
                files[stem] = {"status": "missing_gaze", "image": path.name}
                continue
            try:
                h, w = read_gray(path).shape
            except UserError as exc:
                log.warning("%s; skipped", exc)
                files[stem] = {"status": "unreadable", "image": path.name, "reason": str(exc)}
                continue
            # EGD-CXR does not list image sizes: coordinates refer to the image as given.
            readings = [f if f.image_size is not None else dataclasses.replace(f, image_size=(w, h)) for f in readings]
            result = gaze_heatmap_stats(readings, out_size=(h, w))
            atomic_write_bytes(target, _npy_bytes(result.heatmap))
            files[stem] = {
                "status": "empty" if result.empty else "ok",
                "image": path.name,
                "shape": [h, w],
                "original_size_wh": list(readings[0].image_size) if readings else None,
                **{k: v for k, v in result.stats().items() if k != "empty"},
            }
            written += 1
            since_flush += 1
            if since_flush >= _FLUSH_EVERY:
                _write_manifest(manifest_path, params, files, gaze)
                since_flush = 0
    finally:
        totals = _write_manifest(manifest_path, params, files, gaze)

    _write_data_manifest(out, image_files, files)
    current = {p.stem for p in image_files}
    status = [files.get(s, {}).get("status") for s in current]
    return GazeCacheSummary(
        out_dir=out,
        manifest_path=manifest_path,
        n_images=len(image_files),
        written=written,
        skipped_existing=skipped,
        empty=status.count("empty"),
        missing_gaze=status.count("missing_gaze"),
        unreadable=status.count("unreadable"),
        duplicate_stem=len(image_files) - len(current),
        dropped_outside=totals["dropped_outside"],
        dropped_nonpositive_duration=totals["dropped_nonpositive_duration"],
        dropped_invalid=totals["dropped_invalid"],
        gaze=gaze,
    )


def _write_data_manifest(out: Path, image_files: list[Path], files: dict[str, dict]) -> None:
    """``out/manifest.csv``: image, heatmap, sizes and checksums of every cached image, for
    ``priormim pretrain --manifest`` (see :mod:`priormim.data.manifest`)."""
    from priormim.io_manifest import make_entry, write_manifest

    entries = []
    for path in image_files:
        entry = files.get(path.stem)
        target = out / f"{path.stem}.npy"
        if entry is not None and entry.get("status") in ("ok", "empty") and entry.get("image") == path.name and target.is_file():
            entries.append(make_entry(path, target))
    write_manifest(out / "manifest.csv", entries)


def gaze_prior_path(out_dir: str | Path, image_path: str | Path) -> Path:
    """Where the cached heatmap of ``image_path`` lives (it may not exist: no gaze data)."""
    return Path(out_dir) / f"{Path(image_path).stem}.npy"


def load_gaze_prior(out_dir: str | Path, image_path: str | Path, *, missing: str = "error") -> np.ndarray | None:
    """Load the cached gaze heatmap of ``image_path`` from ``out_dir``.

    Returns:
        float32 ``[H, W]`` (the image's size) summing to 1, or all zero when the image had
        no valid fixations (use random masking then). With ``missing="none"`` an image
        without a cached heatmap gives ``None``; with ``"error"`` (default) a UserError.
    """
    path = gaze_prior_path(out_dir, image_path)
    if not path.is_file():
        if missing == "none":
            return None
        raise UserError(
            f"no gaze prior for {Path(image_path).name}; run `priormim prior gaze ... --out {out_dir}` "
            "(see its manifest.json for images skipped for missing gaze data)",
            path,
        )
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read gaze prior ({exc}); delete it and re-run `priormim prior gaze`", path) from exc
    numeric = np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    if not numeric or arr.ndim != 2:
        raise UserError(f"is not a gaze prior (a 2-D array of numbers; found {arr.dtype} {arr.shape}); delete it and "
                        "re-run `priormim prior gaze`", path)
    wide = arr.astype(np.float64)
    total = float(wide.sum())
    if not np.isfinite(wide).all() or (wide < 0).any() or not np.isfinite(total):
        raise UserError("is not a gaze prior (finite values >= 0 with a finite sum); delete it and re-run "
                        "`priormim prior gaze`", path)
    # A heatmap sums to 1; one saved on another scale is rescaled in float64 (float32 could overflow).
    if total > 0 and abs(total - 1.0) > 1e-3:
        wide = wide / total
    return wide.astype(np.float32)
