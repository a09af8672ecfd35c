"""Gaze fixations of one reading, the records of a data set and the heatmap result
(:mod:`priormim.priors.gaze` has the conventions), and the checks every reader applies."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["EGD_FIXATION_COLUMNS", "EGD_MASTER_COLUMNS", "REFLACX_FIXATION_COLUMNS", "REFLACX_METADATA_COLUMNS",
           "Fixations", "GazeHeatmap", "GazeRecords", "validate_fixations"]

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

EMPTY = np.zeros(0, dtype=np.float64)  # shared empty column (copied before use)


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
