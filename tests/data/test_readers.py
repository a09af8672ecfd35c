import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from priormim.data.readers import (
    CXR14_LABELS,
    read_arcade,
    read_chestxray14,
    read_class_folders,
    read_labels_csv,
    read_rsna_pneumonia,
    read_segmentation_folder,
)
from priormim.errors import UserError
from priormim.io import read_gray, read_mask

# --------------------------------------------------------------------------------------
# File writers in the real formats
# --------------------------------------------------------------------------------------


def _img(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _grey(h: int = 5, w: int = 6) -> np.ndarray:
    return ((np.arange(h * w).reshape(h, w) * 7) % 256).astype(np.uint8)


def _binmask(h: int = 5, w: int = 6) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[1:3, 2:5] = 255
    return m


def _dicom(path: Path, arr: np.ndarray, patient_id: str = "anon") -> Path:
    """A real DICOM file (preamble, file meta, MONOCHROME2, uncompressed 8/16-bit pixels)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    ds.Modality = "CR"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    bits = arr.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------
# read_segmentation_folder
# --------------------------------------------------------------------------------------


@pytest.fixture()
def seg_root(tmp_path: Path) -> Path:
    root = tmp_path / "xca"
    g16 = (np.arange(30, dtype=np.uint16).reshape(5, 6) * 100)  # 12-bit range, max 2900
    _img(root / "images" / "a.png", _grey())
    _img(root / "images" / "b.tif", _grey())
    _img(root / "images" / "c.png", g16)  # 16-bit PNG
    _dicom(root / "images" / "d.dcm", g16)  # 16-bit DICOM
    _img(root / "images" / "e.jpg", _grey())
    _img(root / "masks" / "a.png", _binmask())
    _img(root / "masks" / "b_mask.gif", _binmask())
    _img(root / "masks" / "c_mask.png", _binmask())
    _img(root / "masks" / "d.png", _binmask())
    _img(root / "masks" / "e.tif", _binmask())
    return root


def test_segmentation_folder_pairs_mixed_formats(seg_root: Path):
    pairs = read_segmentation_folder(seg_root)
    assert [p.name for p in pairs] == ["a", "b", "c", "d", "e"]
    assert [(p.image.name, p.mask.name) for p in pairs] == [
        ("a.png", "a.png"),
        ("b.tif", "b_mask.gif"),
        ("c.png", "c_mask.png"),
        ("d.dcm", "d.png"),
        ("e.jpg", "e.tif"),
    ]
    expected = np.zeros((5, 6), bool)
    expected[1:3, 2:5] = True
    for p in pairs:
        np.testing.assert_array_equal(read_mask(p.mask), expected)
    # 16-bit PNG and DICOM read back to the same ramp in [0, 1]
    ramp = np.arange(30, dtype=np.float32).reshape(5, 6) / 29
    np.testing.assert_allclose(read_gray(pairs[2].image), ramp, atol=1e-6)
    np.testing.assert_allclose(read_gray(pairs[3].image), ramp, atol=1e-6)


def test_segmentation_folder_missing_masks_dir(tmp_path: Path):
    _img(tmp_path / "images" / "a.png", _grey())
    with pytest.raises(UserError, match="masks"):
        read_segmentation_folder(tmp_path)


def test_segmentation_folder_image_without_mask(seg_root: Path):
    _img(seg_root / "images" / "zz.png", _grey())
    with pytest.raises(UserError, match=r"1 of 6 images have no mask.*zz\.png"):
        read_segmentation_folder(seg_root)


def test_segmentation_folder_mask_without_image(seg_root: Path):
    _img(seg_root / "masks" / "orphan_mask.png", _binmask())
    with pytest.raises(UserError, match=r"1 of 6 masks have no image.*orphan_mask\.png"):
        read_segmentation_folder(seg_root)


def test_segmentation_folder_duplicate_stem(seg_root: Path):
    _img(seg_root / "masks" / "a_mask.png", _binmask())
    with pytest.raises(UserError, match=r"a_mask\.png.*a\.png"):
        read_segmentation_folder(seg_root)


def test_segmentation_folder_size_mismatch(seg_root: Path):
    _img(seg_root / "masks" / "e.tif", _binmask(4, 6))
    with pytest.raises(UserError, match=r"e\.tif.*6x4.*e\.jpg.*6x5"):
        read_segmentation_folder(seg_root)
    # header-only size check, without loading masks
    with pytest.raises(UserError, match=r"e\.tif"):
        read_segmentation_folder(seg_root, check_binary=False)
    assert len(read_segmentation_folder(seg_root, check_sizes=False)) == 5


def test_segmentation_folder_non_binary_mask(seg_root: Path):
    bad = _binmask()
    bad[0, 0] = 128
    _img(seg_root / "masks" / "c_mask.png", bad)
    with pytest.raises(UserError, match=r"c_mask\.png.*not binary"):
        read_segmentation_folder(seg_root)
    assert len(read_segmentation_folder(seg_root, check_binary=False)) == 5


# --------------------------------------------------------------------------------------
# read_arcade
# --------------------------------------------------------------------------------------


def _coco(images: list[dict], annotations: list[dict]) -> str:
    return json.dumps(
        {
            "info": {"description": "ARCADE syntax"},
            "licenses": [],
            "categories": [{"id": i, "name": str(i), "supercategory": ""} for i in range(1, 26)],
            "images": images,
            "annotations": annotations,
        }
    )


def _ann(i: int, image_id: int, cat: int, poly: list[float]) -> dict:
    xs, ys = poly[0::2], poly[1::2]
    return {
        "id": i,
        "image_id": image_id,
        "category_id": cat,
        "segmentation": [poly],
        "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
        "area": 1.0,
        "iscrowd": 0,
        "attributes": {"occluded": False},
    }


@pytest.fixture()
def arcade_root(tmp_path: Path) -> Path:
    root = tmp_path / "arcade" / "syntax"
    split = root / "train"
    for name in ("1.png", "2.png"):
        _img(split / "images" / name, np.zeros((8, 10), np.uint8))
    images = [  # listed out of id order on purpose
        {"id": 2, "width": 10, "height": 8, "file_name": "2.png", "license": 0, "date_captured": 0},
        {"id": 1, "width": 10, "height": 8, "file_name": "1.png", "license": 0, "date_captured": 0},
    ]
    anns = [
        _ann(1, 1, 1, [2, 3, 6, 3, 6, 5, 2, 5]),  # x 2..6, y 3..5
        _ann(2, 1, 7, [8, 0, 9, 0, 9, 2, 8, 2]),  # second segment, other category
    ]
    _write(split / "annotations" / "train.json", _coco(images, anns))
    return root


def test_arcade_rasterises_polygons(arcade_root: Path):
    samples = read_arcade(arcade_root, "train")
    assert [s.name for s in samples] == ["1", "2"]
    expected = np.zeros((8, 10), bool)
    expected[3:6, 2:7] = True  # vertices are pixel centres; outline included
    expected[0:3, 8:10] = True
    assert samples[0].mask.dtype == np.bool_
    np.testing.assert_array_equal(samples[0].mask, expected)
    assert samples[0].image == arcade_root / "train" / "images" / "1.png"
    assert not samples[1].mask.any() and samples[1].mask.shape == (8, 10)


def test_arcade_thin_polygon_stays_connected(tmp_path: Path):
    # A 0.6-px-wide diagonal strip contains no pixel centre: interior filling alone gives
    # nothing; with the outline the vessel is a connected diagonal.
    _img(tmp_path / "images" / "7.png", np.zeros((10, 10), np.uint8))
    images = [{"id": 7, "width": 10, "height": 10, "file_name": "7.png"}]
    _write(tmp_path / "annotations" / "instances.json", _coco(images, [_ann(1, 7, 3, [0.2, 0, 9.2, 9, 9.8, 9, 0.8, 0])]))
    (sample,) = read_arcade(tmp_path, "val")  # flat layout, the only JSON
    assert np.diag(sample.mask).all()
    assert sample.mask.sum() <= 20


def test_arcade_errors(arcade_root: Path, tmp_path: Path):
    with pytest.raises(UserError, match=r"test\.json|test/images"):
        read_arcade(arcade_root, "test")
    (arcade_root / "train" / "images" / "2.png").unlink()
    with pytest.raises(UserError, match=r"1 of 2 images listed in train\.json are missing \(2\.png\)"):
        read_arcade(arcade_root, "train")
    ann = arcade_root / "train" / "annotations" / "train.json"
    ann.write_text("{not json")
    with pytest.raises(UserError, match=r"train\.json.*not valid JSON"):
        read_arcade(arcade_root, "train")
    ann.unlink()
    with pytest.raises(UserError, match=r"train\.json"):
        read_arcade(arcade_root, "train")
    with pytest.raises(UserError, match="images"):
        read_arcade(tmp_path / "empty_dir_that_does_not_exist", "train")


# --------------------------------------------------------------------------------------
# read_class_folders
# --------------------------------------------------------------------------------------


def test_class_folders(tmp_path: Path):
    for name in ("IM-0001.jpeg", "IM-0002.jpeg"):
        _img(tmp_path / "NORMAL" / name, _grey())
    for name in ("person1_virus_6.jpeg", "person2_bacteria_3.jpeg", "person3_virus_1.jpeg"):
        _img(tmp_path / "PNEUMONIA" / name, _grey())
    (tmp_path / ".ipynb_checkpoints").mkdir()
    ds = read_class_folders(tmp_path)
    assert ds.class_names == ["NORMAL", "PNEUMONIA"]
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 0, 1, 1, 1]
    assert [p.name for p in ds.paths][:2] == ["IM-0001.jpeg", "IM-0002.jpeg"]
    assert not ds.multilabel and len(ds) == 5


def test_class_folders_errors(tmp_path: Path):
    _img(tmp_path / "NORMAL" / "a.jpeg", _grey())
    with pytest.raises(UserError, match="1 class folder"):
        read_class_folders(tmp_path)
    (tmp_path / "PNEUMONIA").mkdir()
    with pytest.raises(UserError, match="PNEUMONIA"):
        read_class_folders(tmp_path)


# --------------------------------------------------------------------------------------
# read_chestxray14
# --------------------------------------------------------------------------------------

CXR14_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
)
CXR14_ROWS = (
    "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143\n"
    "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143\n"
    "00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171\n"
    "00000003_000.png,Hernia,0,3,81,F,PA,2582,2991,0.143,0.143\n"
    "00000005_006.png,Effusion|Pleural_Thickening,6,5,70,F,AP,2048,2500,0.168,0.168\n"
)


@pytest.fixture()
def cxr14_root(tmp_path: Path) -> Path:
    _write(tmp_path / "Data_Entry_2017.csv", CXR14_HEADER + CXR14_ROWS)
    _write(tmp_path / "train_val_list.txt", "00000001_000.png\n00000001_001.png\n00000002_000.png\n00000005_006.png\n")
    _write(tmp_path / "test_list.txt", "00000003_000.png\n")
    # Kaggle layout: images split over images_001/images, images_002/images
    for name in ("00000001_000.png", "00000001_001.png"):
        _img(tmp_path / "images_001" / "images" / name, _grey())
    for name in ("00000002_000.png", "00000003_000.png"):
        _img(tmp_path / "images_002" / "images" / name, _grey())
    return tmp_path


def test_chestxray14_train(cxr14_root: Path, caplog):
    with caplog.at_level(logging.WARNING):
        ds = read_chestxray14(cxr14_root, "train")
    assert [p.name for p in ds.paths] == ["00000001_000.png", "00000001_001.png", "00000002_000.png"]
    assert ds.paths[2].parent.parent.name == "images_002"
    assert ds.multilabel and ds.class_names == list(CXR14_LABELS) and ds.labels.dtype == np.float32
    expected = np.zeros((3, 14), np.float32)
    expected[0, 1] = 1  # Cardiomegaly
    expected[1, [1, 10]] = 1  # Cardiomegaly|Emphysema
    np.testing.assert_array_equal(ds.labels, expected)
    assert "1 of 4 listed images not found" in caplog.text and "00000005_006.png" in caplog.text


def test_chestxray14_test_split(cxr14_root: Path):
    ds = read_chestxray14(cxr14_root, "test")
    assert [p.name for p in ds.paths] == ["00000003_000.png"]
    assert ds.labels[0, CXR14_LABELS.index("Hernia")] == 1 and ds.labels.sum() == 1


def test_chestxray14_errors(cxr14_root: Path, tmp_path: Path):
    with pytest.raises(UserError, match="'val'"):
        read_chestxray14(cxr14_root, "val")
    _write(cxr14_root / "test_list.txt", "00000005_006.png\n")
    with pytest.raises(UserError, match=r"test_list\.txt"):
        read_chestxray14(cxr14_root, "test")
    _write(cxr14_root / "Data_Entry_2017.csv", "Image Index,Labels\n00000001_000.png,Hernia\n")
    with pytest.raises(UserError, match=r"Data_Entry_2017\.csv.*'Finding Labels'"):
        read_chestxray14(cxr14_root, "train")
    (cxr14_root / "Data_Entry_2017.csv").unlink()
    with pytest.raises(UserError, match=r"Data_Entry_2017\.csv"):
        read_chestxray14(cxr14_root, "train")


# --------------------------------------------------------------------------------------
# read_rsna_pneumonia
# --------------------------------------------------------------------------------------

P1 = "00436515-870c-4b36-a041-de91049b9ab4"
P2 = "0004cfab-14fd-4e49-80ba-63a80b6bddd6"
P3 = "00313ee0-9eaa-42f4-b0ab-c148ed3241cd"


@pytest.fixture()
def rsna_root(tmp_path: Path) -> Path:
    _write(
        tmp_path / "stage_2_train_labels.csv",
        "patientId,x,y,width,height,Target\n"
        f"{P2},,,,,0\n"
        f"{P1},264.0,152.0,213.0,379.0,1\n"
        f"{P1},562.0,152.0,256.0,453.0,1\n"
        f"{P3},,,,,0\n",
    )
    _dicom(tmp_path / "stage_2_train_images" / f"{P1}.dcm", np.arange(24, dtype=np.uint8).reshape(4, 6) * 10, P1)
    _dicom(tmp_path / "stage_2_train_images" / f"{P2}.dcm", np.full((4, 6), 7, np.uint8), P2)
    return tmp_path


def test_rsna_pneumonia(rsna_root: Path, caplog):
    with caplog.at_level(logging.WARNING):
        ds = read_rsna_pneumonia(rsna_root)
    assert [p.stem for p in ds.paths] == [P2, P1]
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 1]
    assert ds.class_names == ["normal", "pneumonia"] and not ds.multilabel
    assert "1 of 3" in caplog.text and P3 in caplog.text
    img = read_gray(ds.paths[1])  # 8-bit MONOCHROME2 DICOM: stored range 0-255, like an 8-bit PNG
    np.testing.assert_allclose(img, np.arange(24, dtype=np.float32).reshape(4, 6) * 10 / 255, atol=1e-6)


def test_rsna_errors(rsna_root: Path):
    csv_path = rsna_root / "stage_2_train_labels.csv"
    csv_path.write_text(f"patientId,x,y,width,height,Target\n{P1},,,,,2\n")
    with pytest.raises(UserError, match=r"stage_2_train_labels\.csv.*line 2"):
        read_rsna_pneumonia(rsna_root)
    csv_path.write_text(f"patientId,x,y,width,height\n{P1},,,,\n")
    with pytest.raises(UserError, match=r"stage_2_train_labels\.csv.*'Target'"):
        read_rsna_pneumonia(rsna_root)
    csv_path.write_text(f"patientId,x,y,width,height,Target\n{P3},,,,,0\n")
    with pytest.raises(UserError, match=r"stage_2_train_labels\.csv"):
        read_rsna_pneumonia(rsna_root)


# --------------------------------------------------------------------------------------
# read_labels_csv
# --------------------------------------------------------------------------------------


@pytest.fixture()
def synth_cxr(tmp_path: Path) -> Path:
    for i in range(4):
        _img(tmp_path / "images" / f"cxr_{i:04d}.png", _grey())
    return tmp_path


def test_labels_csv_class_names(synth_cxr: Path):
    csv_path = _write(
        synth_cxr / "labels.csv",
        "image,label,lesion_type\n"
        "cxr_0000.png,normal,none\ncxr_0001.png,pneumonia,consolidation\n"
        "cxr_0002.png,nodule,nodule\ncxr_0003.png,normal,none\n",
    )
    ds = read_labels_csv(csv_path, image_dir=synth_cxr / "images")
    assert ds.class_names == ["nodule", "normal", "pneumonia"]
    assert ds.labels.tolist() == [1, 2, 0, 1] and ds.labels.dtype == np.int64
    assert ds.paths[3] == synth_cxr / "images" / "cxr_0003.png" and not ds.multilabel


def test_labels_csv_int_and_multilabel(synth_cxr: Path):
    csv_path = _write(synth_cxr / "int.csv", "image,label\ncxr_0000.png,0\ncxr_0001.png,2\n")
    ds = read_labels_csv(csv_path, image_dir=synth_cxr / "images")
    assert ds.class_names == ["0", "1", "2"] and ds.labels.tolist() == [0, 2]
    csv_path = _write(
        synth_cxr / "multi.csv",
        "image,Effusion,Nodule,lesion_type\ncxr_0000.png,1,0,effusion\ncxr_0001.png,1,1,mixed\ncxr_0002.png,0,0,none\n",
    )
    ds = read_labels_csv(csv_path, image_dir=synth_cxr / "images")
    assert ds.multilabel and ds.class_names == ["Effusion", "Nodule"] and ds.labels.dtype == np.float32
    np.testing.assert_array_equal(ds.labels, [[1, 0], [1, 1], [0, 0]])


def test_labels_csv_errors(synth_cxr: Path):
    images = synth_cxr / "images"
    bad = _write(synth_cxr / "missing.csv", "image,label\ncxr_0000.png,0\ncxr_9999.png,1\n")
    with pytest.raises(UserError, match=r"missing\.csv.*1 of 2.*cxr_9999\.png"):
        read_labels_csv(bad, image_dir=images)
    bad = _write(synth_cxr / "multi_bad.csv", "image,Effusion\ncxr_0000.png,yes\n")
    with pytest.raises(UserError, match=r"multi_bad\.csv.*line 2.*'Effusion'"):
        read_labels_csv(bad, image_dir=images)
    bad = _write(synth_cxr / "noimage.csv", "file,label\ncxr_0000.png,0\n")
    with pytest.raises(UserError, match=r"noimage\.csv.*'image'"):
        read_labels_csv(bad, image_dir=images)
    with pytest.raises(UserError, match=r"nothere\.csv"):
        read_labels_csv(synth_cxr / "nothere.csv", image_dir=images)
