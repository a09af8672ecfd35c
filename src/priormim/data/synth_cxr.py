"""Synthetic chest X-rays with lesions and simulated radiologist gaze (VP-MIM's built-in data).

Real gaze data (REFLACX, EGD-CXR) need credentialed access, so VP-MIM is developed on these
images, whose simulated scan paths are written in REFLACX's own file format::

    out/
      images/cxr_00000.png            8-bit grey, size x size
      labels.csv                      image, label (0/1), lesion_type (none/opacity/nodule/effusion)
      gaze/main_data/metadata_phase_3.csv           REFLACX metadata (id, dicom_id, image_size_x, ...)
      gaze/main_data/<id>/fixations.csv             REFLACX fixations (1-2 readers per image)

so ``priormim prior gaze --format reflacx --root out/gaze --images out/images`` runs on
them unchanged. As in REFLACX, fixations are in pixels of the "original" image
(``ORIGINAL_SIZE`` px square, like a DICOM) and the PNG is a downsized copy.

The image is an attenuation map built in normalised coordinates ``u`` (left to right) and
``v`` (top to bottom), so every size looks the same: soft tissue, dark lung fields with
vascular markings, posterior and anterior ribs, clavicles, spine, mediastinum, heart,
diaphragm domes with costophrenic angles, a gastric bubble, then blur, exposure/window
variation and quantum noise. Lesions: ``opacity`` (soft patchy blob in a lung),
``nodule`` (small round spot), ``effusion`` (homogeneous density at a costophrenic angle
with a meniscus), with contrasts from subtle to obvious.

The image is drawn in :mod:`~priormim.data.synth_cxr_anatomy`, the scan paths in
:mod:`~priormim.data.synth_cxr_gaze`; this module holds the public API and the files.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from priormim.data.synth_cxr_anatomy import LESION_MATCHES, render_cxr
from priormim.data.synth_cxr_gaze import READINGS_PER_IMAGE, scan_path
from priormim.errors import UserError
from priormim.io import atomic_write_bytes, write_png
from priormim.priors.gaze import REFLACX_FIXATION_COLUMNS, Fixations

__all__ = [
    "LESION_MATCHES",
    "LESION_TYPES",
    "ORIGINAL_SIZE",
    "SyntheticCXR",
    "synthesize_cxr",
    "write_synthetic_cxr",
    "write_reflacx_gaze",
]

LESION_TYPES = ("opacity", "nodule", "effusion")
ORIGINAL_SIZE = 2048  # the "DICOM" size fixation coordinates refer to (as in REFLACX)

# Full REFLACX fixations.csv column order (the reader needs only REFLACX_FIXATION_COLUMNS).
REFLACX_FIXATION_HEADER = (
    "timestamp_start_fixation",
    "timestamp_end_fixation",
    "x_position",
    "y_position",
    "pupil_area_normalized",
    "window_width",
    "window_level",
    "angular_resolution_x_pixels_per_degree",
    "angular_resolution_y_pixels_per_degree",
    "xmin_shown_from_image",
    "ymin_shown_from_image",
    "xmax_shown_from_image",
    "ymax_shown_from_image",
    "xmin_in_screen_coordinates",
    "ymin_in_screen_coordinates",
    "xmax_in_screen_coordinates",
    "ymax_in_screen_coordinates",
)
assert set(REFLACX_FIXATION_COLUMNS) <= set(REFLACX_FIXATION_HEADER)

# REFLACX phase 2/3 label columns (certainty 0-5) and the one each lesion type sets.
REFLACX_LABELS = (
    "Abnormal mediastinal contour",
    "Acute fracture",
    "Atelectasis",
    "Consolidation",
    "Enlarged cardiac silhouette",
    "Enlarged hilum",
    "Groundglass opacity",
    "Hiatal hernia",
    "High lung volume / emphysema",
    "Interstitial lung disease",
    "Lung nodule or mass",
    "Pleural abnormality",
    "Pneumothorax",
    "Pulmonary edema",
)
_LESION_LABEL = {"opacity": "Consolidation", "nodule": "Lung nodule or mass", "effusion": "Pleural abnormality"}


@dataclass
class SyntheticCXR:
    """One synthetic chest X-ray.

    Attributes:
        image: uint8 ``[H, W]``. label: 1 if a lesion is present. lesion_type: ``"none"``
        or one of :data:`LESION_TYPES`. lesion_mask: bool ``[H, W]``.
        fixations: one :class:`~priormim.priors.gaze.Fixations` per simulated reader, in
            pixels of the ``ORIGINAL_SIZE`` original (``image_size`` set), with REFLACX extras
            in ``extra`` (``timestamp_start``, screen box, ...) for writing the CSV.
    """

    image: np.ndarray
    label: int
    lesion_type: str
    lesion_mask: np.ndarray
    fixations: list[Fixations]
    extra: list[dict[str, np.ndarray]]


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def synthesize_cxr(
    *,
    size: int = 128,
    seed: int | Sequence[int] = 0,
    lesion: str | None = None,
    n_readers: int | None = None,
    lesion_gain: float = 1.0,
    lesion_size: float = 1.0,
    lesion_match: str = "none",
) -> SyntheticCXR:
    """One synthetic chest X-ray with its lesion mask and simulated gaze.

    Args:
        size: image side in pixels (square). seed: int or sequence of ints (e.g.
            ``(seed, index)``); the output is a pure function of ``(size, seed, lesion,
            n_readers)``.
        lesion: ``None`` / ``"none"`` (normal) or one of :data:`LESION_TYPES`.
        n_readers: simulated readers (default: 1 or 2, drawn from the seed; 2 with probability
            0.159, so that the mean is REFLACX's 3,032 readings / 2,616 images).
        lesion_gain, lesion_size: multiply every lesion's contrast and the radius of nodules and
            opacities (1 = the default, subtle-to-obvious, range; > 1 makes the task easier at a small
            image size, see ``benchmarks/cxr_gaze_bench.py``). The random draws do not change.
        lesion_match: ``"none"`` (default), ``"histogram"`` or ``"local"``. Both compare an
            abnormal image with the render of the same anatomy without its lesion (same imaging
            chain and noise). ``"histogram"``: the image takes that render's histogram, so no
            global intensity statistic tells lesion from none. ``"local"``: the lesion's
            difference to that render is high-passed (minus its Gaussian blur of 1/24 of the
            side), so the lesion keeps its edges and texture but no longer brightens its region;
            only a local reading finds it, which a random encoder's mean-pooled features do
            not (``benchmarks/cxr_gaze_bench.py``). Normal images and the random draws are the
            same as with ``"none"``.
    Returns:
        :class:`SyntheticCXR`; fixations are in pixels of an ``ORIGINAL_SIZE`` square original.
    """
    lesion = "none" if lesion is None else str(lesion).lower()
    if lesion not in ("none", *LESION_TYPES):
        raise UserError(f"unknown lesion type {lesion!r}; use none, {', '.join(LESION_TYPES)}")
    if lesion_match not in LESION_MATCHES:
        raise UserError(f"unknown lesion_match {lesion_match!r}; use {', '.join(LESION_MATCHES)}")
    if size < 32:
        raise UserError(f"synthetic chest X-ray size must be at least 32 px, got {size}")
    rng = np.random.default_rng(list(seed) if isinstance(seed, Sequence) else seed)
    img, mask, an, _, center = render_cxr(
        rng, size, lesion, gain=float(lesion_gain), grow=float(lesion_size), match=lesion_match
    )
    orig = max(ORIGINAL_SIZE, size)
    if n_readers is None:  # 1 or 2, with REFLACX's mean readings per image (synth_cxr_gaze.GAZE_STATS)
        n_readers = 1 + int(rng.random() < READINGS_PER_IMAGE - 1.0)
    n_readers = int(n_readers)
    fixations, extras = [], []
    for r in range(n_readers):
        fix, extra = scan_path(rng, an, lesion, center, orig=orig, reading_id=f"reader{r + 1}")
        fixations.append(fix)
        extras.append(extra)
    return SyntheticCXR(
        image=np.clip(np.round(img * 255), 0, 255).astype(np.uint8),
        label=int(lesion != "none"),
        lesion_type=lesion,
        lesion_mask=mask,
        fixations=fixations,
        extra=extras,
    )


def _csv_bytes(header: Sequence[str], rows: list[Sequence]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode()


def _fixations_csv(fix: Fixations, extra: dict[str, np.ndarray]) -> bytes:
    n = len(fix)
    cols = {
        "timestamp_start_fixation": extra["timestamp_start_fixation"],
        "timestamp_end_fixation": extra["timestamp_end_fixation"],
        "x_position": fix.x.astype(np.int64),
        "y_position": fix.y.astype(np.int64),
        "pupil_area_normalized": extra["pupil_area_normalized"],
        "window_width": extra["window_width"],
        "window_level": extra["window_level"],
        "angular_resolution_x_pixels_per_degree": fix.sigma_x.astype(np.int64),
        "angular_resolution_y_pixels_per_degree": fix.sigma_y.astype(np.int64),
        "xmin_shown_from_image": fix.shown_box[:, 0].astype(np.int64),
        "ymin_shown_from_image": fix.shown_box[:, 1].astype(np.int64),
        "xmax_shown_from_image": fix.shown_box[:, 2].astype(np.int64),
        "ymax_shown_from_image": fix.shown_box[:, 3].astype(np.int64),
        "xmin_in_screen_coordinates": extra["screen"][:, 0].astype(np.int64),
        "ymin_in_screen_coordinates": extra["screen"][:, 1].astype(np.int64),
        "xmax_in_screen_coordinates": extra["screen"][:, 2].astype(np.int64),
        "ymax_in_screen_coordinates": extra["screen"][:, 3].astype(np.int64),
    }
    table = np.stack([np.asarray(cols[c]).astype(str) for c in REFLACX_FIXATION_HEADER], axis=1)
    return _csv_bytes(REFLACX_FIXATION_HEADER, table.tolist() if n else [])


def _reading_rows(main: Path, index: int, dicom_id: str, s: SyntheticCXR) -> list[list]:
    """Write one image's readings to ``main/<id>/fixations.csv``; return its metadata rows."""
    rows = []
    labels = [4 if _LESION_LABEL.get(s.lesion_type) == name else 0 for name in REFLACX_LABELS]
    for r, (fix, extra) in enumerate(zip(s.fixations, s.extra, strict=True)):
        rid = f"P3{r + 1:02d}R{index:06d}"  # REFLACX style: phase, reader, running number
        (main / rid).mkdir(parents=True, exist_ok=True)
        (main / rid / "fixations.csv").write_bytes(_fixations_csv(fix, extra))
        rows.append([rid, "train", "False", f"images/{dicom_id}.png", dicom_id, f"{index:08d}",
                     fix.image_size[0], fix.image_size[1], *labels, "False", ""])
    return rows


def _write_metadata(main: Path, rows: list[list], phase: int = 3) -> Path:
    header = ["id", "split", "eye_tracking_data_discarded", "image", "dicom_id", "subject_id",
              "image_size_x", "image_size_y", *REFLACX_LABELS, "Support devices", "Other"]
    meta = main / f"metadata_phase_{phase}.csv"
    atomic_write_bytes(meta, _csv_bytes(header, rows))
    return meta


def write_reflacx_gaze(gaze_root: str | Path, items: Sequence[tuple[str, SyntheticCXR]]) -> Path:
    """Write simulated readings as REFLACX files under ``gaze_root/main_data/``.

    Args:
        items: ``(dicom_id, SyntheticCXR)`` pairs; reader ``r`` of item ``i`` becomes reading
            ``P3{r+1:02d}R{i:06d}`` with ``main_data/<id>/fixations.csv``.
    Returns:
        Path of the metadata table ``main_data/metadata_phase_3.csv``.
    """
    main = Path(gaze_root) / "main_data"
    main.mkdir(parents=True, exist_ok=True)
    rows = [row for i, (did, s) in enumerate(items) for row in _reading_rows(main, i, did, s)]
    return _write_metadata(main, rows)


def write_synthetic_cxr(
    out: str | Path, *, n: int, size: int = 128, seed: int = 0, lesion_rate: float = 0.5,
    lesion_gain: float = 1.0, lesion_size: float = 1.0, lesion_match: str = "none",
) -> list[Path]:
    """Write ``n`` synthetic chest X-rays, ``labels.csv`` and REFLACX-format gaze to ``out``.

    Image ``i`` depends only on ``(seed, i, size, lesion_rate)``; a lesion is present with
    probability ``lesion_rate``, its type uniform over :data:`LESION_TYPES`. ``labels.csv``
    and the metadata table are written last, so their presence marks a finished run.

    Returns:
        The written image paths ``out/images/cxr_00000.png, ...``.
    """
    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    if not 0.0 <= lesion_rate <= 1.0:
        raise UserError(f"--lesion-rate must be in [0, 1], got {lesion_rate}")
    out = Path(out)
    img_dir, main = out / "images", out / "gaze" / "main_data"
    img_dir.mkdir(parents=True, exist_ok=True)
    main.mkdir(parents=True, exist_ok=True)
    paths, label_rows, meta_rows = [], [], []
    for i in range(n):
        pick = np.random.default_rng([seed, i, 7])
        lesion = LESION_TYPES[int(pick.integers(3))] if pick.random() < lesion_rate else "none"
        name = f"cxr_{i:05d}"
        s = synthesize_cxr(size=size, seed=(seed, i), lesion=lesion, lesion_gain=lesion_gain, lesion_size=lesion_size,
                           lesion_match=lesion_match)
        path = img_dir / f"{name}.png"
        write_png(path, s.image)
        paths.append(path)
        label_rows.append([path.name, s.label, s.lesion_type])
        meta_rows.extend(_reading_rows(main, i, name, s))
    _write_metadata(main, meta_rows)
    atomic_write_bytes(out / "labels.csv", _csv_bytes(["image", "label", "lesion_type"], label_rows))
    return paths
