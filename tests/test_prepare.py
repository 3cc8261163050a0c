"""Preparing CT once for every bundle (common.transforms.prepare, tools.prepare): many sources merged into one datalist,
int16 volumes that each bundle windows at load time, resume after a kill, bad inputs skipped with a report."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.transforms import Compose
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

import common.transforms.prepare as prepare_module
from common.data import DatalistError, pretraining_datalist
from common.transforms.prepare import prepare_ct, prepare_slices, preprocessing
from common.data.slices import slice_datalist
from common.transforms import CT_WINDOWS, load_ct
from tools import prepare as prepare_tool

SHAPE = (24, 24, 24)
BORDER = 2  # voxels of -1024 HU padding around each synthetic volume: the crop removes them
RAS_2MM = np.diag([2.0, 2.0, 2.0, 1.0])
LPS_2MM = np.array([[-2.0, 0, 0, 40.0], [0, -2.0, 0, 30.0], [0, 0, 2.0, -10.0], [0, 0, 0, 1]])


def _ct(seed: int) -> np.ndarray:
    """A CT-like int16 volume in HU: random tissue, framed by padding."""
    volume = np.full(SHAPE, -1024, np.int16)
    inner = tuple(slice(BORDER, n - BORDER) for n in SHAPE)
    volume[inner] = np.random.default_rng(seed).integers(-1000, 1500, [n - 2 * BORDER for n in SHAPE])
    return volume


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray = RAS_2MM) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _msd(root: Path) -> Path:
    """An MSD folder: one training, one validation and one test image (the test image stays unseen)."""
    for name, seed, affine in (("a", 1, LPS_2MM), ("b", 2, RAS_2MM), ("t", 3, RAS_2MM)):
        _nifti(root / ("imagesTs" if name == "t" else "imagesTr") / f"{name}.nii.gz", _ct(seed), affine)
    dataset = {"training": [{"image": "./imagesTr/a.nii.gz"}], "validation": [{"image": "./imagesTr/b.nii.gz"}],
               "test": ["./imagesTs/t.nii.gz"]}
    (root / "dataset.json").write_text(json.dumps(dataset))
    return root


def _nnunet(root: Path) -> Path:
    """An nnU-Net v2 raw dataset: two channels of one training case, one test case."""
    _nifti(root / "imagesTr" / "case_0000.nii.gz", _ct(4))
    _nifti(root / "imagesTr" / "case_0001.nii.gz", _ct(5))
    _nifti(root / "imagesTs" / "other_0000.nii.gz", _ct(6))
    dataset = {"channel_names": {"0": "CT", "1": "CT"}, "labels": {"background": 0}, "numTraining": 1,
               "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(dataset))
    return root


def _loaded(path: str | Path, pixdim, window: str) -> torch.Tensor:
    return Compose(load_ct(["image"], pixdim, window))({"image": str(path)})["image"]


def _assert_loads_as_its_source(prepared: Path, source: Path, pixdim: list[float], atol: float) -> None:
    """``load_ct`` of the prepared file gives, for two windows, the same voxels as ``load_ct`` of its source (the
    prepared grid being a crop of the source's, located by the affines)."""
    for window in ("abdomen", "wide"):
        mine, theirs = _loaded(prepared, pixdim, window), _loaded(source, pixdim, window)
        offset = np.round((mine.affine[:3, 3] - theirs.affine[:3, 3]).numpy() / np.asarray(pixdim)).astype(int)
        box = tuple(slice(o, o + n) for o, n in zip(offset, mine.shape[1:]))
        assert min(offset) >= 0 and theirs[0][box].shape == mine.shape[1:]
        np.testing.assert_allclose(mine[0].numpy(), theirs[0][box].numpy(), atol=atol, err_msg=window)


def test_sources_merge_into_one_datalist_that_bundles_read_with_any_window(tmp_path):
    sources = [_msd(tmp_path / "msd"), tmp_path / "nifti", _nnunet(tmp_path / "Dataset001_X"), tmp_path / "b" / "nifti"]
    _nifti(sources[1] / "c.nii.gz", _ct(7))
    _nifti(sources[3] / "d.nii.gz", _ct(8))
    result = prepare_ct(sources, tmp_path / "out", pixdim=2, num_workers=0)

    settings = preprocessing([2.0, 2.0, 2.0])
    assert result.dataset_dir == tmp_path / "out" / settings["key"] and len(settings["key"]) == 12
    assert (result.volumes, result.prepared, result.reused, result.skipped, result.report) == (5, 5, 0, 0, None)
    dataset = json.loads(result.datalist.read_text())
    assert dataset["preprocessing"] == settings
    assert [(e["source"], Path(e["original"]).name) for e in dataset["training"]] == [
        ("Dataset001_X", "case_0000.nii.gz"), ("msd", "a.nii.gz"), ("msd", "b.nii.gz"),
        ("nifti", "c.nii.gz"), ("nifti_2", "d.nii.gz")]
    assert dataset["statistics"] == {"volumes": 5, "skipped": 0, "source_bytes": result.source_bytes,
                                     "prepared_bytes": result.prepared_bytes}
    assert result.source_bytes == sum(Path(e["original"]).stat().st_size for e in dataset["training"])
    images = [result.dataset_dir / e["image"] for e in dataset["training"]]
    assert result.prepared_bytes == sum(image.stat().st_size for image in images)
    assert pretraining_datalist(result.dataset_dir) == [{"image": str(image)} for image in images]

    for image in images:
        nifti = nib.load(image)
        assert nifti.get_data_dtype() == np.int16 and nib.aff2axcodes(nifti.affine) == ("R", "A", "S")
        assert nifti.header.get_zooms() == (2.0, 2.0, 2.0)
        assert nifti.shape == tuple(n - 2 * BORDER for n in SHAPE)  # the padding is cropped, nothing else
    for entry, image in zip(dataset["training"], images):  # sources at 2 mm, RAS or LPS: exactly the same voxels
        _assert_loads_as_its_source(image, Path(entry["original"]), [2.0] * 3, atol=1e-6)


def test_resampled_volumes_load_as_their_source_within_rounding(tmp_path):
    source = _nifti(tmp_path / "nifti" / "a.nii.gz", _ct(1), LPS_2MM)
    result = prepare_ct([tmp_path / "nifti"], tmp_path / "out", pixdim=(1.5, 1.5, 1.25), num_workers=0)
    (image,) = (result.dataset_dir / "volumes" / "nifti").iterdir()
    assert nib.load(image).header.get_zooms() == (1.5, 1.5, 1.25)
    narrowest = min(high - low for low, high in CT_WINDOWS.values())
    _assert_loads_as_its_source(image, source, [1.5, 1.5, 1.25], atol=0.5 / narrowest + 1e-5)  # HU rounded to int


def test_a_second_run_reuses_finished_volumes_and_redoes_a_half_written_one(tmp_path, monkeypatch):
    for k in range(3):
        _nifti(tmp_path / "nifti" / f"{k}.nii.gz", _ct(k))
    first = prepare_ct([tmp_path / "nifti"], tmp_path / "out", pixdim=2, num_workers=0)
    volumes = sorted((first.dataset_dir / "volumes" / "nifti").iterdir())
    killed = volumes[1]
    killed.rename(killed.with_name(killed.name + ".partial"))  # as a kill leaves it: never renamed into place
    (first.dataset_dir / "dataset.json.partial").write_text("{")
    mtimes = {volume: volume.stat().st_mtime_ns for volume in volumes if volume != killed}

    calls = []
    prepare_volume = prepare_module.prepare_volume
    monkeypatch.setattr(prepare_module, "prepare_volume", lambda *task: calls.append(task[1]) or prepare_volume(*task))
    second = prepare_ct([tmp_path / "nifti"], tmp_path / "out", pixdim=2, num_workers=0)

    assert (second.volumes, second.prepared, second.reused) == (3, 1, 2) and calls == [str(killed)]
    assert {volume: volume.stat().st_mtime_ns for volume in mtimes} == mtimes
    assert not list(first.dataset_dir.rglob("*.partial")) and nib.load(killed).shape == (20, 20, 20)
    assert (second.source_bytes, second.prepared_bytes) == (first.source_bytes, first.prepared_bytes)
    assert second.datalist.read_bytes() == first.datalist.read_bytes()


def _dicom_series(folder: Path, truncated: bool) -> list[Path]:
    """Three copies of pydicom's CT_small.dcm 5 mm apart as one series; the second one truncated if asked."""
    folder.mkdir(parents=True)
    uid, paths = generate_uid(), []
    for k in range(3):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid()
        ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [5.0 * k]
        paths.append(folder / f"{k}.dcm")
        ds.save_as(paths[-1])
    if truncated:
        paths[1].write_bytes(paths[1].read_bytes()[:-5000])
    return paths


def test_bad_inputs_are_skipped_and_reported_and_the_good_ones_prepared(tmp_path):
    good = _nifti(tmp_path / "nifti" / "good.nii.gz", _ct(1))
    truncated = _nifti(tmp_path / "nifti" / "truncated.nii.gz", _ct(2))
    truncated.write_bytes(truncated.read_bytes()[:2000])
    flat = _nifti(tmp_path / "nifti" / "flat.nii.gz", _ct(3)[:, :, 10])
    _dicom_series(tmp_path / "dicom" / "good_series", truncated=False)
    broken = _dicom_series(tmp_path / "dicom" / "broken_series", truncated=True)

    result = prepare_ct([tmp_path / "nifti", tmp_path / "dicom"], tmp_path / "out", pixdim=2, num_workers=2)

    assert (result.volumes, result.prepared, result.skipped) == (2, 2, 3)
    dataset = json.loads(result.datalist.read_text())
    assert [e["original"] for e in dataset["training"]] == [str(tmp_path / "dicom" / "good_series"), str(good)]
    assert result.report == result.dataset_dir / "skipped_inputs.csv"
    with open(result.report, newline="") as file:
        header, *rows = list(csv.reader(file))
    assert header == ["file", "reason"]
    reasons = {Path(path): reason for path, reason in rows}
    assert set(reasons) == {truncated, flat, broken[1]}
    assert "Compressed file ended before the end-of-stream marker" in reasons[truncated]
    assert reasons[flat].startswith("wrong dimensionality: shape (1, 24, 24)")
    assert "its pixels cannot be decoded" in reasons[broken[1]]


def test_nothing_prepared_is_a_clear_error(tmp_path):
    truncated = _nifti(tmp_path / "nifti" / "truncated.nii.gz", _ct(2))
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(DatalistError, match=r"nothing prepared from .*nifti: every input was a bad input") as raised:
        prepare_ct([tmp_path / "nifti"], tmp_path / "out", num_workers=0)
    report = tmp_path / "out" / preprocessing(1.5)["key"] / "skipped_inputs.csv"
    assert str(report) in str(raised.value) and str(truncated) in report.read_text()


def _png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8), mode="L").save(path)
    return path


