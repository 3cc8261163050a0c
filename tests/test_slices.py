"""2D slices of the slice study: HU -> grey values, loading a slice, slice datalists, extraction, demo slices."""

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose
from PIL import Image

from common.data import DatalistError, slice_datalist
from common.data.grey_values import SLICE_WINDOWS, hu_to_uint8, hu_to_unit
from common.data.slices import DEMO_SIZE, DEMO_SPACING, ensure_slice_demo_data, volume_names, write_slices
from common.transforms import CT_WINDOWS
from common.transforms.slices import load_slice_transforms
from tools import extract_slices as tool

GREY = (np.arange(12, dtype=np.uint8).reshape(3, 4) * 20)  # 3 rows, 4 columns, 0 .. 220


# ------------------------------------------------------------------------------------------ grey values


def test_full_window_is_the_papers_interval_mapping():
    hu = np.array([-3000.0, -1024.0, 1023.5, 3071.0, 5000.0])
    assert SLICE_WINDOWS["full"] == CT_WINDOWS["full"] == (-1024.0, 3071.0)
    np.testing.assert_allclose(hu_to_unit(hu), [0.0, 0.0, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(hu_to_uint8(hu), [0, 0, 128, 255, 255])  # 127.5 rounds to 128
    assert hu_to_uint8(np.array([0.0])).item() == round(1024 / 4095 * 255)  # water: 64
    assert hu_to_uint8(torch.tensor([-1024, 3071])).tolist() == [0, 255]  # integer tensors too


def test_brain_window_is_width_80_level_35():
    assert SLICE_WINDOWS["brain"] == (-5.0, 75.0)
    np.testing.assert_array_equal(hu_to_uint8(np.array([-1000.0, -5.0, 35.0, 75.0, 1000.0]), "brain"),
                                  [0, 0, 128, 255, 255])
    assert hu_to_uint8(np.array([15.0]), "brain").item() == round(20 / 80 * 255)


def test_slice_window_maps_each_slices_own_range():
    np.testing.assert_allclose(hu_to_unit(np.array([[-500.0, 0.0], [500.0, 1500.0]]), "slice"),
                               [[0.0, 0.25], [0.5, 1.0]])
    with pytest.raises(ValueError, match="unknown slice window 'lung'"):
        hu_to_unit(np.zeros(2), "lung")


# ------------------------------------------------------------------------------------------ loading


def _write_slice_files(folder: Path) -> dict[str, Path]:
    """The same 3 x 4 slice as grey, RGB and RGBA PNG, grey JPG (lossless enough at quality 100), uint8 and
    float NPY."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.stack([GREY] * 3, -1)
    files = {"grey.png": GREY, "rgb.png": rgb, "rgba.png": np.concatenate([rgb, np.full((3, 4, 1), 9, np.uint8)], -1)}
    for name, array in files.items():
        Image.fromarray(array).save(folder / name)
    np.save(folder / "uint8.npy", GREY)
    np.save(folder / "float.npy", GREY / 255.0)
    return {path.name: path for path in folder.iterdir()}


@pytest.mark.parametrize("name", ["grey.png", "rgb.png", "rgba.png", "uint8.npy", "float.npy"])
def test_load_slice_transforms_give_one_grey_channel_in_unit_range(tmp_path, name):
    path = _write_slice_files(tmp_path)[name]
    image = Compose(load_slice_transforms())({"image": str(path)})["image"]
    assert image.shape == (1, 3, 4) and image.dtype == torch.float32  # rows = H, as the file shows them
    np.testing.assert_allclose(image[0].numpy(), GREY / 255.0, atol=1e-6)
    assert image.meta["filename_or_obj"] == str(path)


def _load_unwrapped(path: Path):
    """Apply the transforms one by one (``Compose`` would wrap their errors in a RuntimeError)."""
    data = {"image": str(path)}
    for transform in load_slice_transforms():
        data = transform(data)
    return data["image"]


def test_load_slice_transforms_reject_what_is_not_a_grey_unit_slice(tmp_path):
    np.save(tmp_path / "hu.npy", np.full((4, 4), 40.0))
    with pytest.raises(ValueError, match=r"hu.npy: float slice values must lie in \[0, 1\], got 40 .. 40"):
        _load_unwrapped(tmp_path / "hu.npy")
    np.save(tmp_path / "volume.npy", np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"volume.npy: expected one grey 2D slice \(H, W\), got shape \(2, 4, 4\)"):
        _load_unwrapped(tmp_path / "volume.npy")
    Image.fromarray(np.zeros((4, 4), np.uint16) + 1000).save(tmp_path / "deep.png")
    with pytest.raises(ValueError, match="deep.png: PIL mode 'I;16' is not an 8-bit"):
        _load_unwrapped(tmp_path / "deep.png")


def test_real_covid_ct_png_loads_as_grey(shared_data):
    path = sorted((shared_data / "covid_ct_ucsd" / "CT_COVID").glob("*.png"))[0]
    with Image.open(path) as png:
        width, height = png.size
    image = Compose(load_slice_transforms())({"image": str(path)})["image"]
    assert image.shape == (1, height, width)
    assert 0.0 <= image.min() < image.max() <= 1.0


# ------------------------------------------------------------------------------------------ datalists


def test_slice_datalist_from_a_folder_is_recursive_and_sorted(tmp_path):
    _write_slice_files(tmp_path / "b")
    Image.fromarray(GREY).save(tmp_path / "a.JPG")
    (tmp_path / "notes.txt").write_text("not a slice")
    _write_slice_files(tmp_path / ".hidden")
    images = [Path(entry["image"]) for entry in slice_datalist(tmp_path)]
    assert [str(p.relative_to(tmp_path)) for p in images] == [
        "a.JPG", "b/float.npy", "b/grey.png", "b/rgb.png", "b/rgba.png", "b/uint8.npy"]
    assert all(p.is_absolute() for p in images)


def test_slice_datalist_from_json_resolves_paths_against_it(tmp_path):
    files = _write_slice_files(tmp_path / "slices")
    listed = [{"image": "slices/rgb.png", "volume": "x.nii.gz", "slice": 3}, {"image": "slices/grey.png"}]
    (tmp_path / "datalist.json").write_text(json.dumps(listed))
    expected = [{"image": str(files["rgb.png"])}, {"image": str(files["grey.png"])}]
    assert slice_datalist(tmp_path / "datalist.json") == expected
    assert slice_datalist(tmp_path) == expected  # a folder holding a datalist.json: the json, not a folder scan


def test_slice_datalist_errors_name_the_source(tmp_path):
    with pytest.raises(DatalistError, match=f"{tmp_path / 'missing'} does not exist"):
        slice_datalist(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatalistError, match="no slices in .*empty"):
        slice_datalist(tmp_path / "empty")
    (tmp_path / "datalist.json").write_text(json.dumps([{"image": "gone.png"}]))
    with pytest.raises(DatalistError, match="gone.png of entry 0 of .*datalist.json does not exist"):
        slice_datalist(tmp_path)
    (tmp_path / "datalist.json").write_text("[]")
    with pytest.raises(DatalistError, match="non-empty list"):
        slice_datalist(tmp_path)


# ------------------------------------------------------------------------------------------ extraction

HU_OF_SLICE = [-1024.0, 1023.5, 3071.0, 5000.0]  # -> grey 0, 128, 255, 255


def _marked_volume(path: Path) -> Path:
    """A 6 x 5 x 4 float NIfTI with voxel axes R, A, S (1 mm): air, a 3071 HU marker at the right-anterior
    corner of every slice, and slice k's posterior row at ``HU_OF_SLICE[k]``."""
    volume = np.full((6, 5, 4), -1024.0, np.float32)
    volume[5, 4, :] = 3071.0  # the patient's right (R axis end), anterior (A axis end)
    volume[:, 0, :] = np.array(HU_OF_SLICE, np.float32)  # posterior row
    nib.save(nib.Nifti1Image(volume, np.eye(4)), path)
    return path


def test_extract_slices_writes_viewer_oriented_slices_and_a_datalist(tmp_path):
    volume = _marked_volume(tmp_path / "phantom.nii.gz")
    summary = tool.extract_slices(str(volume), str(tmp_path / "out"))
    assert summary.startswith("4 slices of 1 volumes")
    entries = json.loads((tmp_path / "out" / "datalist.json").read_text())
    assert entries == [{"image": f"phantom/{k:04d}.png", "volume": str(volume), "slice": k} for k in range(4)]
    for k, expected_grey in enumerate([0, 128, 255, 255]):
        grey = np.asarray(Image.open(tmp_path / "out" / entries[k]["image"]))
        assert grey.shape == (5, 6)  # rows: anterior -> posterior, columns: patient's right -> left
        assert grey[0, 0] == 255 and grey[0, -1] == 0  # the right-anterior marker at the top left
        assert (grey[-1] == expected_grey).all()  # the posterior row at the bottom
        assert (grey[1:-1, 1:] == 0).all()
    assert len(slice_datalist(tmp_path / "out")) == 4


def test_extract_slices_npy_every_and_brain_window(tmp_path):
    volume = _marked_volume(tmp_path / "phantom.nii.gz")
    tool.extract_slices(str(volume), str(tmp_path / "out"), window="brain", format="npy", every=2)
    entries = json.loads((tmp_path / "out" / "datalist.json").read_text())
    assert [entry["slice"] for entry in entries] == [0, 2]
    second = np.load(tmp_path / "out" / entries[1]["image"])
    assert second.dtype == np.float32 and second.shape == (5, 6)
    assert second[-1, 0] == 1.0 and second[1, 1] == 0.0  # 3071 HU and air through W 80 / L 35


def test_extract_slices_refuses_a_non_empty_folder_unless_overwrite(tmp_path, monkeypatch):
    volume = _marked_volume(tmp_path / "phantom.nii.gz")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    monkeypatch.setattr(sys, "argv", ["extract_slices", str(volume), str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="out exists and is not an empty folder; pass --overwrite"):
        tool.main()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["keep.txt"]
    tool.extract_slices(str(volume), str(tmp_path / "out"), overwrite=True)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    assert len(json.loads((tmp_path / "out" / "datalist.json").read_text())) == 4


def test_extract_slices_names_an_unreadable_volume(tmp_path):
    broken = tmp_path / "in" / "broken.nii.gz"
    broken.parent.mkdir()
    _marked_volume(tmp_path / "good.nii.gz")
    broken.write_bytes((tmp_path / "good.nii.gz").read_bytes()[:60])
    with pytest.raises(DatalistError, match="broken.nii.gz"):
        tool.extract_slices(str(tmp_path / "in"), str(tmp_path / "out"))


def test_extract_slices_of_a_real_dicom_series(shared_data, tmp_path):
    series = shared_data / "totalsegmentator" / "example_ct_dicom"
    tool.extract_slices(str(series), str(tmp_path / "out"), every=10)
    entries = json.loads((tmp_path / "out" / "datalist.json").read_text())
    assert [entry["slice"] for entry in entries] == [0, 10]  # 20 slices, inferior to superior
    grey = np.asarray(Image.open(tmp_path / "out" / entries[1]["image"]))
    assert grey.shape == (512, 512)
    assert grey[:20, :20].max() < hu_to_uint8(np.array([-900.0])).item()  # air in the corner
    bone_rows = np.nonzero(grey[:, 206:306] > hu_to_uint8(np.array([300.0])).item())[0]
    assert np.median(bone_rows) > 256  # the spine is in the lower half: posterior at the bottom


# ------------------------------------------------------------------------------------------ demo slices


@pytest.mark.slow  # about 20 s: 300 slices of 6 phantoms
def test_demo_slices_are_the_extraction_of_the_demo_phantoms(tmp_path):
    root = ensure_slice_demo_data(tmp_path / "demo")
    datalist = slice_datalist(root)
    assert len(datalist) == 300  # 6 training phantoms x 50 axial slices
    with Image.open(datalist[0]["image"]) as first:
        assert first.size == (DEMO_SIZE, DEMO_SIZE) and first.mode == "L"
    written = (root / "datalist.json").stat().st_mtime_ns
    assert ensure_slice_demo_data(tmp_path / "demo") == root and (root / "datalist.json").stat().st_mtime_ns == written
    # deterministic, and the mapping of tools.extract_slices: extract the first phantom again
    phantom = json.loads((root / "datalist.json").read_text())[0]["volume"]
    again = write_slices([{"image": phantom}], tmp_path / "again", spacing=DEMO_SPACING, size=DEMO_SIZE)
    for entry in again[::7]:
        assert (tmp_path / "again" / entry["image"]).read_bytes() == (root / entry["image"]).read_bytes()


def test_volume_names_are_distinct_and_readable():
    assert volume_names([{"image": "/d/p1/ct.nii.gz"}, {"image": "/d/p2/ct.nii"}]) == ["p1_ct", "p2_ct"]
    one_slice_series, series = {"image": ["/s/head/CT0.dcm"]}, {"image": ["/s/head/a", "/s/head/b"]}
    assert volume_names([one_slice_series, series, series]) == ["CT0", "head", "head_2"]
    assert volume_names([{"image": "/d/p1/ct.nii.gz"}]) == ["ct"]
