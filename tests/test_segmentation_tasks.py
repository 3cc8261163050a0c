"""Any MSD / nnU-Net task through btcv_segmentation: label and channel tables (MSD and nnU-Net v2), the task presets
and their checks against the data, MRI z-score and the head CT windows, the first convolution of a 1-channel encoder
on C channels, metrics in mm per case and class, bad input, and end to end a 3-label task built from the real
TotalSegmentator example and a synthetic 4-channel MRI task (train, evaluate, infer)."""

import csv
import json
import logging
import shutil
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from torch import nn

from common.data import DatalistError, image_loader, label_table, load_datalist, task_settings, training_split
from common.data.screening import bad_input_cause
from common.engine import HausdorffDistanceMM, SurfaceDiceMM, class_metric_names
from common.networks import segmentation_network, segmentation_spec, vit_config
from common.transfer import load_pretrained
from common.transforms import checked_loader, ct_window
from common.transforms.ct import intensity_transform
from module_runner import run_bundle
from tools.package import metadata_with

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "btcv_segmentation"
CONFIGS = {name: str(BUNDLE / "configs" / f"{name}.json") for name in ("train", "smoke", "evaluate", "inference")}
TASKS = json.loads((BUNDLE / "configs" / "train.json").read_text())["tasks"]
DECLARED = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["network_data_format"]["outputs"]["pred"][
    "channel_def"
]
BRATS_CHANNELS = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
BRATS_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _json(path: Path, content: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


def _bad_input(call):
    with pytest.raises(Exception) as raised:
        call()
    bad = bad_input_cause(raised.value)
    assert bad is not None, f"no BadInputError behind {raised.value!r}"
    return bad


# ----------------------------------------------------------------------------------------- tables and presets


def test_msd_and_nnunet_v2_label_tables_read_alike_and_malformed_ones_are_refused():
    msd = label_table({"1": "liver", "0": "background", "2": "cancer"}, "msd")
    assert msd == {"0": "background", "1": "liver", "2": "cancer"}
    assert label_table({"background": 0, "liver": 1, "cancer": 2}, "v2") == msd
    with pytest.raises(DatalistError, match="regions"):
        label_table({"background": 0, "whole tumour": [1, 2, 3]}, "v2")
    with pytest.raises(DatalistError, match=r"indices \[0, 1, 3\].*without gaps"):
        label_table({"0": "background", "1": "a", "3": "b"}, "gaps")
    with pytest.raises(DatalistError, match=r"indices \[1, 2\]"):
        label_table({"1": "a", "2": "b"}, "no background")


def test_every_preset_sets_the_same_keys_and_cites_a_source():
    assert {"auto", "btcv", "msd_spleen", "msd_liver", "msd_lung", "msd_pancreas", "msd_hepatic_vessel", "msd_colon",
            "msd_brain_tumour"} <= set(TASKS)
    for name, preset in TASKS.items():
        assert set(preset) == {"labels", "modality", "window", "pixdim", "roi_size", "max_epochs", "source"}, name
        assert len(preset["source"]) > 40, name


def test_auto_takes_the_data_sets_tables_and_else_the_declared_labels(tmp_path):
    v2 = _json(tmp_path / "mri" / "dataset.json", {"channel_names": BRATS_CHANNELS, "labels": {
        "background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3}, "file_ending": ".nii.gz"})
    settings = task_settings(TASKS, "auto", v2.parent, DECLARED)
    assert settings["channel_def"] == BRATS_LABELS and settings["modality"] == BRATS_CHANNELS
    assert settings["in_channels"] == 4 and settings["intensity"] == "zscore"
    (tmp_path / "nifti").mkdir()
    folder = task_settings(TASKS, "auto", tmp_path / "nifti", DECLARED)  # no dataset.json: the bundle's labels, CT
    assert folder["channel_def"] == DECLARED and folder["modality"] == {"0": "CT"} and folder["intensity"] == "abdomen"
    assert folder["pixdim"] == [1.5] * 3 and folder["roi_size"] == [96] * 3 and folder["max_epochs"] is None


def test_a_named_preset_names_the_data_sets_classes_and_must_fit_them(tmp_path):
    btcv = _json(tmp_path / "btcv" / "dataset.json", {"modality": {"0": "CT"}, "labels": {
        str(i): name for i, name in enumerate(["background", "spleen", "rkid", "lkid", "gall", "eso", "liver", "sto",
                                               "aorta", "IVC", "veins", "pancreas", "rad", "lad"])}})
    assert task_settings(TASKS, "btcv", btcv, DECLARED)["channel_def"] == DECLARED  # the organs' full names
    assert task_settings(TASKS, "auto", btcv, DECLARED)["channel_def"]["2"] == "rkid"  # the data set's own
    spleen = _json(tmp_path / "spleen" / "dataset.json", {"modality": {"0": "CT"}, "labels": {"0": "background",
                                                                                                "1": "spleen"}})
    assert task_settings(TASKS, "msd_spleen", spleen, DECLARED)["channel_def"] == {"0": "background", "1": "spleen"}
    with pytest.raises(DatalistError, match=r"lists the labels .*task 'btcv' the labels.*--task auto"):
        task_settings(TASKS, "btcv", spleen, DECLARED)
    ct_tumours = _json(tmp_path / "ct" / "dataset.json", {"modality": {"0": "CT"}, "labels": BRATS_LABELS})
    with pytest.raises(DatalistError, match=r"image channels \{'0': 'CT'\}, task 'msd_brain_tumour'"):
        task_settings(TASKS, "msd_brain_tumour", ct_tumours, DECLARED)
    mixed = _json(tmp_path / "mixed" / "dataset.json", {"modality": {"0": "CT", "1": "PET"}, "labels": {"0": "bg"}})
    with pytest.raises(DatalistError, match="mix CT and other"):
        task_settings(TASKS, "auto", mixed, DECLARED)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        task_settings(TASKS, "nope", spleen, DECLARED)
    brats = task_settings(TASKS, "msd_brain_tumour", tmp_path / "spleen" / "missing", DECLARED)
    assert brats["intensity"] == "zscore" and brats["pixdim"] == [1.0] * 3 and brats["max_epochs"] == 300


# ----------------------------------------------------------------------------------------- intensity


def test_head_windows_and_mri_z_score():
    hu = torch.tensor([[[[-1000.0, 0.0, 40.0, 80.0, 500.0, 1500.0]]]])
    assert ct_window("image", "brain")({"image": hu})["image"].flatten().tolist() == [0, 0, 0.5, 1, 1, 1]
    assert ct_window("image", "bone")({"image": hu})["image"].flatten().tolist() == pytest.approx(
        [0, 0.25, 0.27, 0.29, 0.5, 1])
    mri = torch.zeros(2, 4, 4, 4)
    mri[0, 1:3, 1:3, 1:3] = torch.arange(8.0).reshape(2, 2, 2) + 100
    mri[1, 1:3, 1:3, 1:3] = torch.arange(8.0).reshape(2, 2, 2) * 10
    out = intensity_transform("image", "zscore")({"image": mri})["image"]
    inside = mri[0] != 0
    assert torch.all(out[:, ~inside] == 0)  # the background stays 0
    assert out[0][inside].mean().abs() < 1e-5 and out[0][inside].std(unbiased=False) == pytest.approx(1, abs=1e-4)
    assert out[1][out[1] != 0].mean().abs() < 1e-5  # each channel on its own


# ----------------------------------------------------------------------------------------- transfer, spec, metrics


def test_one_channel_kernels_load_repeated_over_the_input_channels_and_divided(tmp_path, caplog):
    torch.manual_seed(0)
    source = nn.Sequential(nn.Conv3d(1, 4, 3), nn.ReLU(), nn.Conv3d(4, 2, 1))
    target = nn.Sequential(nn.Conv3d(4, 4, 3), nn.ReLU(), nn.Conv3d(4, 2, 1))
    torch.save(source.state_dict(), tmp_path / "ct.pt")
    with caplog.at_level(logging.INFO):
        report = load_pretrained(target, tmp_path / "ct.pt")
    assert report.expanded == ["0.weight"] and not report.shape_mismatch and not report.missing
    assert "1 1-channel kernels repeated over the input channels and divided by their number (0.weight)" in caplog.text
    image = torch.randn(1, 1, 6, 6, 6)
    assert torch.allclose(target(image.repeat(1, 4, 1, 1, 1)), source(image), atol=1e-5)  # a copy per channel


def test_the_spec_carries_the_tasks_labels_and_channels_into_inference_and_the_packaged_metadata(tmp_path):
    spec = segmentation_spec(BRATS_LABELS, in_channels=4, modality=BRATS_CHANNELS, intensity="zscore",
                             feature_size=12, roi_size=(32, 32, 32))
    assert spec.preprocessing == {"pixdim": [1.5] * 3, "intensity": "zscore"}
    shutil.copytree(BUNDLE / "configs", tmp_path / "configs")  # the bundle as a MONAI Label app holds it
    (tmp_path / "models").mkdir()
    torch.save({"network_spec": spec.state_dict()}, tmp_path / "models" / "model.pt")
    parser = ConfigParser()  # inference.json alone, as MONAI Label reads it
    parser.read_config(str(tmp_path / "configs" / "inference.json"))
    parser["bundle_root"] = str(tmp_path)
    assert parser.get_parsed_content("channel_def") == BRATS_LABELS
    assert [type(t).__name__ for t in parser.get_parsed_content("preprocessing").transforms][-1] == "NormalizeIntensityd"
    metadata = json.loads(metadata_with(BUNDLE, spec)["configs/metadata.json"])["network_data_format"]
    assert metadata["inputs"]["image"]["channel_def"] == BRATS_CHANNELS
    assert metadata["inputs"]["image"]["num_channels"] == 4 and metadata["inputs"]["image"]["modality"] == "MR"
    assert metadata["outputs"]["pred"]["channel_def"] == BRATS_LABELS
    assert metadata["outputs"]["pred"]["num_channels"] == 4
    with pytest.raises(ValueError, match="lists 4 channels, in_channels is 1"):
        segmentation_spec(BRATS_LABELS, modality=BRATS_CHANNELS)


def test_distances_are_in_mm_on_an_anisotropic_grid():
    label = torch.zeros(1, 2, 24, 24, 24)
    label[0, 1, 6:18, 6:18, 6:18] = 1
    pred = torch.roll(label, shifts=2, dims=4)  # two voxels along the third axis, 3 mm each
    label[0, 0], pred[0, 0] = 1 - label[0, 1], 1 - pred[0, 1]
    spacing = [1.0, 1.0, 3.0]
    assert HausdorffDistanceMM(percentile=95, spacing=spacing)(pred, label).item() == pytest.approx(6.0)
    assert SurfaceDiceMM(class_thresholds=[6.0], spacing=spacing)(pred, label).item() == pytest.approx(1.0)
    assert SurfaceDiceMM(class_thresholds=[2.0], spacing=spacing)(pred, label).item() < 0.9
    assert class_metric_names({"0": "background", "2": "b (2)", "1": "right kidney"}, "hd95") == [
        "val_hd95_right_kidney", "val_hd95_b_2_"]


# ----------------------------------------------------------------------------------------- nnU-Net v2 and bad input


def _mri_case(folder: Path, case: str, seed: int, channels: int = 4, shape=(40, 40, 40), split: str = "Tr") -> None:
    """A synthetic brain MRI: a head ellipsoid, a tumour of three nested labels, one contrast per channel, noise."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) - n / 2 for n in shape], indexing="ij"))
    centre = rng.uniform(-5, 5, 3)[:, None, None, None]
    head = ((grid / np.array([17, 15, 17])[:, None, None, None]) ** 2).sum(0) < 1
    r = np.sqrt(((grid - centre) ** 2).sum(0))
    label = np.select([r < 3, r < 6, r < 9], [3, 2, 1], 0).astype(np.uint8) * head
    contrasts = np.array([[0, 900, 500, 700], [300, 400, 600, 200], [900, 200, 800, 300], [100, 700, 300, 600]])
    for channel in range(channels):
        values = np.where(head, 400.0 + contrasts[channel % 4][label] + rng.normal(0, 20, shape), 0.0)
        _nifti(folder / f"images{split}" / f"{case}_{channel:04d}.nii.gz", values.astype(np.float32))
    if split == "Tr":
        _nifti(folder / "labelsTr" / f"{case}.nii.gz", label)


def _mri_task(folder: Path, cases: int = 3, channels: int = 4) -> Path:
    for index in range(cases):
        _mri_case(folder, f"BRATS_{index:03d}", index, channels)
    _mri_case(folder, "BRATS_900", 900, channels, split="Ts")
    return _json(folder / "dataset.json", {"name": "synthetic BraTS", "channel_names": BRATS_CHANNELS, "labels": {
        name: int(index) for index, name in BRATS_LABELS.items()}, "numTraining": cases, "file_ending": ".nii.gz"})


def test_nnunet_v2_folder_gives_one_entry_per_case_with_its_channel_files_in_order(tmp_path):
    _mri_task(tmp_path, cases=2)
    entries = load_datalist(tmp_path)
    assert [Path(f).name for f in entries[0]["image"]] == [f"BRATS_000_{c:04d}.nii.gz" for c in range(4)]
    assert Path(entries[1]["label"]).name == "BRATS_001.nii.gz"
    loaded = checked_loader(["image", "label"], 4, in_channels=4, ct=False)(entries[0])
    assert loaded["image"].shape == (4, 40, 40, 40) and loaded["label"].shape == (1, 40, 40, 40)
    assert [Path(f).name for f in load_datalist(tmp_path, "test")[0]["image"]][-1] == "BRATS_900_0003.nii.gz"
    (tmp_path / "imagesTr" / "BRATS_001_0002.nii.gz").unlink()
    with pytest.raises(DatalistError, match=r"case BRATS_001 .* channel files \[0, 1, 3\]; .* list 4"):
        load_datalist(tmp_path)


def test_a_case_whose_label_is_missing_stops_training_naming_it(tmp_path):
    _mri_task(tmp_path, cases=3)
    (tmp_path / "labelsTr" / "BRATS_002.nii.gz").unlink()
    with pytest.raises(DatalistError, match=r"1 case\(s\) .* have no label, e.g. .*BRATS_002_0000"):
        training_split(tmp_path)
    msd = _json(tmp_path / "msd.json", {"training": [{"image": "imagesTr/BRATS_002_0000.nii.gz",
                                                      "label": "labelsTr/BRATS_002.nii.gz"}]})
    with pytest.raises(DatalistError, match=r"label .*BRATS_002\.nii\.gz of entry 0 .* does not exist"):
        training_split(msd)


def test_bad_task_inputs_name_the_file_and_what_differs(tmp_path):
    image = _nifti(tmp_path / "case.nii.gz", np.ones((8, 8, 6, 3), np.float32))  # MSD: channels last
    label = _nifti(tmp_path / "case_label.nii.gz", np.array([0, 1, 5] * 128, np.uint8).reshape(8, 8, 6))
    entry = {"image": str(image), "label": str(label)}
    channels = _bad_input(lambda: checked_loader(["image", "label"], 4, in_channels=4, ct=False)(entry))
    assert channels.path == str(image) and "has 3 channel(s)" in channels.reason and "expected 4" in channels.reason
    values = _bad_input(lambda: checked_loader(["image", "label"], 4, in_channels=3, ct=False)(entry))
    assert values.path == str(label) and "found label values [5]" in values.reason
    other_grid = _nifti(tmp_path / "small_label.nii.gz", np.zeros((8, 8, 5), np.uint8))
    shapes = _bad_input(lambda: checked_loader(["image", "label"], 4, in_channels=3, ct=False)(
        {"image": str(image), "label": str(other_grid)}))
    assert shapes.path == str(other_grid) and "(8, 8, 5)" in shapes.reason and "(8, 8, 6)" in shapes.reason
    _json(tmp_path / "dataset.json", {"training": [{"image": "case.nii.gz", "label": "small_label.nii.gz"}]})
    with pytest.raises(DatalistError, match=r"small_label\.nii\.gz has shape \(8, 8, 5\) but its image"):
        load_datalist(tmp_path)  # the headers already tell


# ----------------------------------------------------------------------------------------- end to end

# TotalSegmentator v2 indices (its class map) -> the 3-label task's
TOTALSEG_CLASSES = {1: (1, "spleen"), 2: (2, "right kidney"), 5: (3, "liver")}
# UNETR of the CPU demo's ViT at 32^3 (Swin UNETR needs 64^3: instance norm at 1/32 needs more than one voxel)
TINY = {"arch": "unetr", "roi_size": "[32,32,32]", "sw_batch_size": 2}


def _assert_prediction(prediction: Path, source, labels: set[int]) -> None:
    reference = image_loader("image", ensure_channel_first=False)({"image": source})["image"]
    written = nib.load(prediction)
    assert written.shape == tuple(reference.shape[:3])
    assert np.allclose(written.affine, reference.affine.numpy(), atol=1e-3)
    assert set(np.unique(np.asarray(written.dataobj)).tolist()) <= labels


@pytest.mark.slow
def test_three_label_task_from_the_real_totalsegmentator_example(shared_data, tmp_path):
    """MSD dataset.json (in tmp) over the example's 30-slice NIfTI crop and its DICOM series, each with 3 of its 117
    predicted classes: trains a step, evaluates (Dice, NSD, HD95 per case and class), infers on both inputs."""
    example = shared_data / "totalsegmentator"
    labels = {"0": "background", **{str(index): name for index, name in TOTALSEG_CLASSES.values()}}
    for name in ("example_seg.nii.gz", "example_seg_dicom.nii.gz"):
        seg = nib.load(example / name)
        values = np.asarray(seg.dataobj)
        remapped = np.zeros(values.shape, np.uint8)
        for source, (target, _) in TOTALSEG_CLASSES.items():
            remapped[values == source] = target
        nib.save(nib.Nifti1Image(remapped, seg.affine), tmp_path / name.replace("example_seg", "three_labels"))
    sm, dicom = str(example / "example_ct_sm.nii.gz"), str(example / "example_ct_dicom")
    dataset = _json(tmp_path / "dataset.json", {
        "name": "TotalSegmentator example, 3 classes", "modality": {"0": "CT"}, "labels": labels,
        "training": [{"image": sm, "label": "three_labels.nii.gz"}],
        "validation": [{"image": dicom, "label": "three_labels_dicom.nii.gz"}],
        "test": [sm, dicom],
    })
    runs = {"ckpt_dir": tmp_path / "models", "output_dir": tmp_path / "eval", "dataset_dir": dataset}
    run_bundle([CONFIGS["train"], CONFIGS["smoke"]], **runs, **TINY, epoch_length=1, experiment_tracking=False)
    spec = torch.load(tmp_path / "models" / "model.pt", weights_only=True)["network_spec"]["arguments"]
    assert spec["channel_def"] == labels and spec["modality"] == {"0": "CT"} and spec["intensity"] == "abdomen"

    run_bundle([CONFIGS["train"], CONFIGS["smoke"], CONFIGS["evaluate"]], **runs, sw_batch_size=2)
    with open(tmp_path / "eval" / "metrics" / "per_case.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 1 and "DICOM series" in rows[0]["case"]
    assert {f"val_{m}_{n}" for m in ("dice", "nsd", "hd95") for n in ("spleen", "right_kidney", "liver")} | {
        "val_mean_dice", "val_mean_nsd", "val_mean_hd95"} <= set(rows[0])
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'eval' / 'mlruns.db'}")
    runs_logged = client.search_runs([client.get_experiment_by_name("btcv_segmentation").experiment_id])
    evaluation = next(run for run in runs_logged if run.info.run_name.startswith("evaluate_"))
    assert {"val_mean_dice", "val_mean_nsd", "val_mean_hd95", "val_dice_liver", "val_nsd_liver",
            "val_hd95_liver"} <= set(evaluation.data.metrics)
    assert evaluation.data.params["nsd_tolerance_mm"] == "1.5"

    out = tmp_path / "predictions"
    run_bundle([CONFIGS["inference"]], ckpt_path=tmp_path / "models" / "model.pt", input=dataset, input_key="test",
               output_dir=out)  # the labels, channels, spacing and window come from the checkpoint
    predictions = sorted(out.glob("*_seg.nii.gz"))
    assert len(predictions) == 2
    nifti = out / "example_ct_sm_seg.nii.gz"
    _assert_prediction(nifti, sm, set(range(4)))
    _assert_prediction(next(path for path in predictions if path != nifti), dicom, set(range(4)))


@pytest.mark.slow
def test_four_channel_mri_task_fine_tunes_a_one_channel_encoder(tmp_path):
    """nnU-Net v2 folder of synthetic 4-channel MRI under the msd_brain_tumour preset (z-score, MSD BraTS labels):
    a ViT pre-trained on 1-channel CT (GL-MAE's layout, ``encoder.vit.*``) loads into UNETR with its patch embedding
    kernel repeated over the 4 channels, trains a step, evaluates, and inference needs nothing but the input."""
    data = _mri_task(tmp_path / "brats").parent
    torch.manual_seed(0)
    vit = segmentation_network("unetr", in_channels=1, roi_size=(32,) * 3, encoder_config=vit_config(True)).vit
    torch.save({f"encoder.vit.{k}": v for k, v in vit.state_dict().items()}, tmp_path / "ct.pt")
    runs = {"ckpt_dir": tmp_path / "models", "output_dir": tmp_path / "eval", "dataset_dir": data,
            "task": "msd_brain_tumour", "pixdim": "[2,2,2]", "experiment_tracking": False}
    result = run_bundle([CONFIGS["train"], CONFIGS["smoke"]], **runs, **TINY, epoch_length=1,
                        pretrained=tmp_path / "ct.pt")
    log = result.stdout + result.stderr
    assert "task msd_brain_tumour: 4 labels" in log and "intensity zscore" in log
    assert "1 1-channel kernels repeated over the input channels" in log and "patch_embeddings" in log
    spec = torch.load(tmp_path / "models" / "model.pt", weights_only=True)["network_spec"]["arguments"]
    assert spec["in_channels"] == 4 and spec["channel_def"] == BRATS_LABELS and spec["intensity"] == "zscore"

    run_bundle([CONFIGS["train"], CONFIGS["smoke"], CONFIGS["evaluate"]], **runs, sw_batch_size=2)
    with open(tmp_path / "eval" / "metrics" / "per_case.csv") as stream:
        assert {"val_dice_enhancing_tumour", "val_hd95_edema"} <= set(next(csv.DictReader(stream)))

    out = tmp_path / "predictions"
    run_bundle([CONFIGS["inference"]], ckpt_path=tmp_path / "models" / "model.pt", input=data, input_key="test",
               output_dir=out)
    (prediction,) = out.glob("*_seg.nii.gz")
    _assert_prediction(prediction, str(data / "imagesTs" / "BRATS_900_0000.nii.gz"), set(range(4)))