def test_slice_folders_merge_with_their_sources_and_a_corrupt_png_is_skipped(tmp_path):
    kept = [_png(tmp_path / "study_a" / "0.png", 0), _png(tmp_path / "study_a" / "1.png", 1),
            _png(tmp_path / "study_b" / "case" / "0.png", 2)]
    corrupt = tmp_path / "study_b" / "case" / "1.png"
    corrupt.write_bytes(b"not a png")

    result = prepare_slices([tmp_path / "study_a", tmp_path / "study_b"], tmp_path / "out", num_workers=0)

    assert (result.slices, result.skipped) == (3, 1)
    entries = json.loads(result.datalist.read_text())
    assert entries == [{"image": str(kept[0]), "source": "study_a"}, {"image": str(kept[1]), "source": "study_a"},
                       {"image": str(kept[2]), "source": "study_b"}]
    assert slice_datalist(tmp_path / "out" / "slices") == [{"image": str(path)} for path in kept]
    with open(result.report, newline="") as file:
        assert [row[0] for row in csv.reader(file)] == ["file", str(corrupt)]


def test_real_ct_is_prepared_and_loads(shared_data, tmp_path):
    source = shared_data / "totalsegmentator" / "example_ct.nii.gz"  # 122 x 101 x 112 at 3 mm
    (tmp_path / "ct").mkdir()
    (tmp_path / "ct" / source.name).symlink_to(source)  # a folder holding it, the data itself left where it is
    result = prepare_ct([tmp_path / "ct"], tmp_path / "out", num_workers=0)
    (image,) = (result.dataset_dir / "volumes" / "ct").iterdir()
    assert (result.volumes, result.source_bytes, result.prepared_bytes) == (
        1, source.stat().st_size, image.stat().st_size)
    print(f"example_ct: {result.prepared_bytes} bytes prepared (int16, 1.5 mm) vs {result.source_bytes} bytes source")
    volume = _loaded(image, [1.5] * 3, "abdomen")
    assert volume.shape[1:] == nib.load(image).shape and 0.0 <= float(volume.min()) < float(volume.max()) <= 1.0


