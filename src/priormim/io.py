"""Reading and writing grey-scale X-ray images.

Every reader returns ``float32`` arrays of shape ``[H, W]`` scaled to ``[0, 1]`` whatever the
source bit depth (8-bit, 16-bit PNG/TIFF, DICOM) or channel count (RGB is averaged to grey).
DICOM files go through :mod:`priormim.io_dicom` (decoders for the compressed transfer syntaxes,
Modality and VOI LUT / window, MONOCHROME1, colour to grey; a multi-frame file is refused with
a pointer to ``priormim ingest``).
Failures raise :class:`priormim.errors.UserError` naming the file.
"""

from __future__ import annotations

import csv
import errno
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from priormim.errors import UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".dcm", ".dicom")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: str | Path) -> list[Path]:
    """Sorted image files directly inside ``folder``.

    Raises UserError if the folder is missing or holds no images.
    """
    folder = Path(folder)
    if not folder.exists():
        raise UserError("folder does not exist; check the path", folder)
    if not folder.is_dir():
        raise UserError("is not a folder; pass the folder that holds the images", folder)
    files = sorted(p for p in folder.iterdir() if is_image_file(p))
    if not files:
        raise UserError(
            f"holds no images ({', '.join(IMAGE_SUFFIXES)}); point to the folder with the image files",
            folder,
        )
    return files


def refuse_stem_clashes(files: list[Path], folder: str | Path) -> None:
    """UserError when two files share a stem (``a.png``, ``a.jpg``): outputs named by the stem
    (predicted masks) would silently keep one of them."""
    seen: dict[str, Path] = {}
    for f in files:
        other = seen.setdefault(f.stem, f)
        if other is not f:
            raise UserError(f"'{other.name}' and '{f.name}' share the name '{f.stem}' (outputs are named by it); "
                            "rename or move one of them", folder)


