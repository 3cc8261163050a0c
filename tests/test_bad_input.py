"""Bad data never becomes a silent bad model: content checks at first read, the gzip CRC, corrupt DICOM slices,
and the one policy that skips or raises (common.data.errors, common.data.screening, common.transforms.checks)."""

import csv
import gzip
import logging
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
import torch.distributed as dist
from monai.transforms import Compose, LoadImaged
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from common.data import (
    BadInputError,
    BadInputPolicy,
    DatalistError,
    UnreadableFileError,
    datalist_from_dicom_folder,
    datalist_from_nifti_folder,
    image_loader,
    screen_datalist,
)
from common.data.errors import skip_or_raise
from common.data.screening import bad_input_cause
from common.transforms import (
    CheckCTd,
    CheckLabelsd,
    checked_loader,
    load_slice_transforms,
    segmentation_val_transforms,
)

SHAPE = (20, 20, 10)
AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])


def _ct(seed: int = 0, dtype=np.int16) -> np.ndarray:
    """A CT-like volume in HU (random, so that it does not compress to nothing)."""
    return np.random.default_rng(seed).integers(-1000, 1500, SHAPE).astype(dtype)


def _nifti(path: Path, data: np.ndarray, **header) -> Path:
    image = nib.Nifti1Image(data, AFFINE)
    for name, value in header.items():
        image.header[name] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


def _bad_input(call) -> BadInputError:
    """The BadInputError that ``call()`` raises, directly or as the cause of Compose's RuntimeError."""
    with pytest.raises(Exception) as raised:
        call()
    bad = bad_input_cause(raised.value)
    assert bad is not None, f"no BadInputError behind {raised.value!r}"
    return bad


def _load_and_check(path: Path) -> dict:
    return checked_loader(["image"])({"image": str(path)})


# ------------------------------------------------------------------------------------------- CT values


def test_nan_block_is_a_bad_input_naming_the_file(tmp_path):
    data = _ct(dtype=np.float32)
    data[2:10, 4:14, 3:5] = np.nan  # 160 of 4000 voxels: 4 %
    path = _nifti(tmp_path / "nan_block.nii.gz", data)
    error = _bad_input(lambda: _load_and_check(path))
    assert Path(error.path) == path
    assert "160 NaN and 0 infinite voxels (4 %" in error.reason and "expected finite values" in error.reason
    assert "index ranges [2..9, 4..13, 3..4]" in error.reason
    assert str(path) in str(error) and "--skip_bad_input true" in str(error)


def test_all_nan_and_infinite_volumes_are_bad_inputs(tmp_path):
    path = _nifti(tmp_path / "all_nan.nii.gz", np.full(SHAPE, np.nan, np.float32))
    assert "4,000 NaN" in _bad_input(lambda: _load_and_check(path)).reason
    data = _ct(dtype=np.float32)
    data[0, 0, 0] = -np.inf
    path = _nifti(tmp_path / "inf.nii.gz", data)
    assert "0 NaN and 1 infinite voxels" in _bad_input(lambda: _load_and_check(path)).reason


def test_values_no_ct_holds_are_bad_inputs(tmp_path):
    data = _ct(dtype=np.int32)
    data[5, 6, 7], data[1, 2, 3] = 2**31 - 1, -(2**31)  # what a gzip corrupted mid-stream loads as
    path = _nifti(tmp_path / "int32.nii.gz", data)
    error = _bad_input(lambda: _load_and_check(path))
    assert Path(error.path) == path
    assert "(2 of 4,000 voxels outside the int16 range -32768 .. 32767, the first at voxel (1, 2, 3))" in error.reason


def test_padding_values_of_real_scanners_pass(tmp_path):
    data = _ct()
    data[0], data[1], data[2], data[3] = -1024, -2048, -3024, -32768
    data[4, 0, 0] = 32767
    loaded = _load_and_check(_nifti(tmp_path / "padded.nii.gz", data))["image"]
    assert float(loaded.min()) == -32768 and float(loaded.max()) == 32767


def test_real_cq500_series_passes(shared_data):
    folder = shared_data / "cq500_ct0" / "dicom"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    entry = max(datalist_from_dicom_folder(folder), key=lambda e: len(e["image"]))
    image = checked_loader(["image"])(entry)["image"]
    assert float(image.min()) == -3024  # the scanner's padding
    assert image.meta["dicom_series"].startswith("DICOM series ") and str(folder) in image.meta["dicom_series"]


