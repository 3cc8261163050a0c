"""Whole-volume CT classification: class datalists and their stratified split, the demo phantoms with a lung
finding, the classifiers and their encoder transfer, the probability CSV, and the ct_classification3d bundle
end to end (train + smoke, then inference on one demo volume)."""

import csv
import json
import shutil
from pathlib import Path

import mlflow
import monai.bundle
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.nets import UNETR, SwinUNETR
from pydicom.data import get_testdata_file

from common.data import (
    ClassProbabilityWriter,
    DatalistError,
    class_names,
    classification_datalist,
    classification_split,
    stratified_split,
)
from common.data import demo_classification as demo
from common.data.demo import generate_phantom
from common.methods import method_spec
from common.networks.classification import (
    CLASSIFICATION_ARCHS,
    CLASSIFICATION_ENCODER_RENAME,
    classification_network,
)
from common.networks.convvit import convvit_config
from common.transfer import load_pretrained
from module_runner import run_bundle

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "ct_classification3d"
SMALL = {"shape": (40, 32, 20), "spacing": (6.0, 6.0, 7.5)}  # the demo's field of view on a coarse grid
# Encoders small enough for a CPU test, at 32^3 (swin needs multiples of 32, the others of 16).
TINY = {
    "swin": {"feature_size": 12},
    "vit": {"patch_size": 16, "hidden_size": 24, "mlp_dim": 48, "num_layers": 1, "num_heads": 2},
    "hyspark": {"channels": (4, 8, 8, 8, 12), "depths": (1, 1, 1, 1, 1), "vit_depth": 1, "num_heads": 2},
    "mim": {"widths": (8, 8, 8, 12), "depths": (1, 1, 1, 1), "num_heads": 2},
}
ROI = (32, 32, 32)


def _nifti(path: Path, shape=(8, 8, 4)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4)), path)
    return str(path)


# ----------------------------------------------------------------------------------------- datalists


def test_class_folders_number_classes_by_folder_name(tmp_path):
    _nifti(tmp_path / "Normal" / "b.nii.gz")
    _nifti(tmp_path / "Normal" / "a.nii")
    _nifti(tmp_path / "CP" / "c.nii.gz")
    series = tmp_path / "NCP" / "patient" / "series"
    series.mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), series / "slice.dcm")
    (tmp_path / ".hidden").mkdir()
    datalist, names = classification_datalist(tmp_path)
    assert names == class_names(tmp_path) == ["CP", "NCP", "Normal"]
    assert [(Path(d["image"]).name, d["label"]) for d in datalist[:1] + datalist[2:]] == [
        ("c.nii.gz", 0), ("a.nii", 2), ("b.nii.gz", 2)]
    assert datalist[1] == {"image": [str(series / "slice.dcm")], "label": 1}  # one DICOM series, one entry


def test_class_folder_errors(tmp_path):
    with pytest.raises(DatalistError, match="does not exist"):
        classification_datalist(tmp_path / "absent")
    _nifti(tmp_path / "a" / "x.nii.gz")
    with pytest.raises(DatalistError, match="at least two .*found only 'a'"):
        classification_datalist(tmp_path)
    (tmp_path / "b").mkdir()
    with pytest.raises(DatalistError, match=r"class 'b' \(index 1\): no images in .*b"):
        classification_datalist(tmp_path)
    (tmp_path / "b" / "broken.nii.gz").write_bytes(b"not a NIfTI file")
    with pytest.raises(DatalistError, match="class 'b' .*unreadable file .*broken.nii.gz"):
        classification_datalist(tmp_path)
    with pytest.raises(DatalistError, match="class 'b' .*no readable image"):
        classification_datalist(tmp_path, skip_unreadable=True)


def _class_json(tmp_path: Path, **content) -> Path:
    for name in "abcd":
        _nifti(tmp_path / "images" / f"{name}.nii.gz")
    dataset = {
        "labels": {"0": "normal", "1": "pneumonia"},
        "training": [{"image": "./images/a.nii.gz", "label": 0}, {"image": "images/b.nii.gz", "label": 1},
                     {"image": str(tmp_path / "images" / "c.nii.gz"), "label": 1}],
        "test": ["images/d.nii.gz"],
        **content,
    }
    (tmp_path / "dataset.json").write_text(json.dumps(dataset))
    return tmp_path / "dataset.json"


