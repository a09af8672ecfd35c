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
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from skimage.draw import polygon, polygon_perimeter

from priormim.errors import UserError
from priormim.io import is_image_file, list_images, read_csv_rows, read_mask  # noqa: F401 - read_csv_rows re-exported

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

logger = logging.getLogger(__name__)

_DICOM_SUFFIXES = (".dcm", ".dicom")
_MAX_NAMED = 3  # how many offending files an error message names

# Canonical ChestX-ray14 label order (Wang et al. 2017), as used by CheXNet and most papers.
CXR14_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _some(items: list, n: int = _MAX_NAMED) -> str:
    names = [Path(i).name if isinstance(i, Path) else str(i) for i in items[:n]]
    return ", ".join(names) + (", ..." if len(items) > n else "")


def _require_dir(path: Path, fix: str) -> Path:
    if not path.is_dir():
        raise UserError(f"folder not found; {fix}", path)
    return path


def _require_file(path: Path, fix: str) -> Path:
    if not path.is_file():
        raise UserError(f"file not found; {fix}", path)
    return path


def _image_size(path: Path) -> tuple[int, int]:
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


def _read_csv(path: Path, required: tuple[str, ...], fix: str) -> tuple[list[str], list[dict[str, str]]]:
    """Rows of a CSV as dicts (:func:`read_csv_rows`). UserError on missing columns."""
    _require_file(path, fix)
    header, rows = read_csv_rows(path)
    missing = [c for c in required if c not in header]
    if missing:
        raise UserError(
            f"CSV is missing column(s) {', '.join(repr(c) for c in missing)} "
            f"(found {', '.join(repr(h) for h in header if h)}); fix the header row",
            path,
        )
    return header, rows


def _warn_missing(missing: list[str], total: int, where: Path, source: Path) -> None:
    if missing:
        logger.warning(
            "%s: %d of %d listed images not found under %s (e.g. %s); they are skipped",
            source,
            len(missing),
            total,
            where,
            _some(missing),
        )


# --------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------


@dataclass
class SegPair:
    """One image and its binary mask (paths only); ``name`` is the image file stem."""

    image: Path
    mask: Path
    name: str


def _by_stem(files: list[Path], *, strip_mask_suffix: bool) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in files:
        stem = p.stem
        if strip_mask_suffix and stem.endswith("_mask"):
            stem = stem[: -len("_mask")]
        if stem in out:
            raise UserError(
                f"has the same name as {out[stem].name} (extensions and a '_mask' suffix are ignored "
                "when pairing); keep one of them",
                p,
            )
        out[stem] = p
    return out


def read_segmentation_folder(
    root: str | Path, *, check_sizes: bool = True, check_binary: bool = True
) -> list[SegPair]:
    """Pair ``root/images/*`` with ``root/masks/*`` by file stem.

    A mask may be named ``<stem>.<ext>`` or ``<stem>_mask.<ext>``; image and mask extensions may
    differ (PNG, JPEG, TIFF, GIF, BMP, 16-bit PNG, DICOM), e.g. ``images/01.tif`` pairs with
    ``masks/01_mask.gif``.

    Args:
        root: folder holding ``images/`` and ``masks/``.
        check_sizes: check that every mask has the size of its image (headers only, cheap).
        check_binary: load every mask and check that it is binary (via
            :func:`priormim.io.read_mask`); also checks the size from the loaded mask.

    Returns:
        ``SegPair`` list sorted by name.

    Raises:
        UserError: missing ``images/`` or ``masks/``, images without masks or masks without
        images (the first few are named, with counts), two files with the same stem, a size
        mismatch (file and both sizes), a non-binary mask.
    """
    root = Path(root)
    _require_dir(root, "pass the dataset folder that holds images/ and masks/")
    layout = "put images in <root>/images/ and binary masks with the same names in <root>/masks/"
    images = _by_stem(list_images(_require_dir(root / "images", layout)), strip_mask_suffix=False)
    masks = _by_stem(list_images(_require_dir(root / "masks", layout)), strip_mask_suffix=True)

    no_mask = sorted(set(images) - set(masks))
    if no_mask:
        first = images[no_mask[0]]
        raise UserError(
            f"{len(no_mask)} of {len(images)} images have no mask in {root / 'masks'} "
            f"({_some([images[s] for s in no_mask])}); name each mask <stem>.<ext> or <stem>_mask.<ext>",
            first,
        )
    no_image = sorted(set(masks) - set(images))
    if no_image:
        first = masks[no_image[0]]
        raise UserError(
            f"{len(no_image)} of {len(masks)} masks have no image in {root / 'images'} "
            f"({_some([masks[s] for s in no_image])}); remove them or add the images",
            first,
        )

    pairs = [SegPair(image=images[s], mask=masks[s], name=s) for s in sorted(images)]
    if check_sizes or check_binary:
        for pair in pairs:
            mask_hw = read_mask(pair.mask).shape if check_binary else _image_size(pair.mask)
            if check_sizes:
                image_hw = _image_size(pair.image)
                if tuple(mask_hw) != image_hw:
                    raise UserError(
                        f"mask is {mask_hw[1]}x{mask_hw[0]} (WxH) but image {pair.image.name} is "
                        f"{image_hw[1]}x{image_hw[0]}; resize the mask (nearest neighbour) to the image",
                        pair.mask,
                    )
    return pairs