def test_check_names_the_dicom_series_of_a_volume(tmp_path):
    _series(tmp_path, broken=None)
    loaded = image_loader("image")(datalist_from_dicom_folder(tmp_path)[0])
    loaded["image"][0, 0, 0, 0] = float("nan")
    error = _bad_input(lambda: CheckCTd("image")(loaded))
    assert error.path == loaded["image"].meta["dicom_series"] and str(tmp_path) in error.path


# ------------------------------------------------------------------------------------------- labels


def test_label_values_outside_the_label_table_name_the_file_and_the_values(tmp_path):
    image = _nifti(tmp_path / "image.nii.gz", _ct())
    label = _nifti(tmp_path / "label.nii.gz", (np.arange(np.prod(SHAPE)) % 117).reshape(SHAPE).astype(np.uint8))
    entry = {"image": str(image), "label": str(label)}
    error = _bad_input(lambda: checked_loader(["image", "label"], num_classes=14)(entry))
    assert Path(error.path) == label
    assert "found label values [14, 15, 16, 17, 18, 19, 20, 21, 22, 23, ... (103 distinct)]" in error.reason
    assert "in 3,510 of 4,000 voxels; expected integers 0..13 (the task's label table has 14 entries)" in error.reason
    # the segmentation pipelines check labels only when given the number of classes
    assert _bad_input(lambda: segmentation_val_transforms(num_classes=14)(entry)).path == error.path
    assert segmentation_val_transforms()(entry)["label"].max() == 116


def test_fractional_and_negative_labels_are_bad_inputs():
    label = torch.zeros(1, 4, 4, 4)
    label[0, 0, 0, :2] = torch.tensor([0.5, -1.0])
    error = _bad_input(lambda: CheckLabelsd("label", num_classes=3)({"label": label}))
    assert "found label values [-1, 0.5] in 2 of 64 voxels" in error.reason
    CheckLabelsd("label", num_classes=3)({"label": label.clamp(0, 2).round()})


# ------------------------------------------------------------------------------------------- 2D slices


def test_npy_slice_with_nan_is_a_bad_input(tmp_path):
    unit = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    np.save(tmp_path / "good.npy", unit)
    unit[3, 4] = np.nan
    np.save(tmp_path / "nan.npy", unit)
    load = Compose(load_slice_transforms(["image"]))
    assert load({"image": str(tmp_path / "good.npy")})["image"].shape == (1, 16, 16)
    error = _bad_input(lambda: load({"image": str(tmp_path / "nan.npy")}))
    assert Path(error.path) == tmp_path / "nan.npy" and "1 NaN and 0 infinite pixels" in error.reason


# ------------------------------------------------------------------------------------------- gzip CRC


def test_verified_reader_gives_what_monai_nibabel_reader_gives(tmp_path):
    files = [
        _nifti(tmp_path / "int16.nii.gz", _ct()),
        _nifti(tmp_path / "scaled.nii.gz", _ct(1), scl_slope=0.5, scl_inter=-1024.0),
        _nifti(tmp_path / "float.nii.gz", _ct(2, np.float32)),
        _nifti(tmp_path / "plain.nii", _ct(3)),
    ]
    for path in files:
        ours = image_loader("image")({"image": str(path)})["image"]
        monai = LoadImaged("image", reader="NibabelReader", ensure_channel_first=True)({"image": str(path)})["image"]
        assert ours.shape == monai.shape and ours.dtype == monai.dtype
        torch.testing.assert_close(ours.as_tensor(), monai.as_tensor(), rtol=0, atol=0)
        torch.testing.assert_close(ours.affine, monai.affine, rtol=0, atol=0)
        assert ours.meta.keys() == monai.meta.keys()
        for key, value in monai.meta.items():
            np.testing.assert_array_equal(np.asarray(ours.meta[key]), np.asarray(value), err_msg=f"{path}: {key}")


def test_gzip_crc_mismatch_is_an_unreadable_file(tmp_path):
    path = _nifti(tmp_path / "crc.nii.gz", _ct())
    content = bytearray(path.read_bytes())
    crc = struct.unpack("<I", content[-8:-4])[0]
    content[-8:-4] = struct.pack("<I", crc ^ 0xFFFF)
    path.write_bytes(bytes(content))
    np.testing.assert_array_equal(np.asanyarray(nib.load(path).dataobj), _ct())  # nibabel never looks
    assert datalist_from_nifti_folder(tmp_path) == [{"image": str(path)}]  # the size trailer is intact
    error = _bad_input(lambda: image_loader("image")({"image": str(path)}))
    assert isinstance(error, UnreadableFileError) and Path(error.path) == path
    assert "gzip CRC check failed: the file is corrupt" in error.reason


