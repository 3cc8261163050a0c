"""The synthetic CT phantoms of ``common.data.demo`` and their MSD dataset."""

import json
import os
from concurrent.futures import ThreadPoolExecutor

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from common.data import demo
from common.data.demo import BTCV_LABELS, DEFAULT_SHAPE, DEFAULT_SPACING, ENV_ROOT, ensure_demo_data, generate_phantom

# The default field of view on a coarse grid: a dataset of these writes in milliseconds.
SMALL = {"shape": (40, 32, 16), "spacing": (6.0, 6.0, 9.0)}

# Median HU inside each label; thin organs lose some contrast to the fat around them (smoothing, noise).
HU_RANGES = {
    1: (30, 70), 2: (15, 55), 3: (15, 55), 4: (-15, 30), 5: (15, 60), 6: (45, 75), 7: (-30, 40),
    8: (160, 220), 9: (120, 175), 10: (120, 180), 11: (25, 60), 12: (0, 60), 13: (0, 60),
}


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom(0)


def centroid_mm(label: np.ndarray, affine: np.ndarray, value: int) -> np.ndarray:
    """World (RAS+) centroid of the voxels of ``label == value``."""
    return nib.affines.apply_affine(affine, np.argwhere(label == value).mean(0))


def test_btcv_labels():
    assert list(BTCV_LABELS) == list(range(14))
    assert BTCV_LABELS[0] == "background" and BTCV_LABELS[2] == "right kidney"
    assert BTCV_LABELS[13] == "left adrenal gland"


def test_phantom_types_and_geometry(phantom):
    image, label, affine = phantom
    assert image.shape == label.shape == DEFAULT_SHAPE
    assert image.dtype == np.int16 and label.dtype == np.uint8 and affine.shape == (4, 4)
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    np.testing.assert_allclose(nib.affines.voxel_sizes(affine), DEFAULT_SPACING)
    # centred on the body; resampled to 1.5 mm (first to last voxel centre), a 96^3 crop fits
    np.testing.assert_allclose(nib.affines.apply_affine(affine, (np.array(DEFAULT_SHAPE) - 1) / 2), 0, atol=1e-6)
    resampled = (np.array(DEFAULT_SHAPE) - 1) * DEFAULT_SPACING / 1.5 + 1
    assert (resampled >= 96).all() and (resampled <= [170, 136, 104]).all()


def test_deterministic(phantom):
    image, label, affine = generate_phantom(0)
    np.testing.assert_array_equal(image, phantom[0])
    np.testing.assert_array_equal(label, phantom[1])
    np.testing.assert_array_equal(affine, phantom[2])
    other_image, other_label, _ = generate_phantom(1)
    assert not np.array_equal(other_image, image) and not np.array_equal(other_label, label)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_organ_present_with_plausible_hu(seed):
    image, label, _ = generate_phantom(seed)
    assert set(np.unique(label)) == set(BTCV_LABELS)
    for value, (low, high) in HU_RANGES.items():
        organ = image[label == value]
        assert organ.size >= 50, BTCV_LABELS[value]
        assert low <= np.median(organ) <= high, (BTCV_LABELS[value], np.median(organ))
    stomach = image[label == 7]
    assert (stomach < -800).any() and ((stomach > -20) & (stomach < 60)).mean() > 0.3  # air pocket, fluid and wall


def test_hu_range(phantom):
    image, label, _ = phantom
    assert image.min() >= -1024 and image.max() <= 3071
    assert abs(image[:5, :5].mean() + 1000) < 10  # air in the corners
    assert 10 <= image[label == 0].std()  # noise everywhere
    assert (image > 600).sum() > 500  # cortical bone of the spine and ribs
    assert ((image > -130) & (image < -70)).sum() > 0.1 * image.size  # fat


def test_orientation_in_world_coordinates(phantom):
    """RAS+ world: +x is the patient's left-to-right, +y posterior-to-anterior, +z inferior-to-superior."""
    image, label, affine = phantom
    right_kidney, left_kidney = centroid_mm(label, affine, 2), centroid_mm(label, affine, 3)
    liver, spleen = centroid_mm(label, affine, 6), centroid_mm(label, affine, 1)
    aorta, ivc = centroid_mm(label, affine, 8), centroid_mm(label, affine, 9)
    assert right_kidney[0] > 25 and left_kidney[0] < -25
    assert liver[0] > 0 and spleen[0] < 0 and spleen[1] < liver[1]  # liver right-anterior, spleen left-posterior
    assert liver[2] > right_kidney[2]
    assert centroid_mm(label, affine, 4)[1] > 0  # gallbladder anterior
    assert ivc[0] > aorta[0] and aorta[0] < 0  # aorta left of the midline, IVC right of it
    vertebra = np.argwhere(image > 400)
    vertebra_mm = nib.affines.apply_affine(affine, vertebra)
    vertebra_mm = vertebra_mm[np.abs(vertebra_mm[:, 0]) < 10]
    assert aorta[1] > vertebra_mm[:, 1].max() - 20  # in front of the vertebral body