def _to_unit_float(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim == 3:
        if arr.shape[-1] == 4:  # drop alpha
            arr = arr[..., :3]
        arr = arr.astype(np.float64).mean(axis=-1)
    if arr.ndim != 2:
        raise UserError(f"unsupported image shape {arr.shape}; expected a 2-D grey or RGB image", path)
    if np.issubdtype(arr.dtype, np.bool_):
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        # 16-bit images often use only 12 bits; scale by the actual maximum in that case.
        top = float(info.max) if info.max <= 255 else float(max(int(arr.max()), 1))
        return (arr.astype(np.float32) - float(min(info.min, 0))) / top
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise UserError("image contains NaN or infinite values; re-export it", path)
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def _read_dicom(path: Path) -> np.ndarray:
    # The DICOM pipeline (decoders, Modality/VOI LUT, MONOCHROME1, colour, multi-frame rule)
    # lives in priormim.io_dicom; read_gray stays the one entry point every command uses.
    from priormim.io_dicom import read_dicom_gray

    return read_dicom_gray(path)


def read_gray(path: str | Path) -> np.ndarray:
    """Read an image as ``float32 [H, W]`` in ``[0, 1]``."""
    path = Path(path)
    if not path.exists():
        raise UserError("file does not exist", path)
    if path.suffix.lower() in (".dcm", ".dicom"):
        return _read_dicom(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("L")  # Pillow knows these colour spaces (CMYK JPEG: inverted ink)
            elif im.mode in ("I;16", "I;16B", "I;16L"):
                arr = np.asarray(im, dtype=np.uint16)
                return _to_unit_float(arr, path)
            elif im.mode.startswith("I;16S") or im.mode == "I":
                arr = np.asarray(im).astype(np.int64)
                if arr.size and arr.min() < 0:  # signed data (CT-like TIFF): scale its own range, never clip
                    return _to_unit_float(arr.astype(np.float64), path)
                arr = arr.astype(np.uint32 if arr.size and arr.max() > 65535 else np.uint16)
                return _to_unit_float(arr, path)
            elif im.mode == "F":
                return _to_unit_float(np.asarray(im, dtype=np.float32), path)
            elif im.mode == "1":
                im = im.convert("L")
            arr = np.asarray(im)
    except UserError:
        raise
    except Image.DecompressionBombError as exc:
        raise UserError(f"image is too large to decode safely ({exc}); downscale it, or raise "
                        "PIL.Image.MAX_IMAGE_PIXELS if you trust the file", path) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"cannot read image ({exc}); the file is corrupt, truncated or not an image", path) from exc
    return _to_unit_float(arr, path)


def read_mask(path: str | Path, *, max_grey_fraction: float = 0.01) -> np.ndarray:
    """Read a binary mask as ``bool [H, W]``: foreground is the higher of its two values.

    Label images store masks as 0/255, 0/1 (many public data sets), 0/100 or 0/65535: the
    rule is relative to the file's own values, never to the bit depth, so all read the same.
    A mask with one value is empty when that value is 0 and full otherwise. Hand-drawn masks
    are sometimes saved with a few anti-aliased pixels (one DCA1 mask has 26 grey pixels among
    0/255); up to ``max_grey_fraction`` of such pixels are thresholded at the midpoint of the
    two values with a warning. More than that is a grey-scale image, not a mask: UserError.
    """
    path = Path(path)
    return binarize_mask(read_gray(path), path, max_grey_fraction=max_grey_fraction)


def binarize_mask(arr: np.ndarray, path: str | Path, *, max_grey_fraction: float = 0.01) -> np.ndarray:
    """``[H, W]`` label values (any scale) -> ``bool [H, W]`` by :func:`read_mask`'s rule."""
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.full(arr.shape, hi > 0, dtype=bool)
    grey = float(((arr != lo) & (arr != hi)).mean())
    if grey > max_grey_fraction:
        raise UserError(
            f"mask is not binary ({grey:.1%} of pixels are neither background nor foreground); "
            "save it with two values only (0 and 255, or 0 and 1)",
            path,
        )
    if grey > 0:
        log.warning("%s: %.3f%% grey pixels in a binary mask, thresholded at half range", path, 100 * grey)
    return arr > (lo + hi) / 2


def to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    return np.clip(np.round(np.asarray(arr, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


class WriteError(UserError, OSError):
    """A file could not be written (disk full, no permission, ...). It is a UserError (the CLI
    prints one line naming the file and the fix) and still an OSError for callers that catch
    those; ``errno`` is the original error's."""

    def __init__(self, message: str, path: str | Path | None = None, errno_: int | None = None) -> None:
        UserError.__init__(self, message, path)
        self.errno = errno_


def read_csv_rows(path: Path, *, empty: str = "CSV file is empty; it needs a header row") -> tuple[list[str], list[dict[str, str]]]:
    """``(header, rows)`` of a UTF-8 CSV: rows as dicts, names and values stripped (a BOM too),
    blank rows dropped. UserError naming ``path`` (with ``empty`` for a file without a header)
    for undecodable or malformed files."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise UserError(empty, path)
            header = [h.strip() for h in header]
            rows = [dict(zip(header, (v.strip() for v in row))) for row in reader if any(v.strip() for v in row)]
    except UnicodeDecodeError as exc:
        raise UserError(f"is not a UTF-8 text CSV ({exc}); save it as CSV (UTF-8)", path) from exc
    except csv.Error as exc:
        raise UserError(f"is not a valid CSV ({exc}); fix the file", path) from exc
    return header, rows


def _write_fix(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space (or choose another output folder) and run the command again"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "fix the folder's permissions or choose another output folder"
    return "check the output folder and run the command again"


def _umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def default_file_mode() -> int:
    """The permissions ``open(path, "w")`` would give a new file: ``0o666`` less the umask."""
    return 0o666 & ~_umask()


def make_temp_file(path: Path) -> str:
    """A temporary file beside ``path`` with the user's umask permissions (``mkstemp`` would
    make it 0600, and the rename would keep that for the finished file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_file_mode())
    finally:
        os.close(fd)
    return tmp


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash never leaves a half-written file.

    The bytes go to a temporary file in the same folder, are flushed to disk, and the file
    is renamed over ``path``: readers see the old file or the new one, never a mix. A
    failure (full disk, no permission) leaves the old file untouched, removes the
    temporary one and raises :class:`WriteError` naming ``path`` and the fix.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_file(path)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, WriteError):
            raise
        raise WriteError(f"cannot write ({exc.strerror or exc}); {_write_fix(exc)}", path, exc.errno) from exc
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def write_png(path: str | Path, arr: np.ndarray) -> None:
    """Write a ``[H, W]`` float in ``[0, 1]``, bool or uint8 array as 8-bit grey PNG (atomically)."""
    import io as _io

    arr = np.asarray(arr)
    img = arr if arr.dtype == np.uint8 else to_uint8(arr)
    buf = _io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
