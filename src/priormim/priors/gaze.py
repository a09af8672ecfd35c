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

The code lives in :mod:`~priormim.priors.gaze_fixations` (data classes, checks),
:mod:`~priormim.priors.gaze_heatmap` and :mod:`~priormim.priors.gaze_readers`; every name
stays importable from here.
"""

from priormim.priors.gaze_fixations import (
    EGD_FIXATION_COLUMNS,
    EGD_MASTER_COLUMNS,
    REFLACX_FIXATION_COLUMNS,
    REFLACX_METADATA_COLUMNS,
    Fixations,
    GazeHeatmap,
    GazeRecords,
    validate_fixations,
)
from priormim.priors.gaze_heatmap import gaze_heatmap, gaze_heatmap_stats
from priormim.priors.gaze_readers import read_egd, read_reflacx


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
