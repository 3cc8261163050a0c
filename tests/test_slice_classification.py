"""The 2D slice classification downstream task of Wolf et al. 2023: datalist layouts (class folders, COVID-CT,
MedMNIST, datalist json), stratified training subsets, intensity statistics, head-first fine-tuning, loading a
pre-training checkpoint, Grad-CAM overlays, and the ``ct_slice_classification`` bundle end to end."""

import csv
import json
from pathlib import Path

import mlflow
import monai.bundle
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from PIL import Image
from torch import nn

from common.data import DatalistError, slice_classification_datalist, stratified_subset
from common.data import slice_classification
from common.engine import HeadFirstFineTuning, save_gradcam_overlays
from common.methods import method_spec
from common.networks import ResNetEncoder, resnet_classifier
from common.transfer import load_pretrained
from common.transforms import intensity_statistics
from module_runner import run_bundle

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "bundles" / "ct_slice_classification" / "configs"


def write_png(path: Path, value: int = 0, size: tuple[int, int] = (8, 8), seed: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full(size, value, np.uint8) if seed is None else np.random.default_rng(seed).integers(0, 256, size, np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def names(entries: list[dict]) -> list[str]:
    return sorted(Path(entry["image"]).name for entry in entries)


# ------------------------------------------------------------------------------------------- layouts


def test_class_folders_are_dealt_60_20_20_stratified(tmp_path):
    for label, name in enumerate(("normal", "covid")):  # numbered by sorted name: covid 0, normal 1
        for i in range(5):
            write_png(tmp_path / name / "sub" / f"{name}_{i}.png")
    (tmp_path / "covid" / "notes.txt").write_text("not a slice")
    datalist = slice_classification_datalist(tmp_path)
    assert datalist["labels"] == {"0": "covid", "1": "normal"}
    assert [len(datalist[s]) for s in ("training", "validation", "test")] == [6, 2, 2]
    every = sum((names(datalist[s]) for s in ("training", "validation", "test")), [])
    assert sorted(every) == sorted(f"{n}_{i}.png" for n in ("covid", "normal") for i in range(5))  # disjoint, covering
    for split in ("validation", "test"):
        assert sorted(e["label"] for e in datalist[split]) == [0, 1]
    assert all(Path(e["image"]).is_absolute() and e["label"] == ("normal" in e["image"]) for e in datalist["training"])
    assert slice_classification_datalist(tmp_path) == datalist  # deterministic


def test_split_folders_hold_out_validation_when_there_is_none(tmp_path):
    for name in ("a", "b"):
        for i in range(5):
            write_png(tmp_path / "train" / name / f"{name}{i}.png")
        write_png(tmp_path / "test" / name / f"{name}_test.png")
    datalist = slice_classification_datalist(tmp_path)
    assert names(datalist["test"]) == ["a_test.png", "b_test.png"]
    assert len(datalist["training"]) == 8 and sorted(e["label"] for e in datalist["validation"]) == [0, 1]

    write_png(tmp_path / "val" / "a" / "a_val.png")
    assert names(slice_classification_datalist(tmp_path)["validation"]) == ["a_val.png"]
    write_png(tmp_path / "test" / "c" / "c.png")
    with pytest.raises(DatalistError, match="class 'c' is not one of the training classes"):
        slice_classification_datalist(tmp_path)


def test_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(DatalistError, match="does not exist"):
        slice_classification_datalist(tmp_path / "missing")
    write_png(tmp_path / "train" / "a" / "x.png")
    write_png(tmp_path / "train" / "b" / "y.png")
    with pytest.raises(DatalistError, match="no test/ folder"):
        slice_classification_datalist(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"labels": {"0": "a", "1": "b"}, "training": [{"image": "train/a/x.png", "label": 2}], "test": []}))
    with pytest.raises(DatalistError, match="has label 2; expected a class index 0..1"):
        slice_classification_datalist(tmp_path)


def test_datalist_json_with_relative_paths(tmp_path):
    entries = [{"image": str(write_png(tmp_path / "img" / f"{i}.png").relative_to(tmp_path)), "label": i % 2}
               for i in range(6)]
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"labels": {"0": "no", "1": "yes"}, "training": entries[:4], "validation": entries[4:5], "test": entries[5:]}))
    datalist = slice_classification_datalist(tmp_path / "dataset.json")
    assert datalist["labels"] == {"0": "no", "1": "yes"}
    assert datalist["test"] == [{"image": str(tmp_path / "img" / "5.png"), "label": 1}]
    assert names(datalist["training"]) == ["0.png", "1.png", "2.png", "3.png"]