def test_gzip_corrupted_mid_stream_is_an_unreadable_file(tmp_path):
    path = _nifti(tmp_path / "flipped.nii.gz", _ct())
    content = path.read_bytes()
    for offset in range(len(content) // 2, len(content) - 8):  # a flipped bit that still inflates
        flipped = bytearray(content)
        flipped[offset] ^= 0x01
        try:
            gzip.decompress(bytes(flipped))
        except gzip.BadGzipFile as error:
            if "CRC" in str(error):
                break
        except Exception:  # noqa: BLE001 - an invalid deflate stream: try the next byte
            continue
    else:
        pytest.fail("no byte flip that inflates but fails the CRC")
    path.write_bytes(bytes(flipped))
    silent = LoadImaged("image", reader="NibabelReader")({"image": str(path)})["image"]
    assert silent.shape == SHAPE and not np.array_equal(silent.numpy(), _ct())  # garbage, loaded silently
    error = _bad_input(lambda: _load_and_check(path))
    assert Path(error.path) == path and "gzip CRC check failed" in error.reason


# ------------------------------------------------------------------------------------------- DICOM


def _series(folder: Path, broken: str | None) -> list[Path]:
    """Three copies of CT_small.dcm 5 mm apart as one series; the second one ``broken`` ("no_pixels" or
    "truncated")."""
    folder.mkdir(parents=True, exist_ok=True)
    uid, paths = generate_uid(), []
    for k in range(3):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = uid, generate_uid(), k + 1
        ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [5.0 * k]
        if k == 1 and broken == "no_pixels":
            del ds.PixelData
        paths.append(folder / f"{k}.dcm")
        ds.save_as(paths[-1])
    if broken == "truncated":
        paths[1].write_bytes(paths[1].read_bytes()[:-5000])
    return paths


@pytest.mark.parametrize("broken", ["no_pixels", "truncated"])
def test_corrupt_dicom_slice_names_itself_and_its_series(tmp_path, broken):
    paths = _series(tmp_path / "series", broken)
    datalist = datalist_from_dicom_folder(tmp_path)  # the headers are fine
    assert len(datalist) == 1 and len(datalist[0]["image"]) == 3
    error = _bad_input(lambda: image_loader(["image"])(datalist[0]))
    assert isinstance(error, UnreadableFileError) and Path(error.path) == paths[1]
    assert str(paths[1]) in str(error)
    if broken == "no_pixels":
        uid = pydicom.dcmread(paths[0]).SeriesInstanceUID
        assert "its pixels cannot be decoded" in error.reason and f"DICOM series {uid}" in error.reason


# ------------------------------------------------------------------------------------------- policy


def _mixed_datalist(folder: Path) -> tuple[list[dict], list[Path]]:
    """A good case, and three bad ones: NaN voxels, a failed CRC, labels outside 0..13."""
    good = _nifti(folder / "good.nii.gz", _ct())
    nan = _ct(dtype=np.float32)
    nan[0] = np.nan
    nan = _nifti(folder / "nan.nii.gz", nan)
    crc = _nifti(folder / "crc.nii.gz", _ct())
    crc.write_bytes(crc.read_bytes()[:-8] + b"\0\0\0\0" + crc.read_bytes()[-4:])
    label = _nifti(folder / "label.nii.gz", np.zeros(SHAPE, np.uint8))
    bad_label = _nifti(folder / "bad_label.nii.gz", np.full(SHAPE, 20, np.uint8))
    datalist = [{"image": str(image), "label": str(label)} for image in (good, nan, crc)]
    datalist.append({"image": str(good), "label": str(bad_label)})
    return datalist, [nan, crc, bad_label]


def test_skip_policy_reports_bad_inputs_and_keeps_the_good_ones(tmp_path, caplog):
    datalist, bad = _mixed_datalist(tmp_path / "data")
    report = tmp_path / "run" / "eval" / "skipped_inputs.csv"
    policy = BadInputPolicy(skip=True, report_path=str(report))
    with caplog.at_level(logging.WARNING):
        kept = screen_datalist(datalist, checked_loader(["image", "label"], num_classes=14), policy)
    assert kept == datalist[:1]
    with open(report, newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["file", "reason"]
    assert [Path(row[0]) for row in rows[1:]] == bad
    assert "expected finite values" in rows[1][1] and "gzip CRC check failed" in rows[2][1]
    assert "expected integers 0..13" in rows[3][1]
    assert "skipping bad input" in caplog.text and "left out 3 of 4 inputs" in caplog.text
    assert f"listed in {report}" in caplog.text


def _screen_as_rank(rank: int, world: int, datalist: list[dict], folder: str) -> None:
    """One process of a gloo group: screen ``datalist``, rank 0 with the report, and save what it kept and read."""
    dist.init_process_group("gloo", init_method=f"file://{folder}/group", rank=rank, world_size=world)
    loaded = []

    def load(entry: dict) -> dict:
        loaded.append(entry["image"])
        return checked_loader(["image", "label"], num_classes=14)(entry)

    report = f"{folder}/skipped_inputs.csv" if rank == 0 else None
    kept = screen_datalist(datalist, load, BadInputPolicy(skip=True, report_path=report))
    torch.save({"kept": kept, "loaded": loaded}, f"{folder}/rank{rank}.pt")
    dist.destroy_process_group()


def test_distributed_screening_reads_each_entry_once_and_every_rank_keeps_the_same(tmp_path):
    """Two gloo processes share the reading (entries 0, 2 and 1, 3), then both keep the same good entries and rank 0
    reports all three bad ones."""
    datalist, _ = _mixed_datalist(tmp_path / "data")
    torch.multiprocessing.spawn(_screen_as_rank, args=(2, datalist, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert ranks[0]["kept"] == ranks[1]["kept"] and len(ranks[0]["kept"]) == 1
    assert len(ranks[0]["loaded"]) == len(ranks[1]["loaded"]) == 2  # half of the four entries each
    with open(tmp_path / "skipped_inputs.csv", newline="") as file:
        assert len(list(csv.reader(file))) == 1 + 3


def _fail_on_rank_1(rank: int, world: int, folder: str) -> None:
    """One process of a gloo group whose rank 1 meets an error that is no bad input; each saves what it raised."""
    dist.init_process_group("gloo", init_method=f"file://{folder}/group", rank=rank, world_size=world)

    def load(entry: dict) -> dict:
        if entry["image"] == "disk_gone.nii.gz":
            raise OSError("input/output error")
        return entry

    try:
        screen_datalist([{"image": "a.nii.gz"}, {"image": "disk_gone.nii.gz"}], load, True)
    except Exception as error:
        torch.save(f"{type(error).__name__}: {error}", f"{folder}/rank{rank}.pt")
    dist.destroy_process_group()


def test_distributed_screening_raises_another_error_on_every_rank_instead_of_hanging(tmp_path):
    torch.multiprocessing.spawn(_fail_on_rank_1, args=(2, str(tmp_path)), nprocs=2, join=True)
    raised = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert raised == ["RuntimeError: checking inputs failed in process 1: OSError: input/output error",
                      "OSError: input/output error"]


def test_default_policy_raises_and_screening_reads_nothing(tmp_path):
    datalist, _ = _mixed_datalist(tmp_path)

    def load(entry):
        raise AssertionError("screening must not read when not skipping")

    assert screen_datalist(datalist, load, BadInputPolicy()) == datalist
    assert screen_datalist(datalist, load, False) == datalist
    error = BadInputError(tmp_path / "x.nii.gz", "found 1 NaN; expected finite values")
    with pytest.raises(BadInputError, match=r"bad input .*x\.nii\.gz: found 1 NaN; expected finite values"):
        BadInputPolicy(report_path=tmp_path / "report.csv").handle(error)
    assert not (tmp_path / "report.csv").exists()
    with pytest.raises(DatalistError, match="skip_bad_input"):  # a BadInputError is a DatalistError
        skip_or_raise(error, False)


def test_screening_lets_other_errors_through(tmp_path):
    def load(entry):
        raise KeyError("image")

    with pytest.raises(KeyError):
        screen_datalist([{"image": "a"}], load, BadInputPolicy(skip=True))


def test_datalist_builders_skip_unreadable_files_through_the_same_policy(tmp_path):
    _nifti(tmp_path / "data" / "good.nii.gz", _ct())
    truncated = _nifti(tmp_path / "data" / "truncated.nii.gz", _ct(1))
    truncated.write_bytes(truncated.read_bytes()[:600])
    with pytest.raises(UnreadableFileError, match=r"truncated\.nii\.gz.*--skip_bad_input true"):
        datalist_from_nifti_folder(tmp_path / "data")
    report = tmp_path / "skipped.csv"
    policy = BadInputPolicy(skip=True, report_path=report)
    assert datalist_from_nifti_folder(tmp_path / "data", skip_unreadable=policy) == [
        {"image": str(tmp_path / "data" / "good.nii.gz")}
    ]
    rows = list(csv.reader(report.open(newline="")))
    assert rows[0] == ["file", "reason"] and rows[1][0] == str(truncated)
