"""The labels-CSV layout of the slice classifier (a Kaggle-like folder: ``head_ct/000.png`` .. beside ``labels.csv``
with ``id, hemorrhage``), its errors, the named positive class of the F1 (and the AUC that needs none), and the
``ct_slice_classification`` bundle trained on such a folder."""

import logging
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.handlers import ROCAUC
from monai.metrics import compute_roc_auc
from PIL import Image

from common.data import DatalistError, slice_classification_datalist
from common.engine import positive_class_index, study_f1
from module_runner import run_bundle

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "ct_slice_classification" / "configs"
SPLITS = ("training", "validation", "test")
HEMORRHAGE = [1, 0, 0, 1, 1, 0, 1, 0, 1, 0, 0, 1]  # labels of ids 0..11


def kaggle_folder(root: Path, rows: str | None = None) -> Path:
    """``head_ct/000.png`` .. ``011.png`` (grey value 20 * i), ``labels.csv`` (``id, hemorrhage``, ids not padded)."""
    (root / "head_ct").mkdir(parents=True)
    for i in range(12):
        Image.fromarray(np.full((16, 16), 20 * i, np.uint8)).save(root / "head_ct" / f"{i:03d}.png")
    header = "id, hemorrhage\n"
    (root / "labels.csv").write_text(header + (rows if rows is not None else
                                               "".join(f"{i},{label}\n" for i, label in enumerate(HEMORRHAGE))))
    return root


def pairs(datalist: dict) -> dict[str, int]:
    return {Path(entry["image"]).name: entry["label"] for split in SPLITS for entry in datalist[split]}


def test_kaggle_folder_pairs_every_image_with_its_label(tmp_path, caplog):
    root = kaggle_folder(tmp_path)
    with caplog.at_level(logging.INFO):
        datalist = slice_classification_datalist(root)
    assert datalist["labels"] == {"0": "no_hemorrhage", "1": "hemorrhage"}
    assert pairs(datalist) == {f"{i:03d}.png": label for i, label in enumerate(HEMORRHAGE)}
    assert [len(datalist[split]) for split in SPLITS] == [6, 3, 3]  # dealt 60 / 20 / 20, stratified
    assert all(sorted({e["label"] for e in datalist[split]}) == [0, 1] for split in SPLITS)
    assert "labels CSV layout; 4 sampled training slices hold grey values" in caplog.text  # what was read
    assert positive_class_index(list(datalist["labels"].values())) == 1  # value 1: hemorrhage
    assert slice_classification_datalist(root / "labels.csv") == datalist  # the CSV itself
    folds = [slice_classification_datalist(root, fold=k, num_folds=3, validation_fraction=0.2) for k in range(3)]
    tested = sorted(Path(entry["image"]).name for fold in folds for entry in fold["test"])
    assert tested == sorted(pairs(datalist))  # cross-validation: the test folds partition the slices


@pytest.mark.parametrize("text, labels", [
    # semicolons, a byte-order mark, paths with suffix, string labels numbered in sorted order
    ("\ufeffFile;Finding\n" + "".join(f"head_ct/{i:03d}.png;{'bleed' if y else 'normal'}\n"
                                     for i, y in enumerate(HEMORRHAGE)), {"0": "bleed", "1": "normal"}),
    # a pandas index (no header name), padded stems, float labels, a blank line
    (",image,label\n" + "".join(f"{i},{i:03d},{float(y)}\n\n" for i, y in enumerate(HEMORRHAGE)),
     {"0": "no_label", "1": "label"}),
], ids=["semicolons_bom_paths_names", "pandas_index_stems_floats"])
def test_tolerant_details(tmp_path, text, labels):
    root = kaggle_folder(tmp_path)
    (root / "labels.csv").write_text(text, encoding="utf-8")
    datalist = slice_classification_datalist(root)
    assert datalist["labels"] == labels
    flip = labels["0"] == "bleed"
    assert pairs(datalist) == {f"{i:03d}.png": int(y != flip) for i, y in enumerate(HEMORRHAGE)}


def test_label_column_picks_one_of_several(tmp_path):
    rows = "".join(f"{i},{y},{i % 3}\n" for i, y in enumerate(HEMORRHAGE))
    root = kaggle_folder(tmp_path, rows)
    (root / "labels.csv").write_text("id, hemorrhage, Scanner\n" + rows)
    with pytest.raises(DatalistError, match=r"more than one candidate label column \('hemorrhage', 'Scanner'\)"):
        slice_classification_datalist(root)
    datalist = slice_classification_datalist(root, label_column="scanner")  # any case
    assert datalist["labels"] == {"0": "Scanner_0", "1": "Scanner_1", "2": "Scanner_2"}
    with pytest.raises(DatalistError, match=r"no column 'site'; its columns: 'id', 'hemorrhage', 'Scanner'"):
        slice_classification_datalist(root, label_column="site")