def covid_ct_copy(root: Path, counts=(3, 1, 1)) -> Path:
    """A miniature of the COVID-CT layout: ``CT_<class>/`` images named by ``Data-split/<class>/*.txt``."""
    for name, suffix in (("COVID", ".png"), ("NonCOVID", ".jpg")):
        for split, count in zip(("train", "val", "test"), counts):
            files = [f"{name}-{split}-{i}%1{suffix}" for i in range(count)]
            for file in files:
                write_png(root / f"CT_{name}" / file)
            listing = root / "Data-split" / name / f"{split}CT_{name}.txt"
            listing.parent.mkdir(parents=True, exist_ok=True)
            listing.write_text("\n".join(files) + "\n")
    return root


def test_covid_ct_layout_follows_the_official_split(tmp_path):
    datalist = slice_classification_datalist(covid_ct_copy(tmp_path))
    assert datalist["labels"] == {"0": "CT_COVID", "1": "CT_NonCOVID"}  # COVID = 0 as in the official code
    assert names(datalist["validation"]) == ["COVID-val-0%1.png", "NonCOVID-val-0%1.jpg"]
    assert [e["label"] for e in datalist["training"]] == [0, 0, 0, 1, 1, 1]
    (tmp_path / "Data-split" / "NonCOVID" / "testCT_NonCOVID.txt").write_text("gone.jpg\n")
    with pytest.raises(DatalistError, match=r"gone.jpg of line 1 of .*testCT_NonCOVID.txt does not exist"):
        slice_classification_datalist(tmp_path)


def test_covid_ct_real_data(shared_data):
    datalist = slice_classification_datalist(shared_data / "covid_ct_ucsd")
    counts = {split: np.bincount([e["label"] for e in datalist[split]]).tolist() for split in ("training", "validation", "test")}
    assert counts == {"training": [191, 234], "validation": [60, 58], "test": [98, 105]}
    assert datalist["labels"] == {"0": "CT_COVID", "1": "CT_NonCOVID"}


def test_medmnist_npz_is_converted_once_to_pngs(tmp_path, monkeypatch):
    monkeypatch.setattr(slice_classification, "MEDMNIST_CACHE", tmp_path / "cache")
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, count in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{prefix}_images"] = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}_labels"] = (np.arange(count) % 11).reshape(count, 1)
    np.savez(tmp_path / "organsmnist.npz", **arrays)

    datalist = slice_classification_datalist(tmp_path)  # the only .npz of the folder
    assert datalist["labels"]["0"] == "bladder" and datalist["labels"]["10"] == "spleen"
    assert [len(datalist[s]) for s in ("training", "validation", "test")] == [6, 2, 3]
    first = datalist["test"][1]
    assert first["label"] == 1
    np.testing.assert_array_equal(np.asarray(Image.open(first["image"])), arrays["test_images"][1])
    mtime = Path(first["image"]).stat().st_mtime_ns
    assert slice_classification_datalist(tmp_path / "organsmnist.npz") == datalist  # reused, not rewritten
    assert Path(first["image"]).stat().st_mtime_ns == mtime

    np.savez(tmp_path / "broken.npz", images=np.zeros((1, 2, 2)))
    with pytest.raises(DatalistError, match="is not a MedMNIST .npz"):
        slice_classification_datalist(tmp_path / "broken.npz")