@dataclass
class ArcadeSample:
    """One ARCADE image and its vessel mask ``bool [H, W]`` (all segments merged)."""

    image: Path
    mask: np.ndarray
    name: str


def _arcade_paths(root: Path, split: str) -> tuple[Path, Path]:
    layout = (
        f"expected the ARCADE layout <root>/{split}/images/ + <root>/{split}/annotations/{split}.json "
        "(or <root>/images/ + <root>/annotations/*.json)"
    )
    _require_dir(root, layout)
    if (root / split / "images").is_dir():
        base = root / split
    elif (root / "images").is_dir():
        base = root
    else:
        raise UserError(f"no '{split}/images' or 'images' folder; {layout}", root)
    ann_dir = _require_dir(base / "annotations", layout)
    ann = ann_dir / f"{split}.json"
    if not ann.is_file():
        jsons = sorted(ann_dir.glob("*.json"))
        if len(jsons) != 1:
            found = _some(jsons) if jsons else "none"
            raise UserError(f"no {split}.json (found: {found}); {layout}", ann_dir)
        ann = jsons[0]
    return base / "images", ann


def _rasterise(polygons: list, shape: tuple[int, int], ann_path: Path) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for poly in polygons:
        xy = np.asarray(poly, dtype=np.float64)
        if xy.ndim != 1 or xy.size % 2:
            raise UserError(
                "a segmentation polygon is not a flat [x1, y1, x2, y2, ...] list; fix the annotation file", ann_path
            )
        if xy.size < 6:  # fewer than 3 vertices: no area
            continue
        cols, rows = xy[0::2], xy[1::2]
        # Interior plus outline, like cv2.fillPoly used by the ARCADE baselines: interior
        # pixels alone would break thin (2-4 px) vessel polygons apart.
        mask[polygon(rows, cols, shape=shape)] = True
        mask[polygon_perimeter(rows, cols, shape=shape, clip=False)] = True
    return mask