def test_class_json_resolves_paths_and_names_classes(tmp_path):
    json_path = _class_json(tmp_path)
    datalist, names = classification_datalist(tmp_path)  # the folder holding dataset.json
    assert names == class_names(json_path) == ["normal", "pneumonia"]
    assert datalist == [{"image": str(tmp_path / "images" / f"{n}.nii.gz"), "label": label}
                        for n, label in zip("abc", (0, 1, 1))]
    assert classification_datalist(json_path, "test")[0] == [{"image": str(tmp_path / "images" / "d.nii.gz")}]


@pytest.mark.parametrize("content, message", [
    ({"labels": {"1": "a", "2": "b"}}, "naming the classes 0..K-1"),
    ({"labels": {"0": "only"}}, "at least two"),
    ({"training": [{"image": "images/a.nii.gz", "label": 2}]}, "label 2; expected a class index 0..1"),
    ({"training": [{"image": "images/a.nii.gz", "label": "1"}]}, "label '1'"),
    ({"training": [{"image": "images/absent.nii.gz", "label": 0}]}, "absent.nii.gz of entry 0 .* does not exist"),
    ({"training": []}, "is empty"),
])
def test_class_json_errors(tmp_path, content, message):
    with pytest.raises(DatalistError, match=message):
        classification_datalist(_class_json(tmp_path, **content))


def test_stratified_split_is_deterministic_disjoint_and_balanced():
    datalist = [{"image": f"{i}.nii.gz", "label": i % 3} for i in range(15)]
    folds = [stratified_split(datalist, fold=k, num_folds=5, seed=1) for k in range(5)]
    validations = [[d["image"] for d in val] for _, val in folds]
    assert sorted(sum(validations, [])) == sorted(d["image"] for d in datalist)  # disjoint, covering
    for train, val in folds:
        assert sorted(d["label"] for d in val) == [0, 1, 2] and len(train) == 12
    assert stratified_split(datalist, fold=2, num_folds=5, seed=1) == folds[2]
    assert stratified_split(datalist, fold=2, num_folds=5, seed=2) != folds[2]
    with pytest.raises(DatalistError, match="fold must be in 0..4"):
        stratified_split(datalist, fold=5)
    with pytest.raises(DatalistError, match="num_folds must be in 2..15"):
        stratified_split(datalist, num_folds=16)


def test_split_uses_the_json_validation_list_unless_a_fold_is_asked(tmp_path):
    json_path = _class_json(tmp_path, validation=[{"image": "images/d.nii.gz", "label": 0}])
    train, validation = classification_split(json_path)
    assert len(train) == 3 and [Path(d["image"]).name for d in validation] == ["d.nii.gz"]
    train, validation = classification_split(json_path, fold=1, num_folds=3)
    assert len(train) == 2 and len(validation) == 1


# ------------------------------------------------------------------------------------------ demo data