def test_demo_slices_are_labelled_class_folders_per_split():
    from common.data import ensure_slice_classification_demo_data

    root = ensure_slice_classification_demo_data()  # cached in .cache/ after the first use
    datalist = slice_classification_datalist(root)
    assert datalist["labels"] == {"0": "CP", "1": "NCP", "2": "Normal"}
    for split, count in (("training", 72), ("validation", 24), ("test", 24)):
        assert np.bincount([e["label"] for e in datalist[split]]).tolist() == [count // 3] * 3
    cases = {split: {Path(e["image"]).name.split("_z")[0] for e in datalist[split]} for split in ("training", "test")}
    assert not cases["training"] & cases["test"]  # split by case
    image = np.asarray(Image.open(datalist["training"][0]["image"]))
    assert image.shape == (128, 128) and image.dtype == np.uint8 and image.max() > 0


# ------------------------------------------------------------------------------- subsets and statistics


def test_stratified_subset_keeps_class_proportions_deterministically_and_nested():
    items = [{"image": f"{i}.png", "label": int(i >= 10)} for i in range(14)]  # 10 of class 0, 4 of class 1
    half = stratified_subset(items, 0.5, seed=0)
    assert np.bincount([e["label"] for e in half]).tolist() == [5, 2]
    assert half == sorted(half, key=items.index)  # in the order of items
    assert stratified_subset(items, 0.5, seed=0) == half
    assert stratified_subset(items, 0.5, seed=1) != half
    tenth = stratified_subset(items, 0.1, seed=0)
    assert np.bincount([e["label"] for e in tenth]).tolist() == [1, 1]  # at least one per class
    assert all(e in half for e in tenth)  # nested for one seed
    assert stratified_subset(items, 1.0, seed=3) == items
    with pytest.raises(DatalistError, match=r"train_fraction must be in \(0, 1\]"):
        stratified_subset(items, 0.0)


def test_intensity_statistics_weigh_every_pixel(tmp_path):
    dark = write_png(tmp_path / "dark.png", 0, (2, 2))
    bright = write_png(tmp_path / "bright.png", 255, (1, 2))
    mean, std = intensity_statistics([{"image": str(dark)}, {"image": str(bright)}])
    assert mean == pytest.approx(1 / 3) and std == pytest.approx((1 / 3 - 1 / 9) ** 0.5)  # 4 zeros, 2 ones


# ------------------------------------------------------------------------------------- fine-tuning


class TinyClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean(dim=(2, 3)))


def test_head_first_fine_tuning_trains_only_fc_for_the_first_epochs():
    torch.manual_seed(0)
    network = TinyClassifier()
    optimizer = torch.optim.Adam(network.parameters(), lr=0.1, weight_decay=0.01)  # holds every parameter
    x, y = torch.rand(4, 1, 6, 6) * 3 + 1, torch.tensor([0, 1, 0, 1])

    def step(engine, batch):
        optimizer.zero_grad(set_to_none=False)  # as MONAI's SupervisedTrainer
        nn.functional.cross_entropy(network(x), y).backward()
        optimizer.step()

    snapshots = []
    engine = Engine(step)
    HeadFirstFineTuning(network, linear_epochs=2).attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: snapshots.append(
        {k: v.clone() for k, v in network.state_dict().items()}))
    initial = {k: v.clone() for k, v in network.state_dict().items()}
    engine.run([0], max_epochs=3)

    for epoch in (0, 1):  # frozen: conv and BN affine as initialised, fc trained, BN statistics updated
        assert torch.equal(snapshots[epoch]["conv.weight"], initial["conv.weight"])
        assert torch.equal(snapshots[epoch]["bn.weight"], initial["bn.weight"])
        assert not torch.equal(snapshots[epoch]["fc.weight"], initial["fc.weight"])
        assert not torch.equal(snapshots[epoch]["bn.running_mean"], initial["bn.running_mean"])
    assert not torch.equal(snapshots[2]["conv.weight"], initial["conv.weight"])  # epoch 3: the whole network
    assert all(p.requires_grad for p in network.parameters())
    with pytest.raises(ValueError, match="no parameter under 'head'"):
        HeadFirstFineTuning(network, head="head")


def test_pretraining_checkpoint_loads_into_the_classifier(tmp_path):
    """A pre-training bundle's model.pt (the method's state dict, its ResNetEncoder under ``encoder.*``)."""
    torch.manual_seed(0)
    encoder = ResNetEncoder(depth=50).eval()
    method = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    method["teacher.encoder.conv1.weight"] = torch.zeros_like(encoder.conv1.weight)  # e.g. BYOL's target network
    method["decoder.weight"] = torch.zeros(3)
    torch.save(method, tmp_path / "model.pt")
    torch.manual_seed(1)
    classifier = resnet_classifier(50, spatial_dims=2, in_channels=1, num_classes=3).eval()
    report = load_pretrained(classifier, tmp_path / "model.pt", rename={"encoder.": ""})
    assert sorted(report.missing) == ["fc.bias", "fc.weight"] and not report.shape_mismatch
    assert len(report.matched) == len(encoder.state_dict())
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        features = classifier.avgpool(classifier.layer4(classifier.layer3(classifier.layer2(classifier.layer1(
            classifier.maxpool(classifier.act(classifier.bn1(classifier.conv1(x))))))))).flatten(1)
        torch.testing.assert_close(features, encoder.pooled(x))


