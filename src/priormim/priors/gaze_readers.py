"""Gaze data set readers: REFLACX (:func:`read_reflacx`) and EGD-CXR (:func:`read_egd`),
file formats in ``docs/vpmim_gaze.md``."""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from priormim.errors import UserError
from priormim.priors.gaze_fixations import (
    EGD_FIXATION_COLUMNS, EGD_MASTER_COLUMNS, EMPTY, REFLACX_FIXATION_COLUMNS, REFLACX_METADATA_COLUMNS, Fixations,
    GazeRecords, validate_fixations,
)

log = logging.getLogger("priormim.priors.gaze")  # the readers' warnings keep their logger name

__all__ = ["read_egd", "read_reflacx"]


def _read_csv(path: Path, required: Sequence[str], what: str) -> tuple[dict[str, list[str]], int]:
    """Read the columns of a CSV file as strings.

    Returns ``(columns, n_short_rows)``; rows with fewer cells than the header are padded
    with empty strings, read as missing values (the fixation is then dropped as invalid).
    Raises UserError naming the file and the missing column.
    """
    with path.open("r", newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise UserError(f"is empty; expected a {what} with a header row", path) from None
        missing = [c for c in required if c not in header]
        if missing:
            raise UserError(
                f"missing column {missing[0]!r} (expected in a {what}; found: {', '.join(header[:12])}"
                f"{', ...' if len(header) > 12 else ''}); check --format and the file",
                path,
            )
        index = {h: i for i, h in enumerate(header)}
        wanted = list(dict.fromkeys(required))
        cols: dict[str, list[str]] = {c: [] for c in wanted}
        n_bad = 0
        width = len(header)
        for row in reader:
            if not row:
                continue
            if len(row) < width:
                n_bad += 1
                row = row + [""] * (width - len(row))
            for c in wanted:
                cols[c].append(row[index[c]])
    return cols, n_bad


def _optional_columns(path: Path, names: Sequence[str]) -> list[str]:
    """Which of ``names`` the CSV header has."""
    with path.open("r", newline="", encoding="utf-8-sig") as f:
        header = [h.strip() for h in next(csv.reader(f), [])]
    return [n for n in names if n in header]


def _floats(values: Sequence[str]) -> np.ndarray:
    """Strings to float64; empty or non-numeric cells become NaN."""
    try:
        return np.asarray(values, dtype=np.float64) if len(values) else EMPTY.copy()
    except ValueError:
        out = np.empty(len(values), dtype=np.float64)
        for i, v in enumerate(values):  # slow path only for files with bad cells
            try:
                out[i] = float(v)
            except ValueError:
                out[i] = np.nan
        return out


def _truthy(values: Sequence[str]) -> np.ndarray:
    return np.isin(np.char.lower(np.asarray(values, dtype=str)), ["true", "1", "yes", "t"])


# --------------------------------------------------------------------------------------
# REFLACX
# --------------------------------------------------------------------------------------


def _reflacx_metadata_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for folder in (root, root / "main_data"):
        if folder.is_dir():
            files.extend(sorted(folder.glob("metadata_phase_*.csv")))
    return files


def _read_reflacx_fixations(path: Path, *, reading_id: str, image_size: tuple[int, int]) -> Fixations:
    cols, _ = _read_csv(path, REFLACX_FIXATION_COLUMNS, "REFLACX fixations.csv")
    f = {k: _floats(v) for k, v in cols.items()}
    fix = Fixations(
        x=f["x_position"],
        y=f["y_position"],
        duration=f["timestamp_end_fixation"] - f["timestamp_start_fixation"],
        # One degree of visual angle, in image pixels (depends on zoom and screen position).
        sigma_x=f["angular_resolution_x_pixels_per_degree"],
        sigma_y=f["angular_resolution_y_pixels_per_degree"],
        shown_box=np.stack(
            [f[f"{k}_shown_from_image"] for k in ("xmin", "ymin", "xmax", "ymax")],
            axis=1,
        ),
        image_size=image_size,
        reading_id=reading_id,
    )
    return validate_fixations(fix)


def read_reflacx(root: str | Path) -> GazeRecords:
    """Read REFLACX fixations.

    ``root`` is the dataset folder (holding ``main_data/``) or ``main_data`` itself; the
    metadata tables ``metadata_phase_*.csv`` may be in either. Each metadata row is one
    reading (``id``) of image ``dicom_id`` of size ``image_size_x`` x ``image_size_y``;
    its fixations are in ``main_data/<id>/fixations.csv``. Readings with
    ``eye_tracking_data_discarded == True`` are counted and skipped. An unreadable
    fixations file is logged, counted and skipped; a missing column raises UserError.

    Returns:
        :class:`GazeRecords` with ``readings[dicom_id]`` = one :class:`Fixations` per reading.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError("REFLACX folder does not exist; pass the folder holding main_data/", root)
    meta_files = _reflacx_metadata_files(root)
    if not meta_files:
        raise UserError(
            "holds no REFLACX metadata_phase_*.csv (looked in it and in main_data/); "
            "pass the REFLACX root folder, or use --format egd for EGD-CXR",
            root,
        )
    readings: dict[str, list[Fixations]] = {}
    records = GazeRecords(format="reflacx", readings=readings)
    for meta in meta_files:
        has_discarded = _optional_columns(meta, ["eye_tracking_data_discarded"])
        cols, _ = _read_csv(meta, REFLACX_METADATA_COLUMNS + tuple(has_discarded), "REFLACX metadata table")
        discarded = (
            _truthy(cols["eye_tracking_data_discarded"]) if has_discarded else np.zeros(len(cols["id"]), dtype=bool)
        )
        sizes_x, sizes_y = _floats(cols["image_size_x"]), _floats(cols["image_size_y"])
        for i, (rid, did) in enumerate(zip(cols["id"], cols["dicom_id"], strict=True)):
            rid, did = rid.strip(), did.strip()
            if not rid or not did:
                log.warning("%s: row %d has no id or dicom_id; skipped", meta, i + 2)
                records.files_skipped.append(f"{meta}:row{i + 2}")
                continue
            if discarded[i]:
                records.readings_discarded += 1
                continue
            if not (np.isfinite(sizes_x[i]) and np.isfinite(sizes_y[i]) and sizes_x[i] > 0 and sizes_y[i] > 0):
                log.warning("%s: reading %s has no valid image_size_x/image_size_y; skipped", meta, rid)
                records.files_skipped.append(f"{meta}:{rid}")
                continue
            size = (int(sizes_x[i]), int(sizes_y[i]))
            path = next(
                (p for p in (root / "main_data" / rid / "fixations.csv", root / rid / "fixations.csv") if p.is_file()),
                None,
            )
            if path is None:
                records.readings_missing_file += 1
                log.warning("REFLACX reading %s (image %s) has no fixations.csv; skipped", rid, did)
                continue
            try:
                fix = _read_reflacx_fixations(path, reading_id=rid, image_size=size)
            except (OSError, UnicodeDecodeError, csv.Error) as exc:
                log.warning("%s: cannot read (%s); skipped", path, exc)
                records.files_skipped.append(str(path))
                continue
            readings.setdefault(did, []).append(fix)
    return records


# --------------------------------------------------------------------------------------
# EGD-CXR
# --------------------------------------------------------------------------------------


def read_egd(
    root: str | Path,
    *,
    sigma_px: float = 150.0,
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
) -> GazeRecords:
    """Read EGD-CXR (MIMIC-CXR eye-gaze) fixations.

    ``root`` holds ``master_sheet.csv`` (column ``dicom_id``: the images) and
    ``fixations.csv`` (columns ``DICOM_ID``, ``FPOGD`` duration in s, ``X_ORIGINAL``,
    ``Y_ORIGINAL`` original pixels, -1 when off the image). One reading per image (EGD-CXR
    has one radiologist). Rows repeating a ``(DICOM_ID, FPOGID)`` keep the longest ``FPOGD``
    (the eye tracker accumulates a fixation's duration); rows with ``FPOGV == 0`` are
    invalid. Images in the master sheet without fixation rows get empty readings.

    Args:
        sigma_px: Gaussian sigma in original pixels (150 px, about one degree in EGD-CXR).
        image_sizes: optional ``{dicom_id: (W, H)}`` of the original images. EGD-CXR does
            not list image sizes; without them ``image_size`` is ``None`` (or taken from
            ``image_size_x``/``image_size_y`` columns of the master sheet if present) and
            the caller sets it (the ``prior gaze`` command uses each image's own size).
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError("EGD-CXR folder does not exist; pass the folder holding master_sheet.csv", root)
    if not (sigma_px > 0):
        raise UserError(f"sigma_px must be > 0, got {sigma_px}")
    master, fix_path = root / "master_sheet.csv", root / "fixations.csv"
    for p in (master, fix_path):
        if not p.is_file():
            raise UserError(
                f"EGD-CXR file {p.name} not found; pass the EGD-CXR folder (master_sheet.csv, fixations.csv), "
                "or use --format reflacx",
                p,
            )
    size_cols = _optional_columns(master, ["image_size_x", "image_size_y"])
    mcols, _ = _read_csv(master, EGD_MASTER_COLUMNS + tuple(size_cols), "EGD-CXR master_sheet.csv")
    sizes: dict[str, tuple[int, int]] = {}
    if len(size_cols) == 2:
        sx, sy = _floats(mcols["image_size_x"]), _floats(mcols["image_size_y"])
        for did, w, h in zip(mcols["dicom_id"], sx, sy, strict=True):
            if np.isfinite(w) and np.isfinite(h) and w > 0 and h > 0:
                sizes[did.strip()] = (int(w), int(h))
    if image_sizes:
        sizes.update({k: (int(v[0]), int(v[1])) for k, v in image_sizes.items()})

    extra = _optional_columns(fix_path, ["FPOGID", "FPOGV"])
    try:
        cols, _ = _read_csv(fix_path, EGD_FIXATION_COLUMNS + tuple(extra), "EGD-CXR fixations.csv")
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read ({exc}); re-download EGD-CXR fixations.csv", fix_path) from exc
    ids = np.asarray([s.strip() for s in cols["DICOM_ID"]], dtype=str)
    dur = _floats(cols["FPOGD"])
    x, y = _floats(cols["X_ORIGINAL"]), _floats(cols["Y_ORIGINAL"])
    n_rows = ids.shape[0]
    invalid_flag = np.zeros(n_rows, dtype=bool)
    if "FPOGV" in extra:
        fv = _floats(cols["FPOGV"])
        invalid_flag = np.isfinite(fv) & (fv == 0)

    keep = np.ones(n_rows, dtype=bool)
    if "FPOGID" in extra and n_rows:
        # Keep one row per (image, fixation id): the one with the longest accumulated duration.
        fid = _floats(cols["FPOGID"])
        order = np.lexsort((np.nan_to_num(dur, nan=-np.inf), fid, ids))
        key_i, key_f = ids[order], fid[order]
        last = np.ones(n_rows, dtype=bool)
        last[:-1] = (key_i[1:] != key_i[:-1]) | ~(key_f[1:] == key_f[:-1])
        keep = np.zeros(n_rows, dtype=bool)
        keep[order[last]] = True
    x = np.where(invalid_flag, np.nan, x)

    # Group rows by image without a Python loop over rows.
    sel = np.flatnonzero(keep)
    uniq, inverse = np.unique(ids[sel], return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(uniq) + 1))
    readings: dict[str, list[Fixations]] = {}
    for k, did in enumerate(uniq.tolist()):
        rows = sel[order[bounds[k] : bounds[k + 1]]]
        fix = Fixations(
            x=x[rows],
            y=y[rows],
            duration=dur[rows],
            sigma_x=np.full(rows.shape[0], float(sigma_px)),
            sigma_y=np.full(rows.shape[0], float(sigma_px)),
            shown_box=None,
            image_size=sizes.get(did),
            reading_id=did,
        )
        readings[did] = [validate_fixations(fix)]
    for did in mcols["dicom_id"]:
        did = did.strip()
        if did and did not in readings:
            readings[did] = [
                Fixations(EMPTY, EMPTY, EMPTY, EMPTY, EMPTY, None, sizes.get(did), reading_id=did)
            ]
    return GazeRecords(format="egd", readings=dict(sorted(readings.items())))
