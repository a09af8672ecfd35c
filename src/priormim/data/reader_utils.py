"""Checks shared by the data-set readers (:mod:`priormim.data.readers`): folders and files
that must exist, image headers, CSVs with required columns, warnings about missing files."""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from priormim.errors import UserError
from priormim.io import read_csv_rows

logger = logging.getLogger("priormim.data.readers")  # one logger for every reader, as before the split

_DICOM_SUFFIXES = (".dcm", ".dicom")
_MAX_NAMED = 3  # how many offending files an error message names


def some(items: list, n: int = _MAX_NAMED) -> str:
    """The first ``n`` names of ``items`` for an error message (``a, b, c, ...``)."""
    names = [Path(i).name if isinstance(i, Path) else str(i) for i in items[:n]]
    return ", ".join(names) + (", ..." if len(items) > n else "")


def require_dir(path: Path, fix: str) -> Path:
    """``path`` if it is a folder, else UserError naming it and ``fix``."""
    if not path.is_dir():
        raise UserError(f"folder not found; {fix}", path)
    return path


def require_file(path: Path, fix: str) -> Path:
    """``path`` if it is a file, else UserError naming it and ``fix``."""
    if not path.is_file():
        raise UserError(f"file not found; {fix}", path)
    return path


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` read from the header only (PIL, or pydicom for DICOM)."""
    try:
        if path.suffix.lower() in _DICOM_SUFFIXES:
            import pydicom

            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
            return int(ds.Rows), int(ds.Columns)
        with Image.open(path) as im:
            w, h = im.size
        return h, w
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, AttributeError) as exc:
        raise UserError(f"cannot read image header ({exc}); the file is corrupt or not an image", path) from exc
    except Exception as exc:  # pydicom raises many types for broken files
        raise UserError(f"cannot read DICOM header ({type(exc).__name__}: {exc}); the file is corrupt", path) from exc


def read_csv(path: Path, required: tuple[str, ...], fix: str) -> tuple[list[str], list[dict[str, str]]]:
    """Rows of a CSV as dicts (:func:`read_csv_rows`). UserError on missing columns."""
    require_file(path, fix)
    header, rows = read_csv_rows(path)
    missing = [c for c in required if c not in header]
    if missing:
        raise UserError(
            f"CSV is missing column(s) {', '.join(repr(c) for c in missing)} "
            f"(found {', '.join(repr(h) for h in header if h)}); fix the header row",
            path,
        )
    return header, rows


def warn_missing(missing: list[str], total: int, where: Path, source: Path) -> None:
    if missing:
        logger.warning(
            "%s: %d of %d listed images not found under %s (e.g. %s); they are skipped",
            source,
            len(missing),
            total,
            where,
            some(missing),
        )