def test_gradcam_overlays_are_written_without_touching_the_network(tmp_path):
    torch.manual_seed(0)
    network = resnet_classifier(18, spatial_dims=2, in_channels=1, num_classes=2)
    network.conv1.requires_grad_(False)
    dataset = [{"image": torch.rand(1, 64, 64), "label": i % 2} for i in range(3)]
    written = save_gradcam_overlays(network, dataset, ["a", "b"], tmp_path / "cams", num_images=2)
    assert [p.name for p in written] == ["000_image_0.png", "001_image_1.png"]
    assert all(Image.open(p).size[0] > 100 for p in written)
    assert not network.conv1.weight.requires_grad and network.training  # state as it was
    assert not network.layer4._forward_hooks and not network.layer4._backward_hooks  # no hook left


# ------------------------------------------------------------------------------------------ the bundle


@pytest.mark.slow
def test_bundle_fine_tunes_a_pretrained_encoder_tests_and_explains(tmp_path):
    """``train.json`` + ``smoke.json`` on a tiny class-per-split dataset from a MoCo v2 checkpoint of a ResNet-18 (as
    ``moco2d_pretrain``'s smoke run saves it, with its method's spec): the classifier is a ResNet-18 too, the linear
    epoch leaves the encoder as loaded; test metrics reach MLflow and test_metrics.json; Grad-CAM overlays;
    ``evaluate.json`` and ``inference.json`` reuse the model."""
    data = tmp_path / "data"
    for label, name in enumerate(("covid", "normal")):
        for split, count in (("train", 4), ("val", 2), ("test", 2)):
            for i in range(count):
                write_png(data / split / name / f"{split}_{name}_{i}.png", size=(40, 48), seed=100 * label + 10 * i + len(split))
    torch.manual_seed(0)
    spec = method_spec("MoCoV2", {"depth": 18, "hidden_features": 32, "embedding_dim": 8, "queue_size": 8})
    method = spec.build()
    encoder = method.encoder
    torch.save({"model": method.state_dict(), "network_spec": spec.state_dict()}, tmp_path / "pretrained.pt")
    models, evaluation = tmp_path / "models", tmp_path / "eval"
    overrides = {"dataset_dir": data, "ckpt_dir": models, "output_dir": evaluation, "pretrained": tmp_path / "pretrained.pt",
                 "train_fraction": 0.5, "seed": 3, "image_size": 32, "run_name": "smoke"}
    run_bundle([str(CONFIGS / "train.json"), str(CONFIGS / "smoke.json")], **overrides)

    assert torch.load(models / "model.pt", weights_only=True)["network_spec"]["arguments"]["depth"] == 18
    state = torch.load(models / "checkpoint_final.pt", weights_only=False)["model"]
    assert all(torch.equal(state[k], v) for k, v in encoder.state_dict().items() if "running" not in k and "tracked" not in k)
    metrics = json.loads((evaluation / "test_metrics.json").read_text())
    assert set(metrics) == {"test_accuracy", "test_auc", "test_f1", "test_f1_macro"}
    assert all(0 <= v <= 1 for v in metrics.values())
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{evaluation / 'mlruns.db'}")
    run, = client.search_runs([client.get_experiment_by_name("ct_slice_classification").experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert {"val_accuracy", "val_auc", "val_f1", "val_f1_macro", "train_loss", "test_auc", "test_f1",
            "test_f1_macro"} <= set(run.data.metrics)
    params = run.data.params
    assert (params["train_fraction"], params["seed"], params["train_images"]) == ("0.5", "3", "4")  # 2 per class
    assert params["pretrained"] == str(tmp_path / "pretrained.pt")
    assert sorted(p.name for p in (evaluation / "gradcam").iterdir()) == ["000_test_covid_0.png", "001_test_covid_1.png"]

    common = {"dataset_dir": str(data), "image_size": 32, "logging_file": False}
    monai.bundle.run(config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")], ckpt_dir=str(models),
                     output_dir=str(tmp_path / "evaluated"), gradcam_images=0, **common)
    assert json.loads((tmp_path / "evaluated" / "test_metrics.json").read_text()) == pytest.approx(metrics)
    # no setting, no training data: the network, its labels, input size and intensity statistics are the checkpoint's
    monai.bundle.run(config_file=str(CONFIGS / "inference.json"), input=str(data / "test"), ckpt_path=str(models / "model.pt"),
                     output_dir=str(tmp_path / "predictions"), logging_file=False)
    with open(tmp_path / "predictions" / "predictions.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert sorted(Path(r["image"]).name for r in rows) == names([{"image": p} for p in map(str, (data / "test").rglob("*.png"))])
    assert all(float(r["covid"]) + float(r["normal"]) == pytest.approx(1.0, abs=1e-5) for r in rows)
