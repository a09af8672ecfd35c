"""Radiologist gaze for VP-MIM: REFLACX / EGD-CXR fixation readers and fixation heatmaps.

Both datasets give fixations in pixels of the *original* chest X-ray (the DICOM), while
models are trained on resized images; :func:`gaze_heatmap` rescales coordinates and
Gaussian widths from ``Fixations.image_size`` to the requested output size.

Conventions
-----------
* ``image_size`` is ``(W, H)`` (x first, as in the CSV columns); ``out_size`` and every
  returned array are ``(H, W)`` (numpy shape order), so ``out_size=image.shape`` is right.
* A fixation at integer pixel ``x`` covers the continuous interval ``[x, x + 1)``; its
  Gaussian is centred on ``x + 0.5``. Shown-region boxes ``(xmin, ymin, xmax, ymax)`` are
  half-open, ``[xmin, xmax) x [ymin, ymax)``, as in the REFLACX reference code.
* Each fixation contributes a 2-D Gaussian (sigma = one degree of visual angle) weighted by
  its duration and integrated exactly over each output pixel (``erf`` differences), so
  tiny sigmas at low resolution keep their mass. Mass falling outside the image or outside
  the region shown to the reader at that fixation is cut off, as in REFLACX's own code.
* Each reading (one reader, one image) is normalised to sum 1; several readings of the
  same image are averaged, so the result sums to 1, or is all zero when no reading has a
  valid fixation (downstream masking then falls back to random masking).

File formats are described in ``docs/vpmim_gaze.md``.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import ndtr

from priormim.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "Fixations",
    "GazeRecords",
    "GazeHeatmap",
    "read_reflacx",
    "read_egd",
    "gaze_heatmap",
    "gaze_heatmap_stats",
    "validate_fixations",
    "REFLACX_FIXATION_COLUMNS",
    "REFLACX_METADATA_COLUMNS",
    "EGD_FIXATION_COLUMNS",
    "EGD_MASTER_COLUMNS",
]

# Columns the readers need; other columns are ignored.
REFLACX_METADATA_COLUMNS = ("id", "dicom_id", "image_size_x", "image_size_y")
REFLACX_FIXATION_COLUMNS = (
    "timestamp_start_fixation",
    "timestamp_end_fixation",
    "x_position",
    "y_position",
    "angular_resolution_x_pixels_per_degree",
    "angular_resolution_y_pixels_per_degree",
    "xmin_shown_from_image",
    "ymin_shown_from_image",
    "xmax_shown_from_image",
    "ymax_shown_from_image",
)
EGD_MASTER_COLUMNS = ("dicom_id",)
EGD_FIXATION_COLUMNS = ("DICOM_ID", "FPOGD", "X_ORIGINAL", "Y_ORIGINAL")

_EMPTY = np.zeros(0, dtype=np.float64)


# --------------------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------------------


@dataclass(eq=False)
class Fixations:
    """The fixations of one reading (one reader looking at one image).

    Attributes:
        x, y: ``[N]`` fixation position in pixels of the original image (column, row).
        duration: ``[N]`` fixation duration in seconds.
        sigma_x, sigma_y: ``[N]`` Gaussian sigma in original pixels (one degree of visual
            angle for REFLACX; a fixed pixel sigma for EGD-CXR).
        shown_box: ``[N, 4]`` ``(xmin, ymin, xmax, ymax)`` part of the image shown on the
            screen at each fixation (original pixels, half-open), or ``None`` = whole image.
        image_size: ``(W, H)`` of the original image the coordinates refer to, or ``None``
            when the dataset does not say (EGD-CXR); set it before calling
            :func:`gaze_heatmap`, e.g. ``dataclasses.replace(f, image_size=(w, h))``.
        reading_id: dataset id of the reading (REFLACX ``id``; EGD-CXR ``dicom_id``).
        dropped_outside, dropped_nonpositive_duration, dropped_invalid: fixations of this
            reading the reader dropped (outside the image or shown region; duration <= 0;
            missing / non-numeric values or sigma <= 0).
    """

    x: np.ndarray
    y: np.ndarray
    duration: np.ndarray
    sigma_x: np.ndarray
    sigma_y: np.ndarray
    shown_box: np.ndarray | None = None
    image_size: tuple[int, int] | None = None
    reading_id: str = ""
    dropped_outside: int = 0
    dropped_nonpositive_duration: int = 0
    dropped_invalid: int = 0

    def __post_init__(self) -> None:
        for name in ("x", "y", "duration", "sigma_x", "sigma_y"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64).reshape(-1))
        n = self.x.shape[0]
        for name in ("y", "duration", "sigma_x", "sigma_y"):
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"Fixations.{name} has {getattr(self, name).shape[0]} values, x has {n}")
        if self.shown_box is not None:
            self.shown_box = np.asarray(self.shown_box, dtype=np.float64).reshape(-1, 4)
            if self.shown_box.shape[0] != n:
                raise ValueError(f"Fixations.shown_box has {self.shown_box.shape[0]} rows, x has {n}")
        if self.image_size is not None:
            w, h = (int(v) for v in self.image_size)
            if w <= 0 or h <= 0:
                raise ValueError(f"Fixations.image_size must be positive (W, H), got {self.image_size}")
            self.image_size = (w, h)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_dropped(self) -> int:
        return self.dropped_outside + self.dropped_nonpositive_duration + self.dropped_invalid


@dataclass
class GazeRecords:
    """All readings of a gaze dataset, keyed by ``dicom_id`` (several readers per image).

    ``readings`` holds every image the dataset lists; an image whose readings have no valid
    fixation (or no fixation rows at all) holds empty :class:`Fixations`.
    """

    format: str
    readings: dict[str, list[Fixations]]
    readings_discarded: int = 0  # REFLACX eye_tracking_data_discarded == True
    readings_missing_file: int = 0  # listed in the metadata, fixations.csv absent
    files_skipped: list[str] = field(default_factory=list)  # unreadable fixation files

    def _total(self, attr: str) -> int:
        return int(sum(getattr(f, attr) for fs in self.readings.values() for f in fs))

    @property
    def n_images(self) -> int:
        return len(self.readings)

    @property
    def n_readings(self) -> int:
        return sum(len(fs) for fs in self.readings.values())

    @property
    def n_fixations(self) -> int:
        return int(sum(len(f) for fs in self.readings.values() for f in fs))

    @property
    def dropped_outside(self) -> int:
        return self._total("dropped_outside")

    @property
    def dropped_nonpositive_duration(self) -> int:
        return self._total("dropped_nonpositive_duration")

    @property
    def dropped_invalid(self) -> int:
        return self._total("dropped_invalid")

    @property
    def images_without_fixations(self) -> int:
        return sum(1 for fs in self.readings.values() if sum(len(f) for f in fs) == 0)

    def summary(self) -> dict[str, int | str]:
        return {
            "format": self.format,
            "images": self.n_images,
            "readings": self.n_readings,
            "fixations": self.n_fixations,
            "dropped_outside": self.dropped_outside,
            "dropped_nonpositive_duration": self.dropped_nonpositive_duration,
            "dropped_invalid": self.dropped_invalid,
            "images_without_fixations": self.images_without_fixations,
            "readings_discarded": self.readings_discarded,
            "readings_missing_file": self.readings_missing_file,
            "files_skipped": len(self.files_skipped),
        }


@dataclass
class GazeHeatmap:
    """A gaze heatmap with the bookkeeping of what went into it.

    Attributes:
        heatmap: ``float32 [H, W]``, sums to 1, or all zero when ``empty``.
        n_readings: readings given; ``n_readings_used``: readings with mass in the frame.
        n_fixations: fixations that contributed.
        dropped_*: dropped fixations, those the reader dropped plus those dropped here.
    """

    heatmap: np.ndarray
    n_readings: int
    n_readings_used: int
    n_fixations: int
    dropped_outside: int
    dropped_nonpositive_duration: int
    dropped_invalid: int

    @property
    def empty(self) -> bool:
        return self.n_readings_used == 0

    def stats(self) -> dict[str, int | bool]:
        return {
            "n_readings": self.n_readings,
            "n_readings_used": self.n_readings_used,
            "n_fixations": self.n_fixations,
            "dropped_outside": self.dropped_outside,
            "dropped_nonpositive_duration": self.dropped_nonpositive_duration,
            "dropped_invalid": self.dropped_invalid,
            "empty": self.empty,
        }


# --------------------------------------------------------------------------------------
# Validation (shared by the readers and the heatmap)
# --------------------------------------------------------------------------------------


def validate_fixations(fix: Fixations) -> Fixations:
    """Drop invalid fixations and add them to the reading's drop counters.

    Dropped, in this order: missing / non-finite values or sigma <= 0 (``dropped_invalid``),
    duration <= 0 (``dropped_nonpositive_duration``), position outside the image (when
    ``image_size`` is known) or outside the shown region (``dropped_outside``).
    Returns a new :class:`Fixations` (the input is not modified).
    """
    finite = (
        np.isfinite(fix.x)
        & np.isfinite(fix.y)
        & np.isfinite(fix.duration)
        & np.isfinite(fix.sigma_x)
        & np.isfinite(fix.sigma_y)
        & (fix.sigma_x > 0)
        & (fix.sigma_y > 0)
    )
    if fix.shown_box is not None:
        box = fix.shown_box
        finite &= np.isfinite(box).all(axis=1) & (box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])
    positive = finite & (fix.duration > 0)
    inside = positive & (fix.x >= 0) & (fix.y >= 0)
    if fix.image_size is not None:
        w, h = fix.image_size
        inside &= (fix.x < w) & (fix.y < h)
    if fix.shown_box is not None:
        box = fix.shown_box
        # Closed box: a fixation on the last shown pixel row/column still counts.
        inside &= (fix.x >= box[:, 0]) & (fix.x <= box[:, 2]) & (fix.y >= box[:, 1]) & (fix.y <= box[:, 3])
    n_invalid = int((~finite).sum())
    n_duration = int((finite & ~positive).sum())
    n_outside = int((positive & ~inside).sum())
    if n_invalid == n_duration == n_outside == 0:
        return fix
    keep = inside
    return Fixations(
        x=fix.x[keep],
        y=fix.y[keep],
        duration=fix.duration[keep],
        sigma_x=fix.sigma_x[keep],
        sigma_y=fix.sigma_y[keep],
        shown_box=None if fix.shown_box is None else fix.shown_box[keep],
        image_size=fix.image_size,
        reading_id=fix.reading_id,
        dropped_outside=fix.dropped_outside + n_outside,
        dropped_nonpositive_duration=fix.dropped_nonpositive_duration + n_duration,
        dropped_invalid=fix.dropped_invalid + n_invalid,
    )


# --------------------------------------------------------------------------------------
# Heatmap
# --------------------------------------------------------------------------------------


def _pixel_profiles(mu: np.ndarray, sigma: np.ndarray, lo: np.ndarray, hi: np.ndarray, n: int) -> np.ndarray:
    """Gaussian mass of each pixel ``[j, j+1)``, cut to the interval ``[lo, hi)``.

    Args:
        mu, sigma, lo, hi: ``[N]`` in output pixels. n: number of pixels.
    Returns:
        ``[N, n]`` float64; row sums are at most 1 (mass outside the frame or box is lost).
    """
    j = np.arange(n, dtype=np.float64)[None, :]
    a = np.maximum(j, lo[:, None])
    b = np.minimum(j + 1.0, hi[:, None])
    s = np.maximum(sigma, 1e-9)[:, None]
    prof = ndtr((b - mu[:, None]) / s) - ndtr((a - mu[:, None]) / s)
    return np.where(b > a, np.maximum(prof, 0.0), 0.0)


def gaze_heatmap_stats(readings: Sequence[Fixations], *, out_size: tuple[int, int]) -> GazeHeatmap:
    """Duration-weighted fixation heatmap of one image, with counts of what was dropped.

    All fixations of all readings are rendered in one matrix product: per fixation a 1-D
    x profile ``[N, W]`` and y profile ``[N, H]``; ``heat = (w * gy).T @ gx``.

    Args:
        readings: the readings (readers) of one image; each needs ``image_size``.
        out_size: ``(H, W)`` of the heatmap (numpy shape order).
    Returns:
        :class:`GazeHeatmap` whose ``heatmap`` is float32 ``[H, W]`` summing to 1 (or zero).
    """
    out_h, out_w = (int(v) for v in out_size)
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"out_size must be positive (H, W), got {out_size}")
    valid = []
    for fix in readings:
        if fix.image_size is None:
            raise ValueError(
                f"reading {fix.reading_id!r} has no image_size; set it (dataclasses.replace(fix, "
                "image_size=(W, H))) or pass image_sizes to read_egd"
            )
        valid.append(validate_fixations(fix))
    dropped = {
        k: sum(getattr(f, k) for f in valid)
        for k in ("dropped_outside", "dropped_nonpositive_duration", "dropped_invalid")
    }
    counts = np.array([len(f) for f in valid], dtype=np.int64)
    if counts.sum() == 0:
        return GazeHeatmap(np.zeros((out_h, out_w), np.float32), len(valid), 0, 0, **dropped)

    nonempty = [f for f in valid if len(f)]
    reading = np.repeat(np.arange(len(nonempty)), [len(f) for f in nonempty])
    sx = np.concatenate([np.full(len(f), out_w / f.image_size[0]) for f in nonempty])
    sy = np.concatenate([np.full(len(f), out_h / f.image_size[1]) for f in nonempty])
    x = np.concatenate([f.x for f in nonempty])
    y = np.concatenate([f.y for f in nonempty])
    dur = np.concatenate([f.duration for f in nonempty])
    sig_x = np.concatenate([f.sigma_x for f in nonempty]) * sx
    sig_y = np.concatenate([f.sigma_y for f in nonempty]) * sy
    box = np.concatenate(
        [
            f.shown_box if f.shown_box is not None else np.array([[0.0, 0.0, *f.image_size]]).repeat(len(f), 0)
            for f in nonempty
        ]
    )
    gx = _pixel_profiles((x + 0.5) * sx, sig_x, box[:, 0] * sx, box[:, 2] * sx, out_w)
    gy = _pixel_profiles((y + 0.5) * sy, sig_y, box[:, 1] * sy, box[:, 3] * sy, out_h)

    # Mass of each fixation inside the frame and its shown box (separable: product of sums).
    mass = dur * gx.sum(axis=1) * gy.sum(axis=1)
    reading_mass = np.bincount(reading, weights=mass, minlength=len(nonempty))
    used = reading_mass > 0
    n_used = int(used.sum())
    if n_used == 0:
        return GazeHeatmap(np.zeros((out_h, out_w), np.float32), len(valid), 0, 0, **dropped)
    # Each reading sums to 1, readings are averaged: weight = duration / mass_r / n_used.
    w = np.where(used[reading], dur / np.where(used, reading_mass, 1.0)[reading], 0.0) / n_used
    heat = (gy * w[:, None]).T @ gx
    heat /= heat.sum()  # remove float round-off so the float32 map sums to 1
    return GazeHeatmap(
        heat.astype(np.float32),
        n_readings=len(valid),
        n_readings_used=n_used,
        n_fixations=int((used[reading] & (mass > 0)).sum()),
        **dropped,
    )


def gaze_heatmap(readings: Sequence[Fixations], *, out_size: tuple[int, int]) -> np.ndarray:
    """Gaze heatmap of one image: float32 ``[H, W]`` summing to 1, or all zero.

    Args:
        readings: the readings (readers) of one image, each with ``image_size`` set.
        out_size: ``(H, W)`` of the heatmap (numpy shape order, e.g. ``image.shape``).

    See :func:`gaze_heatmap_stats` for the counts of dropped fixations.
    """
    return gaze_heatmap_stats(readings, out_size=out_size).heatmap


# --------------------------------------------------------------------------------------
# CSV helpers
# --------------------------------------------------------------------------------------


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
        return np.asarray(values, dtype=np.float64) if len(values) else _EMPTY.copy()
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
                Fixations(_EMPTY, _EMPTY, _EMPTY, _EMPTY, _EMPTY, None, sizes.get(did), reading_id=did)
            ]
    return GazeRecords(format="egd", readings=dict(sorted(readings.items())))
