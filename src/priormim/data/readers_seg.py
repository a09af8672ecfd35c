"""Segmentation data sets (file lists, no pixel loading): any ``images/`` + ``masks/`` folder
pair (:func:`read_segmentation_folder`) and ARCADE's COCO polygons (:func:`read_arcade`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.draw import polygon, polygon_perimeter

from priormim.data.reader_utils import image_size, require_dir, some
from priormim.errors import UserError
from priormim.io import list_images, read_mask

__all__ = ["ArcadeSample", "SegPair", "read_arcade", "read_segmentation_folder"]


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
    require_dir(root, "pass the dataset folder that holds images/ and masks/")
    layout = "put images in <root>/images/ and binary masks with the same names in <root>/masks/"
    images = _by_stem(list_images(require_dir(root / "images", layout)), strip_mask_suffix=False)
    masks = _by_stem(list_images(require_dir(root / "masks", layout)), strip_mask_suffix=True)

    no_mask = sorted(set(images) - set(masks))
    if no_mask:
        first = images[no_mask[0]]
        raise UserError(
            f"{len(no_mask)} of {len(images)} images have no mask in {root / 'masks'} "
            f"({some([images[s] for s in no_mask])}); name each mask <stem>.<ext> or <stem>_mask.<ext>",
            first,
        )
    no_image = sorted(set(masks) - set(images))
    if no_image:
        first = masks[no_image[0]]
        raise UserError(
            f"{len(no_image)} of {len(masks)} masks have no image in {root / 'images'} "
            f"({some([masks[s] for s in no_image])}); remove them or add the images",
            first,
        )

    pairs = [SegPair(image=images[s], mask=masks[s], name=s) for s in sorted(images)]
    if check_sizes or check_binary:
        for pair in pairs:
            mask_hw = read_mask(pair.mask).shape if check_binary else image_size(pair.mask)
            if check_sizes:
                image_hw = image_size(pair.image)
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
    require_dir(root, layout)
    if (root / split / "images").is_dir():
        base = root / split
    elif (root / "images").is_dir():
        base = root
    else:
        raise UserError(f"no '{split}/images' or 'images' folder; {layout}", root)
    ann_dir = require_dir(base / "annotations", layout)
    ann = ann_dir / f"{split}.json"
    if not ann.is_file():
        jsons = sorted(ann_dir.glob("*.json"))
        if len(jsons) != 1:
            found = some(jsons) if jsons else "none"
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
            f"({some([e['file_name'] for e in missing])}); check that the images are in this folder",
            image_dir,
        )
    samples = []
    for e in entries:
        path = image_dir / e["file_name"]
        if "height" in e and "width" in e:
            shape = (int(e["height"]), int(e["width"]))
        else:
            shape = image_size(path)
        mask = _rasterise(by_image.get(e["id"], []), shape, ann_path)
        samples.append(ArcadeSample(image=path, mask=mask, name=Path(e["file_name"]).stem))
    return samples
