"""Classification data sets (file lists and labels, no pixel loading): class folders, NIH
ChestX-ray14, RSNA Pneumonia and a generic labels CSV."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from priormim.data.reader_utils import logger, read_csv, require_dir, require_file, some, warn_missing
from priormim.errors import UserError
from priormim.io import is_image_file, list_images

__all__ = ["CXR14_LABELS", "ClassificationSet", "read_chestxray14", "read_class_folders", "read_labels_csv",
           "read_rsna_pneumonia"]

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
    require_dir(root, "pass the folder that holds one sub-folder per class")
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
    require_dir(root, "pass the ChestX-ray14 folder that holds Data_Entry_2017.csv")
    split_files = {"train": "train_val_list.txt", "test": "test_list.txt"}
    if split not in split_files:
        raise UserError(f"unknown ChestX-ray14 split {split!r}; use 'train' or 'test'", root)
    csv_path = root / "Data_Entry_2017.csv"
    if not csv_path.is_file() and (root / "Data_Entry_2017_v2020.csv").is_file():
        csv_path = root / "Data_Entry_2017_v2020.csv"
    _, rows = read_csv(
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

    list_path = require_file(root / split_files[split], "download the official split lists with the dataset")
    listed = [s.strip() for s in list_path.read_text(encoding="utf-8").splitlines() if s.strip()]
    image_dirs = [d for d in [root / "images", *sorted(root.glob("images_*/images"))] if d.is_dir()]
    if not image_dirs:
        raise UserError("no images/ or images_*/images/ folder; extract the image archives here", root)
    on_disk = _index_images(image_dirs)

    not_in_csv = [n for n in listed if n not in findings]
    if not_in_csv:
        logger.warning(
            "%s: %d images listed in %s are not in %s (e.g. %s); they are skipped",
            list_path, len(not_in_csv), list_path.name, csv_path.name, some(not_in_csv),
        )
    known = [n for n in listed if n in findings]
    present = [n for n in known if n in on_disk]
    warn_missing([n for n in known if n not in on_disk], len(known), root, list_path)
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
    require_dir(root, "pass the RSNA folder that holds stage_2_train_labels.csv")
    csv_path = root / "stage_2_train_labels.csv"
    _, rows = read_csv(
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

    image_dir = require_dir(root / "stage_2_train_images", "extract stage_2_train_images.zip into the dataset folder")
    pids = list(target)
    paths = [image_dir / f"{p}.dcm" for p in pids]
    exists = [p.is_file() for p in paths]
    warn_missing([f"{p}.dcm" for p, ok in zip(pids, exists) if not ok], len(pids), image_dir, csv_path)
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
    header, rows = read_csv(path, ("image",), "pass the labels CSV with columns image,label")
    if not rows:
        raise UserError("CSV has a header but no rows", path)
    require_dir(image_dir, f"pass the folder that holds the images named in {path.name}")

    for line, row in enumerate(rows, start=2):
        if not row.get("image"):
            raise UserError(f"line {line}: empty 'image' value; every row needs an image file name", path)
    paths = [image_dir / r["image"] for r in rows]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise UserError(
            f"{len(missing)} of {len(paths)} images listed in {path.name} are missing from {image_dir} "
            f"({some(missing)}); fix the 'image' column or the image folder",
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
