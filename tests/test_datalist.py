"""Datalists from MSD json, NIfTI folders and DICOM series (common.data.datalist), and their splits."""

import json
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImaged, Orientationd
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from common.data import (
    BadInputPolicy,
    DatalistError,
    datalist_from_dicom_folder,
    datalist_from_msd,
    datalist_from_nifti_folder,
    image_loader,
    inference_datalist,
    load_datalist,
    split_datalist,
    training_split,
)

CT_SMALL = get_testdata_file("CT_small.dcm")  # 128 x 128, PixelSpacing 0.661468, IOP axial, HU = raw - 1024


def _nifti(path: Path, shape=(8, 8, 4), seed=None) -> Path:
    """A small int16 NIfTI (random voxels when ``seed`` is given, so that it does not compress to nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.zeros(shape, np.int16) if seed is None else np.random.default_rng(seed).integers(-1000, 1000, shape)
    nib.save(nib.Nifti1Image(data.astype(np.int16), np.diag([1.5, 1.5, 3.0, 1.0])), path)
    return path


def _dicom_slice(path: Path, *, z: float, instance: int, series_uid: str, offset: int = 0, **tags) -> pydicom.Dataset:
    """A copy of CT_small.dcm at height ``z`` (mm), its pixels raised by ``offset``, with other ``tags``."""
    ds = pydicom.dcmread(CT_SMALL)
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], z]
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = series_uid
    ds.PixelData = (ds.pixel_array.astype(np.int32) + offset).astype(np.int16).tobytes()
    for name, value in tags.items():
        setattr(ds, name, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return ds


def _series(folder: Path, z_values, instances, names, series_uid=None, **tags) -> list[pydicom.Dataset]:
    """Slices of one series; slice ``k`` (at ``z_values[k]``) has its pixels raised by ``100 * k``."""
    series_uid = series_uid or generate_uid()
    return [
        _dicom_slice(folder / name, z=z, instance=i, series_uid=series_uid, offset=100 * k, **tags)
        for k, (z, i, name) in enumerate(zip(z_values, instances, names))
    ]


@pytest.fixture
def dicom_tree(tmp_path):
    """patient1/series_a: 4 slices of series A (InstanceNumber and file names out of z order, some without
    suffix) + 1 stray slice of series B; patient2/study/series_c: 2 slices of series C; a README.txt."""
    root = tmp_path / "dicom"
    a = _series(root / "patient1" / "series_a", [10, 15, 20, 25], [3, 1, 4, 2], ["x3.dcm", "a1", "m4.dcm", "c2"])
    b = _series(root / "patient1" / "series_a", [0], [1], ["stray.dcm"])
    c = _series(root / "patient2" / "study" / "series_c", [0, 5], [1, 2], ["1.dcm", "2.dcm"])
    (root / "README.txt").write_text("not a DICOM file")
    return root, a, b, c


# ------------------------------------------------------------------------------------------ MSD json


def _msd(tmp_path: Path) -> Path:
    for name in ("a", "b", "c"):
        _nifti(tmp_path / "imagesTr" / f"{name}.nii.gz")
        _nifti(tmp_path / "labelsTr" / f"{name}.nii.gz")
    _nifti(tmp_path / "imagesTs" / "t.nii.gz")
    content = {
        "name": "toy",
        "training": [
            {"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"},
            {"image": str(tmp_path / "imagesTr" / "b.nii.gz"), "label": "labelsTr/b.nii.gz"},
        ],
        "validation": [{"image": "imagesTr/c.nii.gz", "label": "labelsTr/c.nii.gz"}],
        "test": ["imagesTs/t.nii.gz"],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    return tmp_path / "dataset.json"


def test_msd_resolves_paths_against_the_json_folder(tmp_path):
    json_path = _msd(tmp_path)
    training = datalist_from_msd(json_path)
    assert training == [
        {"image": str(tmp_path / "imagesTr" / "a.nii.gz"), "label": str(tmp_path / "labelsTr" / "a.nii.gz")},
        {"image": str(tmp_path / "imagesTr" / "b.nii.gz"), "label": str(tmp_path / "labelsTr" / "b.nii.gz")},
    ]
    assert datalist_from_msd(json_path, key="test") == [{"image": str(tmp_path / "imagesTs" / "t.nii.gz")}]
    assert len(datalist_from_msd(json_path, key="validation")) == 1


def test_msd_missing_file_names_the_file_and_the_json(tmp_path):
    json_path = _msd(tmp_path)
    (tmp_path / "labelsTr" / "b.nii.gz").unlink()
    with pytest.raises(DatalistError, match=r"labelsTr/b\.nii\.gz.*does not exist") as error:
        datalist_from_msd(json_path)
    assert str(json_path) in str(error.value)


def test_msd_errors(tmp_path):
    json_path = _msd(tmp_path)
    with pytest.raises(DatalistError, match="'nope'"):
        datalist_from_msd(json_path, key="nope")
    with pytest.raises(DatalistError, match="does not exist"):
        datalist_from_msd(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DatalistError, match="broken.json"):
        datalist_from_msd(tmp_path / "broken.json")
    (tmp_path / "empty.json").write_text(json.dumps({"training": []}))
    with pytest.raises(DatalistError, match="empty"):
        datalist_from_msd(tmp_path / "empty.json")
    (tmp_path / "noimage.json").write_text(json.dumps({"training": [{"label": "labelsTr/a.nii.gz"}]}))
    with pytest.raises(DatalistError, match="no 'image'"):
        datalist_from_msd(tmp_path / "noimage.json")


def test_msd_checks_nifti_headers(tmp_path):
    json_path = _msd(tmp_path)
    _nifti(tmp_path / "labelsTr" / "a.nii.gz", shape=(8, 8, 5))
    with pytest.raises(DatalistError, match=r"labelsTr/a\.nii\.gz has shape \(8, 8, 5\).*imagesTr/a\.nii\.gz"):
        datalist_from_msd(json_path)


# ------------------------------------------------------------------------------------------- NIfTI


def test_nifti_msd_layout_pairs_nnunet_case_names(tmp_path):
    for case in ("case_001", "case_002"):
        _nifti(tmp_path / "imagesTr" / f"{case}_0000.nii.gz")
        _nifti(tmp_path / "labelsTr" / f"{case}.nii.gz")
    _nifti(tmp_path / "imagesTs" / "case_003_0000.nii")
    (tmp_path / "imagesTr" / "._case_001_0000.nii.gz").write_bytes(b"macOS resource fork")  # MSD archives have these
    training = datalist_from_nifti_folder(tmp_path)
    assert [Path(e["image"]).name for e in training] == ["case_001_0000.nii.gz", "case_002_0000.nii.gz"]
    assert [Path(e["label"]).relative_to(tmp_path).as_posix() for e in training] == [
        "labelsTr/case_001.nii.gz",
        "labelsTr/case_002.nii.gz",
    ]
    test = datalist_from_nifti_folder(tmp_path, key="test")
    assert test == [{"image": str(tmp_path / "imagesTs" / "case_003_0000.nii")}]
    with pytest.raises(DatalistError, match="key must be one of"):
        datalist_from_nifti_folder(tmp_path, key="validation")


def test_nifti_msd_layout_without_the_key_folder(tmp_path):
    _nifti(tmp_path / "imagesTr" / "a.nii.gz")
    with pytest.raises(DatalistError, match="no imagesTs/"):
        datalist_from_nifti_folder(tmp_path, key="test")


def test_nifti_images_labels_layout_with_partial_labels(tmp_path, caplog):
    _nifti(tmp_path / "images" / "a.nii.gz")
    _nifti(tmp_path / "images" / "b.nii.gz")
    _nifti(tmp_path / "labels" / "a.nii.gz")
    with caplog.at_level(logging.WARNING):
        datalist = datalist_from_nifti_folder(tmp_path)
    assert datalist == [
        {"image": str(tmp_path / "images" / "a.nii.gz"), "label": str(tmp_path / "labels" / "a.nii.gz")},
        {"image": str(tmp_path / "images" / "b.nii.gz")},
    ]
    assert "1 of 2 images have no label" in caplog.text and "b.nii.gz" in caplog.text


def test_nifti_flat_folder_with_label_folder(tmp_path):
    _nifti(tmp_path / "scans" / "a.nii.gz")
    _nifti(tmp_path / "masks" / "a.nii.gz")
    assert datalist_from_nifti_folder(tmp_path / "scans") == [{"image": str(tmp_path / "scans" / "a.nii.gz")}]
    assert datalist_from_nifti_folder(tmp_path / "scans", label_folder=tmp_path / "masks")[0]["label"] == str(
        tmp_path / "masks" / "a.nii.gz"
    )
    with pytest.raises(DatalistError, match="label folder .*nowhere does not exist"):
        datalist_from_nifti_folder(tmp_path / "scans", label_folder=tmp_path / "nowhere")


def test_nifti_4d_with_singleton_last_dimension_is_accepted_and_loads(tmp_path):
    _nifti(tmp_path / "a.nii.gz", shape=(8, 8, 4, 1))
    _nifti(tmp_path / "labels" / "a.nii.gz", shape=(8, 8, 4))
    datalist = datalist_from_nifti_folder(tmp_path, label_folder=tmp_path / "labels")
    loaded = image_loader(["image", "label"])(datalist[0])
    assert loaded["image"].shape == loaded["label"].shape == (1, 8, 8, 4)


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 4, 1, 2)])  # 4D holds channels (tests/test_segmentation_tasks.py)
def test_nifti_not_3d(tmp_path, shape):
    _nifti(tmp_path / "a.nii.gz", shape=shape)
    with pytest.raises(DatalistError, match=r"a\.nii\.gz is not a 3D volume") as error:
        datalist_from_nifti_folder(tmp_path)
    assert f"shape {shape}" in str(error.value)


def test_nifti_label_shape_mismatch_names_both_files(tmp_path):
    _nifti(tmp_path / "images" / "a.nii.gz", shape=(8, 8, 4))
    _nifti(tmp_path / "labels" / "a.nii.gz", shape=(8, 8, 3))
    with pytest.raises(DatalistError) as error:
        datalist_from_nifti_folder(tmp_path)
    message = str(error.value)
    assert "labels/a.nii.gz has shape (8, 8, 3)" in message and "images/a.nii.gz has shape (8, 8, 4)" in message


def test_nifti_images_sharing_a_label(tmp_path):
    _nifti(tmp_path / "imagesTr" / "case_0000.nii.gz")
    _nifti(tmp_path / "imagesTr" / "case_0001.nii.gz")
    _nifti(tmp_path / "labelsTr" / "case.nii.gz")
    with pytest.raises(DatalistError, match="multi-channel"):
        datalist_from_nifti_folder(tmp_path)


def _truncate(path: Path, fraction: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


@pytest.mark.parametrize("name", ["bad.nii.gz", "bad.nii"])
def test_truncated_nifti_is_unreadable(tmp_path, caplog, name):
    _nifti(tmp_path / "good.nii.gz")
    _truncate(_nifti(tmp_path / name, shape=(16, 16, 8), seed=0))
    assert nib.load(tmp_path / name).shape == (16, 16, 8)  # the header alone does not tell
    with pytest.raises(DatalistError, match=rf"unreadable file .*{name}.*skip_unreadable=True"):
        datalist_from_nifti_folder(tmp_path)
    with caplog.at_level(logging.WARNING):
        datalist = datalist_from_nifti_folder(tmp_path, skip_unreadable=True)
    assert datalist == [{"image": str(tmp_path / "good.nii.gz")}]
    assert name in caplog.text and "skipping" in caplog.text


def test_garbage_nifti_is_unreadable(tmp_path):
    (tmp_path / "junk.nii.gz").write_bytes(b"this is not gzip")
    with pytest.raises(DatalistError, match=r"unreadable file .*junk\.nii\.gz"):
        datalist_from_nifti_folder(tmp_path)


def test_nifti_folder_errors(tmp_path):
    with pytest.raises(DatalistError, match="does not exist"):
        datalist_from_nifti_folder(tmp_path / "missing")
    with pytest.raises(DatalistError, match=r"no NIfTI images .*imagesTr/ \+ labelsTr/.*images/ \+ labels/"):
        datalist_from_nifti_folder(tmp_path)


# ------------------------------------------------------------------------------------------- DICOM


def test_dicom_one_entry_per_series_sorted_along_the_normal(dicom_tree, caplog):
    root, a, b, c = dicom_tree
    with caplog.at_level(logging.INFO):
        datalist = datalist_from_dicom_folder(root)
    series_a = root / "patient1" / "series_a"
    assert datalist == [
        {"image": [str(series_a / name) for name in ("x3.dcm", "a1", "m4.dcm", "c2")]},  # z = 10, 15, 20, 25
        {"image": [str(series_a / "stray.dcm")]},
        {"image": [str(root / "patient2" / "study" / "series_c" / name) for name in ("1.dcm", "2.dcm")]},
    ]
    assert "README.txt" in caplog.text  # ignored, but said so


def test_dicom_entry_loads_as_a_volume_in_hu_with_its_geometry(dicom_tree):
    root, a, _, _ = dicom_tree
    volume = image_loader("image")(datalist_from_dicom_folder(root)[0])["image"]
    assert volume.shape == (1, 128, 128, 4)
    for k, ds in enumerate(a):  # slice k lies at the k-th height and holds raw + 100 k
        np.testing.assert_array_equal(volume[0, ..., k].numpy(), ds.pixel_array.T.astype(np.float32) - 1024)
    x, y, _ = (float(v) for v in a[0].ImagePositionPatient)
    spacing = 0.661468
    expected = np.array([[-spacing, 0, 0, -x], [0, -spacing, 0, -y], [0, 0, 5.0, 10.0], [0, 0, 0, 1]])  # RAS
    np.testing.assert_allclose(volume.affine.numpy(), expected, atol=1e-5)


def test_dicom_rescale_slope_is_applied(tmp_path):
    slices = _series(tmp_path, [0, 2], [1, 2], ["1.dcm", "2.dcm"], RescaleSlope=2, RescaleIntercept=-1000)
    volume = image_loader("image")(datalist_from_dicom_folder(tmp_path)[0])["image"]
    np.testing.assert_array_equal(volume[0, ..., 1].numpy(), slices[1].pixel_array.T * 2.0 - 1000)


def test_dicom_reader_agrees_with_monai_pydicom_reader_on_a_clean_series(tmp_path):
    _series(tmp_path, [0, 5, 10], [1, 2, 3], ["1.dcm", "2.dcm", "3.dcm"])
    ours = image_loader("image")(datalist_from_dicom_folder(tmp_path)[0])["image"]
    monai = LoadImaged("image", reader="PydicomReader", ensure_channel_first=True)({"image": str(tmp_path)})["image"]
    np.testing.assert_array_equal(ours.numpy(), monai.numpy())
    np.testing.assert_allclose(ours.affine.numpy(), monai.affine.numpy(), atol=1e-5)


def test_dicom_reader_reads_a_folder_of_one_series_and_refuses_several(dicom_tree):
    root, _, _, _ = dicom_tree
    loader = image_loader("image")
    assert loader({"image": str(root / "patient2" / "study" / "series_c")})["image"].shape == (1, 128, 128, 2)
    with pytest.raises(DatalistError, match=r"series_a holds 2 DICOM series"):
        loader({"image": str(root / "patient1" / "series_a")})


def test_image_loader_reads_nifti_and_dicom_entries(tmp_path, dicom_tree):
    root, _, _, _ = dicom_tree
    loader = image_loader("image")
    assert loader({"image": str(_nifti(tmp_path / "a.nii.gz"))})["image"].shape == (1, 8, 8, 4)
    assert loader(datalist_from_dicom_folder(root)[2])["image"].shape == (1, 128, 128, 2)


def test_dicom_file_that_is_not_dicom(dicom_tree, caplog):
    root, _, _, _ = dicom_tree
    (root / "patient2" / "fake.dcm").write_text("I claim to be DICOM")
    with pytest.raises(DatalistError, match=r"unreadable file .*fake\.dcm: not DICOM"):
        datalist_from_dicom_folder(root)
    with caplog.at_level(logging.WARNING):
        assert len(datalist_from_dicom_folder(root, skip_unreadable=True)) == 3
    assert "fake.dcm" in caplog.text


def test_dicom_without_geometry_is_skipped_with_a_warning(tmp_path, caplog):
    _series(tmp_path, [0, 5], [1, 2], ["1.dcm", "2.dcm"])
    report = pydicom.dcmread(CT_SMALL)
    del report.ImagePositionPatient
    report.save_as(tmp_path / "report.dcm")
    with caplog.at_level(logging.WARNING):
        assert len(datalist_from_dicom_folder(tmp_path)) == 1
    assert "report.dcm" in caplog.text and "ImagePositionPatient" in caplog.text


def test_dicom_inconsistent_series(tmp_path):
    uid = generate_uid()
    _series(tmp_path / "spacing", [0, 5], [1, 2], ["1.dcm", "2.dcm"], series_uid=uid)
    _dicom_slice(tmp_path / "spacing" / "3.dcm", z=10, instance=3, series_uid=uid, PixelSpacing=[0.5, 0.5])
    with pytest.raises(DatalistError, match=rf"series {uid} .*differ in size, orientation or pixel spacing"):
        datalist_from_dicom_folder(tmp_path / "spacing")
    _series(tmp_path / "duplicate", [0, 0], [1, 2], ["1.dcm", "2.dcm"])
    with pytest.raises(DatalistError, match="same position"):
        datalist_from_dicom_folder(tmp_path / "duplicate")
    # skipping bad inputs: both series are reported, the good one is listed
    _series(tmp_path / "good", [0, 5], [1, 2], ["1.dcm", "2.dcm"])
    policy = BadInputPolicy(skip=True, report_path=tmp_path / "skipped.csv")
    listed = datalist_from_dicom_folder(tmp_path, skip_unreadable=policy)
    assert [Path(entry["image"][0]).parent.name for entry in listed] == ["good"]
    report = (tmp_path / "skipped.csv").read_text()
    assert "differ in size, orientation or pixel spacing" in report and "same position" in report


def test_dicom_uneven_spacing_is_logged(tmp_path, caplog):
    _series(tmp_path, [0, 1, 2, 4], [1, 2, 3, 4], ["1", "2", "3", "4"])
    with caplog.at_level(logging.WARNING):
        datalist_from_dicom_folder(tmp_path)
    assert "slice spacing varies from 1 to 2 mm" in caplog.text


def test_dicom_folder_errors(tmp_path):
    with pytest.raises(DatalistError, match="DICOM folder .* does not exist"):
        datalist_from_dicom_folder(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatalistError, match="no images in .*DICM preamble"):
        datalist_from_dicom_folder(tmp_path)


# ------------------------------------------------------------------------------------ load_datalist


def test_load_datalist_dispatch(tmp_path, dicom_tree):
    json_path = _msd(tmp_path / "msd")
    assert load_datalist(json_path) == load_datalist(tmp_path / "msd") == datalist_from_msd(json_path)
    _nifti(tmp_path / "nifti" / "images" / "a.nii.gz")
    assert load_datalist(tmp_path / "nifti") == [{"image": str(tmp_path / "nifti" / "images" / "a.nii.gz")}]
    root, _, _, _ = dicom_tree
    assert len(load_datalist(root)) == 3


def test_load_datalist_reads_dicom_in_an_images_folder(tmp_path):
    _series(tmp_path / "images", [0, 5], [1, 2], ["1.dcm", "2.dcm"])
    assert load_datalist(tmp_path) == [{"image": [str(tmp_path / "images" / name) for name in ("1.dcm", "2.dcm")]}]


def test_load_datalist_errors(tmp_path, dicom_tree):
    with pytest.raises(DatalistError, match=r"missing does not exist; expected a dataset.json or a folder"):
        load_datalist(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatalistError, match=r"notes\.txt is a file but not a \.json"):
        load_datalist(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatalistError, match="no images in .*empty; tried dataset.json, NIfTI .*, DICOM"):
        load_datalist(tmp_path / "empty")
    root, _, _, _ = dicom_tree
    with pytest.raises(DatalistError, match="label_folder is for flat NIfTI folders only"):
        load_datalist(root, label_folder=tmp_path)


def test_training_split_and_inference_datalist(tmp_path):
    json_path = _msd(tmp_path)
    train, val = training_split(tmp_path)
    assert train == datalist_from_msd(json_path) and val == datalist_from_msd(json_path, key="validation")
    train, val = training_split(json_path, fold=1, num_folds=2)
    assert len(train) == len(val) == 1
    assert inference_datalist(tmp_path) == [{"image": str(tmp_path / "imagesTs" / "t.nii.gz")}]
    one_file = str(tmp_path / "imagesTr" / "a.nii.gz")
    assert inference_datalist(one_file) == [{"image": one_file}]
    assert [e["image"] for e in inference_datalist(tmp_path / "imagesTr")] == [
        str(tmp_path / "imagesTr" / f"{name}.nii.gz") for name in ("a", "b", "c")
    ]


# ---------------------------------------------------------------------------------------- splitting

CASES = [{"image": f"case{i:02d}.nii.gz"} for i in range(23)]


def _images(datalist):
    return {entry["image"] for entry in datalist}


def test_kfold_folds_are_disjoint_cover_everything_and_are_deterministic():
    vals = [split_datalist(CASES, fold=f, num_folds=5, seed=3)[1] for f in range(5)]
    assert sum(len(v) for v in vals) == len(CASES)
    assert set.union(*(_images(v) for v in vals)) == _images(CASES)
    for f, val in enumerate(vals):
        train, again = split_datalist(CASES, fold=f, num_folds=5, seed=3)
        assert again == val and not _images(train) & _images(val) and len(train) + len(val) == len(CASES)
    assert split_datalist(CASES, fold=0, seed=4)[1] != vals[0]


def test_explicit_validation_and_holdout():
    train, val = split_datalist(CASES[:20], validation=CASES[20:])
    assert train == CASES[:20] and val == CASES[20:]
    with pytest.raises(DatalistError, match="also in the datalist"):
        split_datalist(CASES, validation=CASES[20:])
    train, val = split_datalist(CASES, seed=1)
    assert len(val) == 5 and len(train) == 18 and not _images(train) & _images(val)
    assert split_datalist(CASES, seed=1) == (train, val) and split_datalist(CASES, seed=2) != (train, val)
    assert train == [e for e in CASES if e in train]  # in the order of the datalist


def test_train_fraction_is_nested_and_keeps_at_least_one_case():
    full, val = split_datalist(CASES, fold=2)
    subsets = [split_datalist(CASES, fold=2, train_fraction=f)[0] for f in (0.01, 0.25, 0.5, 1.0)]
    assert [len(s) for s in subsets] == [1, 5, 9, 18] and subsets[-1] == full
    for smaller, larger in zip(subsets, subsets[1:]):
        assert _images(smaller) <= _images(larger)
    assert split_datalist(CASES, fold=2, train_fraction=0.25)[1] == val


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fold": 5}, r"fold must be in 0\.\.4"),
        ({"fold": -1}, r"fold must be in 0\.\.4"),
        ({"fold": 0, "num_folds": 1}, r"num_folds must be in 2\.\.23"),
        ({"fold": 0, "num_folds": 24}, r"num_folds must be in 2\.\.23"),
        ({"train_fraction": 0.0}, r"train_fraction must be in \(0, 1\]"),
        ({"train_fraction": 1.5}, r"train_fraction must be in \(0, 1\]"),
        ({"fold": 0, "validation": CASES[:1]}, "not both"),
    ],
)
def test_split_argument_errors(kwargs, message):
    with pytest.raises(DatalistError, match=message):
        split_datalist(CASES, **kwargs)


def test_split_too_few_cases():
    with pytest.raises(DatalistError, match="empty"):
        split_datalist([])
    with pytest.raises(DatalistError, match="1 case"):
        split_datalist(CASES[:1])


# ---------------------------------------------------------------------------------------- real data


def test_totalsegmentator_dicom_series_matches_its_segmentation(shared_data):
    folder = shared_data / "totalsegmentator"
    datalist = load_datalist(folder / "example_ct_dicom")
    assert len(datalist) == 1 and len(datalist[0]["image"]) == 20
    entry = {"image": datalist[0]["image"], "label": str(folder / "example_seg_dicom.nii.gz")}
    loaded = image_loader(["image", "label"])(entry)
    image, label = loaded["image"], loaded["label"]
    assert image.shape == label.shape == (1, 512, 512, 20)
    assert -1100 < float(image.min()) <= -1000 and float(image.max()) > 500
    np.testing.assert_allclose(image.pixdim.numpy(), [0.9765625, 0.9765625, 2.0], atol=1e-4)
    # the seg (dcm2niix-style LAS) flips the row axis of the DICOM (LPS): same grid once both are RAS
    ras = Orientationd(["image", "label"], axcodes="RAS", labels=None)({"image": image, "label": label})
    assert ras["image"].shape == ras["label"].shape
    np.testing.assert_allclose(ras["image"].affine.numpy(), ras["label"].affine.numpy(), atol=1e-3)
    organs = ras["label"] > 0
    assert float((organs & (ras["image"] > -300)).sum() / organs.sum()) > 0.9  # organs lie inside the body


def test_cq500_keeps_the_stray_slice_apart(shared_data, caplog):
    with caplog.at_level(logging.WARNING):
        datalist = load_datalist(shared_data / "cq500_ct0" / "dicom")
    assert sorted(len(entry["image"]) for entry in datalist) == [1, 238]
    assert "slice spacing varies" in caplog.text  # one slice of the 238-slice series is missing
    stray, series = sorted(datalist, key=lambda entry: len(entry["image"]))
    loader = image_loader("image")
    assert loader(stray)["image"].shape == (1, 512, 512, 1)
    head = loader({"image": series["image"][:10]})["image"]  # a 10-slice crop: JPEG-lossless, tilted gantry
    assert head.shape == (1, 512, 512, 10) and float(head.max()) > 500
    np.testing.assert_allclose(head.pixdim.numpy(), [0.443359, 0.443359, 0.625], atol=1e-3)  # 0.625 mm along z


def test_nifti_folder_of_symlinks_to_real_ct(shared_data, tmp_path):
    folder = shared_data / "totalsegmentator"
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    os.symlink(folder / "example_ct_sm.nii.gz", tmp_path / "imagesTr" / "example_0000.nii.gz")
    os.symlink(folder / "example_seg.nii.gz", tmp_path / "labelsTr" / "example.nii.gz")
    datalist = load_datalist(tmp_path)
    image, label = tmp_path / "imagesTr" / "example_0000.nii.gz", tmp_path / "labelsTr" / "example.nii.gz"
    assert datalist == [{"image": str(image), "label": str(label)}]
    loaded = image_loader(["image", "label"])(datalist[0])
    assert loaded["image"].shape == loaded["label"].shape == (1, 122, 101, 30)
    np.testing.assert_allclose(loaded["image"].affine.numpy(), loaded["label"].affine.numpy())