def test_command_line_prints_a_summary_or_fails_with_the_reason(tmp_path, monkeypatch, capsys):
    _nifti(tmp_path / "nifti" / "a.nii.gz", _ct(1))
    command = ["tools.prepare", str(tmp_path / "nifti"), "--output_dir", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", [*command, "--pixdim", "[2,2,2]", "--num_workers", "0"])
    prepare_tool.main()
    summary = capsys.readouterr().out
    dataset_dir = tmp_path / "out" / preprocessing(2)["key"]
    assert "1 volumes (1 prepared, 0 reused, 0 skipped)" in summary and "MB per volume prepared vs" in summary
    assert f"--dataset_dir {dataset_dir} " in summary

    monkeypatch.setattr(sys, "argv", [*command, "--pixdim", "2,2,2", "--num_workers", "0"])
    prepare_tool.main()
    assert "(0 prepared, 1 reused" in capsys.readouterr().out  # "2,2,2" is the same preprocessing

    truncated = _nifti(tmp_path / "bad" / "truncated.nii.gz", _ct(2))
    truncated.write_bytes(truncated.read_bytes()[:2000])
    monkeypatch.setattr(sys, "argv", ["tools.prepare", str(tmp_path / "bad"), "--output_dir", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exited:
        prepare_tool.main()
    assert str(exited.value).startswith("prepare: nothing prepared from") and "skipped_inputs.csv" in str(exited.value)
