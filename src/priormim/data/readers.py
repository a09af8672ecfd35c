"""Readers for the downstream datasets: file lists and labels, no pixel loading.

* :func:`read_segmentation_folder`: any ``images/`` + ``masks/`` folder pair (DCA1, XCAD,
  CHUAC, synthetic angiograms, ...).
* :func:`read_arcade`: ARCADE (Popov et al. 2024), syntax task, COCO polygons -> vessel masks.
* :func:`read_class_folders`: one sub-folder per class (e.g. Kaggle chest_xray ``NORMAL/``,
  ``PNEUMONIA/``).
* :func:`read_chestxray14`: NIH ChestX-ray14, 14 findings, multi-label.
* :func:`read_rsna_pneumonia`: RSNA Pneumonia Detection Challenge, binary.
* :func:`read_labels_csv`: generic ``image,label`` or ``image,<one 0/1 column per label>`` CSV.

Every user mistake raises :class:`priormim.errors.UserError` with one line naming the file and
the fix. Images are opened only where a check needs their size.

The readers live in :mod:`priormim.data.readers_seg` and :mod:`priormim.data.readers_cls`
(shared checks in :mod:`priormim.data.reader_utils`); their names stay importable from here.
"""

from priormim.data.readers_cls import (
    CXR14_LABELS,
    ClassificationSet,
    read_chestxray14,
    read_class_folders,
    read_labels_csv,
    read_rsna_pneumonia,
)
from priormim.data.readers_seg import ArcadeSample, SegPair, read_arcade, read_segmentation_folder
from priormim.io import read_csv_rows  # noqa: F401 - re-exported (it lived here)

__all__ = [
    "SegPair",
    "ArcadeSample",
    "ClassificationSet",
    "CXR14_LABELS",
    "read_segmentation_folder",
    "read_arcade",
    "read_class_folders",
    "read_chestxray14",
    "read_rsna_pneumonia",
    "read_labels_csv",
]