def read_arcade(root: str | Path, split: str = "train") -> list[ArcadeSample]:
    """Read the ARCADE syntax split as image paths + binary vessel masks.

    Layout (as distributed): ``<root>/<split>/images/*.png`` and
    ``<root>/<split>/annotations/<split>.json`` (COCO: ``images`` with ``id, file_name, width,
    height``; ``annotations`` with ``image_id`` and polygon ``segmentation``
    ``[[x1, y1, x2, y2, ...], ...]``). A flat ``<root>/images`` + ``<root>/annotations/*.json``
    layout is accepted too (``<split>.json``, or the only JSON there).

    All polygons of an image, whatever their category (the 25 SYNTAX segments), are merged
    into one vessel mask; each polygon is filled including its outline. Images without
    annotations get an empty mask. Samples are ordered by image id.

    Returns:
        ``ArcadeSample`` list; ``mask`` is ``bool [height, width]``.

    Raises:
        UserError: missing folders or JSON, invalid JSON or keys, RLE segmentations, images listed
        in the JSON but missing on disk.
    """
    root = Path(root)
    image_dir, ann_path = _arcade_paths(root, split)
    try:
        coco = json.loads(ann_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"is not valid JSON ({exc}); re-download or re-export the annotations", ann_path) from exc
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list) or not isinstance(
        coco.get("annotations"), list
    ):
        raise UserError("needs COCO lists 'images' and 'annotations'; this is not a COCO annotation file", ann_path)

    by_image: dict[int, list] = {}
    for ann in coco["annotations"]:
        seg = ann.get("segmentation")
        if isinstance(seg, dict):
            raise UserError(
                f"annotation {ann.get('id')} uses RLE segmentation; only polygon annotations are supported",
                ann_path,
            )
        if "image_id" not in ann or not isinstance(seg, list):
            raise UserError(f"annotation {ann.get('id')} lacks 'image_id' or a polygon 'segmentation'", ann_path)
        # COCO allows a single flat polygon too; normalise to a list of polygons.
        polys = [seg] if seg and not isinstance(seg[0], list) else seg
        by_image.setdefault(ann["image_id"], []).extend(polys)

    if any(not isinstance(e, dict) or "file_name" not in e or "id" not in e for e in coco["images"]):
        raise UserError("an entry of 'images' lacks 'id' or 'file_name'; fix the annotation file", ann_path)
    try:
        entries = sorted(coco["images"], key=lambda e: e["id"])
    except TypeError:  # mixed id types: keep the file order
        entries = list(coco["images"])
    missing = [e for e in entries if not (image_dir / e["file_name"]).is_file()]
    if missing:
        raise UserError(
            f"{len(missing)} of {len(entries)} images listed in {ann_path.name} are missing "
            f"({_some([e['file_name'] for e in missing])}); check that the images are in this folder",
            image_dir,
        )
    samples = []
    for e in entries:
        path = image_dir / e["file_name"]
        if "height" in e and "width" in e:
            shape = (int(e["height"]), int(e["width"]))
        else:
            shape = _image_size(path)
        mask = _rasterise(by_image.get(e["id"], []), shape, ann_path)
        samples.append(ArcadeSample(image=path, mask=mask, name=Path(e["file_name"]).stem))
    return samples


# --------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------


@dataclass
class ClassificationSet:
    """Image paths with labels.

    ``labels`` is ``int64 [N]`` (class index into ``class_names``) for single-label sets, or
    ``float32 [N, C]`` with 0/1 entries (``C = len(class_names)``) when ``multilabel``.
    """

    paths: list[Path]
    labels: np.ndarray
    class_names: list[str]
    multilabel: bool

    def __len__(self) -> int:
        return len(self.paths)


def read_class_folders(root: str | Path) -> ClassificationSet:
    """One sub-folder per class: ``root/NORMAL/*.jpeg``, ``root/PNEUMONIA/*.jpeg``, ...

    Class names are the sub-folder names, sorted; labels index that list. Only images directly
    inside each class folder are used; hidden folders are ignored.

    Raises:
        UserError: missing root, fewer than two class folders, an empty class folder.
    """
    root = Path(root)
    _require_dir(root, "pass the folder that holds one sub-folder per class")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    if len(classes) < 2:
        stray = any(is_image_file(p) for p in root.iterdir())
        hint = " (it holds images directly)" if stray else ""
        raise UserError(
            f"found {len(classes)} class folder(s){hint}; put the images of each class in its own sub-folder "
            "(e.g. NORMAL/ and PNEUMONIA/), at least two",
            root,
        )
    paths: list[Path] = []
    labels: list[int] = []
    for idx, folder in enumerate(classes):
        files = list_images(folder)  # UserError if empty
        paths.extend(files)
        labels.extend([idx] * len(files))
    return ClassificationSet(
        paths=paths, labels=np.asarray(labels, dtype=np.int64), class_names=[c.name for c in classes], multilabel=False
    )


def _index_images(dirs: list[Path]) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for d in dirs:
        for p in sorted(d.iterdir()):
            if is_image_file(p):
                index.setdefault(p.name, p)
    return index