def test_demo_cases_are_deterministic_with_the_finding_inside_the_lungs():
    for case in range(3):
        image, class_index, affine = demo.generate_case(case, **SMALL)
        again, _, _ = demo.generate_case(case, **SMALL)
        phantom, _, phantom_affine = generate_phantom(case, **SMALL)
        np.testing.assert_array_equal(image, again)
        np.testing.assert_array_equal(affine, phantom_affine)
        assert class_index == case % 3 and image.dtype == np.int16
        changed = image != phantom
        assert not (changed & ~demo.lung_mask(phantom)).any()
        if demo.CLASS_NAMES[class_index] == "Normal":
            assert not changed.any()
        elif demo.CLASS_NAMES[class_index] == "CP":  # consolidation: soft tissue density in the lungs
            assert (image[changed] > -100).any()
        else:  # NCP: ground glass, bilateral
            assert changed.sum() > 0 and (image[changed] < -300).all()
            assert changed[: image.shape[0] // 2].any() and changed[image.shape[0] // 2:].any()


def test_demo_dataset_is_balanced_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv(demo.ENV_ROOT, str(tmp_path / "demo"))
    dataset_json = demo.ensure_classification_demo_data(cases_per_class=2, test_cases_per_class=1, **SMALL)
    assert dataset_json == tmp_path / "demo" / "dataset.json"
    dataset = json.loads(dataset_json.read_text())
    assert "synthetic" in dataset["description"].lower()
    datalist, names = classification_datalist(dataset_json)
    assert names == list(demo.CLASS_NAMES) and sorted(d["label"] for d in datalist) == [0, 0, 1, 1, 2, 2]
    assert [Path(t).name for t in dataset["test"]] == ["case_006_CP.nii.gz", "case_007_NCP.nii.gz",
                                                       "case_008_Normal.nii.gz"]
    mtime = dataset_json.stat().st_mtime_ns
    monkeypatch.setattr(demo, "generate_case", lambda *args: pytest.fail("regenerated"))
    assert demo.ensure_classification_demo_data(cases_per_class=2, test_cases_per_class=1, **SMALL) == dataset_json
    assert dataset_json.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no staging folder left


def test_demo_never_replaces_a_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        demo.ensure_classification_demo_data(tmp_path, cases_per_class=1, **SMALL)
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------------------------------- networks


@pytest.mark.parametrize("arch", CLASSIFICATION_ARCHS)
def test_network_maps_a_volume_to_class_logits(arch):
    network = classification_network(arch, num_classes=3, roi_size=ROI, encoder_config=TINY[arch], dropout=0.1)
    with torch.no_grad():
        assert network(torch.rand(1, 1, *ROI)).shape == (1, 3)
    assert set(dict(network.named_children())) == {"encoder", "head"}


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown classification arch 'resnet'"):
        classification_network("resnet")


@pytest.mark.parametrize("arch", CLASSIFICATION_ARCHS)
def test_pretrained_encoder_loads_from_a_pre_training_checkpoint(tmp_path, arch):
    """A pre-training method's state dict (``encoder.*`` plus its own decoder) loads into the classifier's
    encoder; the head keeps its initialisation."""
    torch.manual_seed(0)
    source = classification_network(arch, roi_size=ROI, encoder_config=TINY[arch]).eval()
    method_state = {f"encoder.{k}": v for k, v in source.encoder.state_dict().items()}
    method_state["decoder.weight"] = torch.zeros(2, 2)
    torch.save({"model": method_state, "optimizer": {}}, tmp_path / "model.pt")
    torch.manual_seed(1)
    target = classification_network(arch, roi_size=ROI, encoder_config=TINY[arch]).eval()
    head = [p.clone() for p in target.head.parameters()]
    report = load_pretrained(target, tmp_path / "model.pt", rename=CLASSIFICATION_ENCODER_RENAME[arch])
    assert len(report.matched) >= 0.95 * len(target.encoder.state_dict()) and not report.shape_mismatch
    assert all(torch.equal(a, b) for a, b in zip(head, target.head.parameters()))
    x = torch.rand(1, 1, *ROI)
    with torch.no_grad():
        torch.testing.assert_close(target.features(x), source.features(x))


@pytest.mark.parametrize("arch, segmentation_network, prefix", [
    ("swin", lambda: SwinUNETR(1, 14, feature_size=12), "swinViT"),
    ("vit", lambda: UNETR(1, 14, img_size=ROI, hidden_size=24, mlp_dim=48, num_heads=2, proj_type="conv"), "vit"),
])
def test_encoder_is_that_of_swin_unetr_or_unetr_and_loads_from_it(tmp_path, arch, segmentation_network, prefix):
    """The ``swin`` / ``vit`` encoders are built as in MONAI's SwinUNETR / UNETR: every tensor of a fine-tuned
    segmentation network's encoder (e.g. a btcv_segmentation model) loads by name and shape."""
    source = segmentation_network()
    torch.save(source.state_dict(), tmp_path / "segmentation.pt")
    config = {"feature_size": 12} if arch == "swin" else {**TINY[arch], "num_layers": 12}
    target = classification_network(arch, roi_size=ROI, encoder_config=config)
    report = load_pretrained(target, tmp_path / "segmentation.pt", rename=CLASSIFICATION_ENCODER_RENAME[arch])
    assert sorted(report.matched) == sorted(f"encoder.{k}" for k in target.encoder.state_dict())
    assert not report.shape_mismatch
    assert all(torch.equal(v, target.encoder.state_dict()[k]) for k, v in getattr(source, prefix).state_dict().items())


# ---------------------------------------------------------------------------------------- predictions


def test_probability_writer_names_columns_by_class(tmp_path):
    writer = ClassProbabilityWriter(["CP", "NCP", "Normal"], tmp_path / "out")
    writer.save_batch(torch.tensor([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]]), {"filename_or_obj": ["a.nii.gz", "b.nii.gz"]})
    writer.finalize()
    with open(tmp_path / "out" / "predictions.csv") as stream:
        rows = list(csv.reader(stream))
    assert rows == [["image", "prediction", "CP", "NCP", "Normal"], ["a.nii.gz", "NCP", "0.100000", "0.700000",
                    "0.200000"], ["b.nii.gz", "CP", "0.600000", "0.300000", "0.100000"]]
    with pytest.raises(ValueError, match="2 probabilities per image for 3 classes"):
        writer.save_batch(torch.rand(1, 2), {"filename_or_obj": ["c.nii.gz"]})