def test_other_grids_hold_the_same_anatomy():
    image, label, affine = generate_phantom(3, **SMALL)
    assert image.shape == SMALL["shape"] and nib.aff2axcodes(affine) == ("L", "P", "S")
    np.testing.assert_allclose(nib.affines.voxel_sizes(affine), SMALL["spacing"])
    assert {1, 2, 3, 6, 7, 8, 9} <= set(np.unique(label))
    assert centroid_mm(label, affine, 2)[0] > centroid_mm(label, affine, 3)[0]


def test_dataset_layout_and_contents(tmp_path):
    dataset_json = ensure_demo_data(tmp_path / "demo", num_cases=3, num_validation=1, **SMALL)
    assert dataset_json == tmp_path / "demo" / "dataset.json"
    dataset = json.loads(dataset_json.read_text())
    assert dataset["modality"] == {"0": "CT"} and dataset["numTraining"] == 2
    assert dataset["labels"] == {str(k): v for k, v in BTCV_LABELS.items()}
    assert dataset["name"] and "synthetic" in dataset["description"].lower()
    training = load_decathlon_datalist(dataset_json, data_list_key="training")
    validation = load_decathlon_datalist(dataset_json, data_list_key="validation")
    assert [os.path.basename(d["image"]) for d in training + validation] == [f"case_{i:03d}.nii.gz" for i in range(3)]
    assert [os.path.basename(d["label"]) for d in validation] == ["case_002.nii.gz"]
    image, label, affine = generate_phantom(2, **SMALL)
    written_image, written_label = nib.load(validation[0]["image"]), nib.load(validation[0]["label"])
    np.testing.assert_array_equal(np.asanyarray(written_image.dataobj), image)
    np.testing.assert_array_equal(np.asanyarray(written_label.dataobj), label)
    assert written_image.get_data_dtype() == np.int16 and written_label.get_data_dtype() == np.uint8
    for written in (written_image, written_label):
        np.testing.assert_allclose(written.affine, affine)
        np.testing.assert_allclose(written.header.get_zooms(), SMALL["spacing"])
        assert nib.aff2axcodes(written.affine) == ("L", "P", "S")
        assert written.header["sform_code"] == written.header["qform_code"] == 1


def test_reused_without_regeneration(tmp_path, monkeypatch):
    dataset_json = ensure_demo_data(tmp_path, num_cases=2, num_validation=1, **SMALL)
    image = tmp_path / "imagesTr" / "case_000.nii.gz"
    mtimes = dataset_json.stat().st_mtime_ns, image.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("regenerated")

    monkeypatch.setattr(demo, "generate_phantom", fail)
    assert ensure_demo_data(tmp_path, num_cases=2, num_validation=1, **SMALL) == dataset_json
    assert (dataset_json.stat().st_mtime_ns, image.stat().st_mtime_ns) == mtimes


def test_regenerated_when_parameters_change_or_files_are_missing(tmp_path):
    ensure_demo_data(tmp_path, num_cases=3, num_validation=1, **SMALL)
    dataset_json = ensure_demo_data(tmp_path, num_cases=2, num_validation=1, **SMALL)
    assert json.loads(dataset_json.read_text())["generator"]["num_cases"] == 2
    assert sorted(p.name for p in (tmp_path / "imagesTr").iterdir()) == ["case_000.nii.gz", "case_001.nii.gz"]
    (tmp_path / "labelsTr" / "case_001.nii.gz").unlink()  # as if interrupted
    ensure_demo_data(tmp_path, num_cases=2, num_validation=1, **SMALL)
    assert (tmp_path / "labelsTr" / "case_001.nii.gz").is_file()
    assert sorted(p.name for p in tmp_path.parent.iterdir() if p.name.startswith(f".{tmp_path.name}")) == []


def test_concurrent_calls_agree(tmp_path):
    root = tmp_path / "demo"
    with ThreadPoolExecutor(3) as pool:
        paths = list(pool.map(lambda _: ensure_demo_data(root, num_cases=3, num_validation=1, **SMALL), range(3)))
    assert paths == [root / "dataset.json"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no staging or trash folder left
    assert len(load_decathlon_datalist(paths[0], data_list_key="training")) == 2


def test_root_from_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_ROOT, str(tmp_path / "from_env"))
    assert ensure_demo_data(num_cases=2, num_validation=1, **SMALL) == tmp_path / "from_env" / "dataset.json"
    explicit = ensure_demo_data(tmp_path / "explicit", num_cases=2, num_validation=1, **SMALL)
    assert explicit == tmp_path / "explicit" / "dataset.json" and explicit.is_file()


def test_default_root_is_in_the_repository_cache(repo_root):
    assert demo.DEFAULT_ROOT == repo_root / ".cache" / "demo_ct"


def test_foreign_folder_is_never_replaced(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        ensure_demo_data(tmp_path, num_cases=2, num_validation=1, **SMALL)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_invalid_split(tmp_path):
    with pytest.raises(ValueError, match="num_validation"):
        ensure_demo_data(tmp_path, num_cases=2, num_validation=2, **SMALL)


def test_command_line_entry_point(tmp_path):
    assert demo.main(str(tmp_path / "cli"), num_cases=2, num_validation=1) == str(tmp_path / "cli" / "dataset.json")