def read_chestxray14(root: str | Path, split: str = "train") -> ClassificationSet:
    """NIH ChestX-ray14: 14 findings, multi-label.

    Expects ``root/Data_Entry_2017.csv`` (or ``Data_Entry_2017_v2020.csv``) with columns
    ``Image Index`` and ``Finding Labels`` (labels ``|``-separated, or ``No Finding``; the real
    file's trailing comma is fine), the official split lists ``train_val_list.txt`` (``split=
    "train"``) / ``test_list.txt`` (``split="test"``), and the images in ``root/images/`` or
    ``root/images_*/images/`` (Kaggle layout).

    Images listed in the split but missing on disk (or in the CSV) are skipped with a
    ``logging`` warning (printed on stderr when logging is not configured); an error only if
    none is left.

    Returns:
        ``ClassificationSet`` in split-list order; ``labels`` ``float32 [N, 14]`` in the
        canonical order :data:`CXR14_LABELS`.
    """
    root = Path(root)
    _require_dir(root, "pass the ChestX-ray14 folder that holds Data_Entry_2017.csv")
    split_files = {"train": "train_val_list.txt", "test": "test_list.txt"}
    if split not in split_files:
        raise UserError(f"unknown ChestX-ray14 split {split!r}; use 'train' or 'test'", root)
    csv_path = root / "Data_Entry_2017.csv"
    if not csv_path.is_file() and (root / "Data_Entry_2017_v2020.csv").is_file():
        csv_path = root / "Data_Entry_2017_v2020.csv"
    _, rows = _read_csv(
        csv_path, ("Image Index", "Finding Labels"), "download Data_Entry_2017.csv from the NIH ChestX-ray14 release"
    )
    col = {name: i for i, name in enumerate(CXR14_LABELS)}
    findings: dict[str, np.ndarray] = {}
    for line, row in enumerate(rows, start=2):
        vec = np.zeros(len(CXR14_LABELS), dtype=np.float32)
        for label in row["Finding Labels"].split("|"):
            label = label.strip()
            if label in ("No Finding", ""):
                continue
            if label not in col:
                raise UserError(
                    f"line {line}: unknown finding {label!r}; expected 'No Finding' or {', '.join(CXR14_LABELS)}",
                    csv_path,
                )
            vec[col[label]] = 1.0
        findings[row["Image Index"]] = vec

    list_path = _require_file(root / split_files[split], "download the official split lists with the dataset")
    listed = [s.strip() for s in list_path.read_text(encoding="utf-8").splitlines() if s.strip()]
    image_dirs = [d for d in [root / "images", *sorted(root.glob("images_*/images"))] if d.is_dir()]
    if not image_dirs:
        raise UserError("no images/ or images_*/images/ folder; extract the image archives here", root)
    on_disk = _index_images(image_dirs)

    not_in_csv = [n for n in listed if n not in findings]
    if not_in_csv:
        logger.warning(
            "%s: %d images listed in %s are not in %s (e.g. %s); they are skipped",
            list_path, len(not_in_csv), list_path.name, csv_path.name, _some(not_in_csv),
        )
    known = [n for n in listed if n in findings]
    present = [n for n in known if n in on_disk]
    _warn_missing([n for n in known if n not in on_disk], len(known), root, list_path)
    if not present:
        raise UserError(
            f"none of the {len(listed)} images in {list_path.name} were found under {image_dirs[0]}; "
            "check the image folders",
            list_path,
        )
    labels = np.stack([findings[n] for n in present]).astype(np.float32)
    return ClassificationSet(
        paths=[on_disk[n] for n in present], labels=labels, class_names=list(CXR14_LABELS), multilabel=True
    )


def _parse_int(value: str, *, path: Path, line: int, column: str) -> int:
    try:
        f = float(value)
    except ValueError:
        f = float("nan")
    if not np.isfinite(f) or f != int(f):
        raise UserError(f"line {line}: column {column!r} has {value!r}; expected an integer", path)
    return int(f)


def read_rsna_pneumonia(root: str | Path) -> ClassificationSet:
    """RSNA Pneumonia Detection Challenge (stage 2 train set) as a binary task.

    Expects ``root/stage_2_train_labels.csv`` (``patientId,x,y,width,height,Target``; one row
    per box, so a patient may have several rows: its label is the maximum ``Target``) and
    ``root/stage_2_train_images/<patientId>.dcm``. Patients without a DICOM on disk are skipped
    with a ``logging`` warning; an error only if none is left.

    Returns:
        ``ClassificationSet`` in CSV order of first appearance; ``labels`` ``int64 [N]``,
        ``class_names`` ``["normal", "pneumonia"]``.
    """
    root = Path(root)
    _require_dir(root, "pass the RSNA folder that holds stage_2_train_labels.csv")
    csv_path = root / "stage_2_train_labels.csv"
    _, rows = _read_csv(
        csv_path, ("patientId", "Target"), "download stage_2_train_labels.csv from the RSNA challenge"
    )
    target: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        t = _parse_int(row["Target"], path=csv_path, line=line, column="Target")
        if t not in (0, 1):
            raise UserError(f"line {line}: Target is {t}; expected 0 or 1", csv_path)
        pid = row["patientId"]
        target[pid] = max(target.get(pid, 0), t)
    if not target:
        raise UserError("CSV has a header but no rows", csv_path)

    image_dir = _require_dir(root / "stage_2_train_images", "extract stage_2_train_images.zip into the dataset folder")
    pids = list(target)
    paths = [image_dir / f"{p}.dcm" for p in pids]
    exists = [p.is_file() for p in paths]
    _warn_missing([f"{p}.dcm" for p, ok in zip(pids, exists) if not ok], len(pids), image_dir, csv_path)
    if not any(exists):
        raise UserError(f"none of the {len(pids)} patients in {csv_path.name} has a .dcm file here", image_dir)
    return ClassificationSet(
        paths=[p for p, ok in zip(paths, exists) if ok],
        labels=np.asarray([target[p] for p, ok in zip(pids, exists) if ok], dtype=np.int64),
        class_names=["normal", "pneumonia"],
        multilabel=False,
    )