# ------------------------------------------------------------------------------------------ the bundle


@pytest.mark.slow
@pytest.mark.parametrize("lora_rank", [0, 4])
def test_bundle_fine_tunes_a_mim_checkpoint_tracks_and_predicts(tmp_path, lora_rank):
    """Plain ``train.json`` + ``smoke.json`` from a MiM pre-training checkpoint: fully (the encoder trains), or with
    ``--lora_rank 4`` (its pre-trained weights stay as loaded while its adapters and the head train); inference
    rebuilds the fine-tuned network from its checkpoint. The checkpoint's encoder has sizes no setting of the bundle
    gives: the fine-tuned encoder is built as the checkpoint's network spec says."""
    configs = BUNDLE / "configs"
    models, evaluation = tmp_path / "models", tmp_path / "eval"
    torch.manual_seed(0)
    encoder = {**convvit_config(cpu_demo_scale=True), "widths": [8, 16, 32, 48]}
    spec = method_spec("MiM", {"encoder": encoder, "decoder_width": 24, "decoder_depth": 1, "decoder_heads": 2,
                               "contrast_dim": 16})
    pretrained = spec.build()
    torch.save({"model": pretrained.state_dict(), "network_spec": spec.state_dict()}, tmp_path / "pretrained.pt")
    run_bundle([str(configs / "train.json"), str(configs / "smoke.json")], ckpt_dir=models, output_dir=evaluation,
               pretrained=tmp_path / "pretrained.pt", lora_rank=lora_rank)
    state = torch.load(models / "checkpoint_final.pt", weights_only=False)
    assert (models / "model.pt").is_file() and state["trainer"]["iteration"] == 2
    assert state["network_spec"]["arguments"]["encoder_config"] == encoder
    network = state["model"]
    encoder = [k for k in network if k.startswith("encoder.") and "lora_" not in k]
    unchanged = [torch.equal(network[k], pretrained.state_dict()[k]) for k in encoder]
    adapters = [k for k in network if "lora_" in k]
    if lora_rank:
        assert all(unchanged) and any(network[k].abs().sum() > 0 for k in adapters if k.endswith("lora_B"))
    else:
        assert not all(unchanged) and not adapters  # loaded, then trained
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{evaluation / 'mlruns.db'}")
    run, = client.search_runs([client.get_experiment_by_name("ct_classification3d").experiment_id])
    assert {"val_accuracy", "val_auc", "train_loss"} <= set(run.data.metrics) and run.info.status == "FINISHED"
    assert run.data.params["arch"] == "mim" and run.data.params["lora_rank"] == str(lora_rank)
    assert run.data.params["trainable_parameters"].startswith("trainable ")

    dataset_json = demo.ensure_classification_demo_data()
    volume = str(dataset_json.parent / json.loads(dataset_json.read_text())["test"][0])
    monai.bundle.run(  # in this process, to spare a second start of Python
        config_file=str(configs / "inference.json"), logging_file=False, input=volume,
        ckpt_path=str(models / "model.pt"), output_dir=str(tmp_path / "predictions"),
    )  # no setting: the network, its crop size and spacing come from the checkpoint
    with open(tmp_path / "predictions" / "predictions.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 1 and rows[0]["image"] == volume and rows[0]["prediction"] in demo.CLASS_NAMES
    assert sum(float(rows[0][name]) for name in demo.CLASS_NAMES) == pytest.approx(1.0, abs=1e-5)