def test_errors_and_images_without_a_row(tmp_path, caplog):
    rows = "".join(f"{i},{y}\n" for i, y in enumerate(HEMORRHAGE))
    cases = {
        "missing": (rows + "12,1\n13,0\n", r"2 ids of column 'id' of .*labels.csv name no image under .*: '12', '13'"),
        "duplicate": (rows + "007,1\n", r"1 images are named by more than one row \(duplicate ids\): line 9 '7', "
                                       r"line 14 '007'"),
        "one class": ("".join(f"{i},1\n" for i in range(12)), r"label column 'hemorrhage' holds one class \('1'\)"),
        "no file column": ("".join(f"x{i},{y}\n" for i, y in enumerate(HEMORRHAGE)), r"no column names the images"),
        "blank label": ("0,\n" + rows.split("\n", 1)[1], r"lines \[2\] have no value in the label column"),
    }
    for name, (text, message) in cases.items():
        root = kaggle_folder(tmp_path / name.replace(" ", "_"), text)
        with pytest.raises(DatalistError, match=message):
            slice_classification_datalist(root)

    root = kaggle_folder(tmp_path / "ambiguous", "".join(f"{i},{i}\n" for i in range(12)))
    with pytest.raises(DatalistError, match=r"more than one column names image files .*'id', 'hemorrhage'"):
        slice_classification_datalist(root)  # ids and labels both name every image
    (root / "other.csv").write_text("a,b\n")
    with pytest.raises(DatalistError, match=r"several CSV files \(labels.csv, other.csv\)"):
        slice_classification_datalist(root)
    with pytest.raises(DatalistError, match="label_column 'hemorrhage' names a column of a labels CSV"):
        slice_classification_datalist(root / "head_ct", label_column="hemorrhage")  # a folder without CSV

    root = kaggle_folder(tmp_path / "extra")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "head_ct" / "100.png")
    with caplog.at_level(logging.WARNING):
        assert len(pairs(slice_classification_datalist(root))) == 12
    assert "1 images under" in caplog.text and "are left out, e.g. head_ct/100.png" in caplog.text


# ------------------------------------------------------------------------------------------ positive class


def evaluated(metric, scores: torch.Tensor, labels: torch.Tensor) -> float:
    engine = Engine(lambda engine, batch: batch)
    metric.attach(engine, "metric")
    return float(engine.run([(scores, labels)]).metrics["metric"])


def test_positive_class_picks_what_f1_scores_and_auc_needs_none():
    names = ["no_hemorrhage", "hemorrhage"]
    assert positive_class_index(names) == 1 and positive_class_index(names, "no_hemorrhage") == 0
    with pytest.raises(ValueError, match=r"'bleed' is not a class of this task; its classes: \['no_hemorrhage', "):
        positive_class_index(names, "bleed")
    with pytest.raises(ValueError, match="has 3 classes"):
        positive_class_index(["a", "b", "c"], "a")
    assert positive_class_index(["a", "b", "c"]) is None

    # class 1: 3 slices, 2 found, 1 false alarm: F1 4 / 6; class 0: 5 slices, 4 found, 1 missed: F1 8 / 10
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0])
    scores = torch.nn.functional.one_hot(torch.tensor([1, 1, 0, 1, 0, 0, 0, 0]), 2).float()
    assert evaluated(study_f1(2, lambda o: o, positive_class_index(names)), scores, labels) == pytest.approx(4 / 6)
    assert evaluated(study_f1(2, lambda o: o, positive_class_index(names, "no_hemorrhage")), scores, labels) \
        == pytest.approx(8 / 10)

    # the bundle's AUC: macro over the two classes of softmax probabilities, the AUC of either class
    p1 = torch.tensor([0.9, 0.4, 0.7, 0.6, 0.2, 0.1, 0.3, 0.8])
    probabilities, onehot = torch.stack([1 - p1, p1], 1), torch.nn.functional.one_hot(labels, 2)
    auc = evaluated(ROCAUC(average="macro", output_transform=lambda o: o), probabilities, onehot)
    assert compute_roc_auc(probabilities, onehot, average="none") == pytest.approx([auc, auc])
    assert auc == pytest.approx(12 / 15)  # 12 of the 15 (positive, negative) pairs ranked right


@pytest.mark.slow
def test_bundle_trains_on_a_labels_csv_folder_with_a_named_positive_class(tmp_path):
    root = kaggle_folder(tmp_path / "data")
    output = tmp_path / "eval"
    result = run_bundle([str(CONFIGS / "train.json"), str(CONFIGS / "smoke.json")], dataset_dir=root,
                        positive_class="no_hemorrhage", ckpt_dir=tmp_path / "models", output_dir=output,
                        gradcam_images=0, image_size=32, **{"network_spec#depth": 18})
    log = result.stdout + result.stderr
    assert "scores the positive class 'no_hemorrhage' (index 0" in log and "labels CSV layout" in log
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{output / 'mlruns.db'}")
    run, = client.search_runs([client.get_experiment_by_name("ct_slice_classification").experiment_id])
    assert run.data.params["f1_positive_class"] == "no_hemorrhage"
    assert (run.data.params["train_images"], run.data.params["test_images"]) == ("6", "3")
    assert {"val_f1", "test_f1", "test_auc"} <= set(run.data.metrics)
    spec = torch.load(tmp_path / "models" / "model.pt", weights_only=True)["network_spec"]
    assert spec["arguments"]["channel_def"] == {"0": "no_hemorrhage", "1": "hemorrhage"}  # indices: the CSV's values