# Text columns read_labels_csv ignores instead of taking them for label columns.
_METADATA_COLUMNS = frozenset({"lesion_type", "patient_id", "patientid", "split", "view", "sex", "age", "notes"})


def read_labels_csv(path: str | Path, *, image_dir: str | Path) -> ClassificationSet:
    """Generic labels CSV (e.g. the synthetic chest X-rays: ``images/`` + ``labels.csv``).

    Column ``image`` holds file names relative to ``image_dir`` (or absolute paths). Then either

    * ``label``: single-label. Integers are class indices (``class_names`` = ``"0"``, ``"1"``,
      ... up to the largest); any other text is a class name (``class_names`` sorted, labels
      index them). Other columns (e.g. ``lesion_type``) are ignored; or
    * no ``label`` column: every other column is one 0/1 label (multi-label, ``float32
      [N, C]``), except known metadata text columns (``lesion_type``, ``patient_id``,
      ``split``, ``view``, ``sex``, ``age``, ``notes``), which are ignored.

    Raises:
        UserError: missing CSV or ``image`` column, empty CSV, empty or non-0/1 label values,
        negative class indices, images missing on disk (the first few named, with the count).
    """
    path, image_dir = Path(path), Path(image_dir)
    header, rows = _read_csv(path, ("image",), "pass the labels CSV with columns image,label")
    if not rows:
        raise UserError("CSV has a header but no rows", path)
    _require_dir(image_dir, f"pass the folder that holds the images named in {path.name}")

    for line, row in enumerate(rows, start=2):
        if not row.get("image"):
            raise UserError(f"line {line}: empty 'image' value; every row needs an image file name", path)
    paths = [image_dir / r["image"] for r in rows]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise UserError(
            f"{len(missing)} of {len(paths)} images listed in {path.name} are missing from {image_dir} "
            f"({_some(missing)}); fix the 'image' column or the image folder",
            path,
        )

    if "label" in header:
        values = [r.get("label", "") for r in rows]
        for line, v in enumerate(values, start=2):
            if v == "":
                raise UserError(f"line {line}: empty 'label' value; every row needs a label", path)
        try:
            ints = [int(v) for v in values]
        except ValueError:
            ints = None
        if ints is not None:
            if min(ints) < 0:
                line = ints.index(min(ints)) + 2
                raise UserError(f"line {line}: label {min(ints)} is negative; class indices start at 0", path)
            names = [str(i) for i in range(max(ints) + 1)]
            labels = np.asarray(ints, dtype=np.int64)
        else:
            names = sorted(set(values))
            lookup = {n: i for i, n in enumerate(names)}
            labels = np.asarray([lookup[v] for v in values], dtype=np.int64)
        return ClassificationSet(paths=paths, labels=labels, class_names=names, multilabel=False)

    label_cols = [h for h in header if h and h != "image" and h.lower() not in _METADATA_COLUMNS]
    if not label_cols:
        raise UserError("has only an 'image' column; add a 'label' column or one 0/1 column per label", path)
    out = np.zeros((len(rows), len(label_cols)), dtype=np.float32)
    for line, row in enumerate(rows, start=2):
        for j, c in enumerate(label_cols):
            v = row.get(c, "")
            if v not in ("0", "1", "0.0", "1.0"):
                raise UserError(
                    f"line {line}: column {c!r} has {v!r}; multi-label columns must be 0 or 1 "
                    "(or add a 'label' column for single-label data)",
                    path,
                )
            out[line - 2, j] = float(v)
    return ClassificationSet(paths=paths, labels=out, class_names=label_cols, multilabel=True)
