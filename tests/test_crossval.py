"""tools.crossval and common.data.folds: the stratified folds and the Brain-style 10 % validation hold-out on synthetic
label lists, the fold axis of the study machinery, the tool's inputs, table and plot on fake records, and two tiny
cross-validations end to end (k = 2, one or two steps per fold) read back from MLflow: ``ct_slice_classification``
(scratch and a BYOL-shaped ResNet-18 checkpoint; one fold failed then resumed) and ``btcv_segmentation`` (scratch
MiM at 32^3)."""

import csv
import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from common.data import (
    DatalistError,
    check_stratified_folds,
    ensure_slice_classification_demo_data,
    slice_classification_datalist,
    stratified_cross_validation,
    stratified_split,
)
from common.methods import method_spec
from common.networks import ResNetEncoder
from tools.crossval import TASKS, crossval, markdown_report, missing_metrics, plot
from tools.study import Method, PlannedRun, _run_key, aggregate, plan_runs, run_params

SEGMENTATION, SLICES = TASKS["btcv_segmentation"], TASKS["ct_slice_classification"]


def labelled(*counts: int) -> list[dict]:
    """``counts[c]`` entries of class ``c``, classes interleaved."""
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    labels = np.random.default_rng(7).permutation(labels)
    return [{"image": f"{i}.png", "label": int(label)} for i, label in enumerate(labels)]


def class_counts(entries: list[dict], num_classes: int) -> list[int]:
    return np.bincount([entry["label"] for entry in entries], minlength=num_classes).tolist()


def images(entries: list[dict]) -> set[str]:
    return {entry["image"] for entry in entries}


# ------------------------------------------------------------------------------------------ folds


def test_stratified_folds_hold_every_class_in_proportion_and_partition_the_cases():
    cases = labelled(50, 30, 20)
    folds = [stratified_split(cases, fold=k, num_folds=5, seed=3) for k in range(5)]
    for train, held_out in folds:
        assert class_counts(held_out, 3) == [10, 6, 4] and not images(train) & images(held_out)
        assert images(train) | images(held_out) == images(cases)
    held = [images(held_out) for _, held_out in folds]
    assert sum(len(h) for h in held) == 100 and set().union(*held) == images(cases)  # disjoint, covering
    assert stratified_split(cases, fold=2, num_folds=5, seed=3) == folds[2]  # deterministic for a seed
    assert stratified_split(cases, fold=2, num_folds=5, seed=4) != folds[2]


def test_brain_protocol_validation_is_ten_percent_of_each_training_part_stratified():
    """Wolf et al.'s Brain task: 100 + 100 slices, 5 stratified folds, 10 % of each training part for validation:
    144 training images per fold (the paper: "we use only 145 images as the training set")."""
    cases = labelled(100, 100)
    tests = []
    for fold in range(5):
        train, validation, test = stratified_cross_validation(cases, fold=fold, num_folds=5, seed=0)
        assert class_counts(test, 2) == [20, 20] and class_counts(validation, 2) == [8, 8]
        assert class_counts(train, 2) == [72, 72]
        assert not images(validation) & images(test) and not images(validation) & images(train)
        assert images(validation) <= images(cases) - images(test)  # inside the fold's training part
        assert images(train) | images(validation) | images(test) == images(cases)
        tests.append(images(test))
    assert set().union(*tests) == images(cases) and sum(map(len, tests)) == 200  # the test folds partition it
    train, validation, test = stratified_cross_validation(labelled(23, 7), fold=1, num_folds=2, seed=0)
    assert class_counts(test, 2) == [11, 4] and class_counts(validation, 2) == [1, 1]  # every class at least once
    assert class_counts(train, 2) == [11, 2]


def test_more_folds_than_the_smallest_class_fail_clearly():
    check_stratified_folds(labelled(5, 3), 3)
    with pytest.raises(DatalistError, match="4 stratified folds need at least 4 cases of every class, but class 1 "
                                            "has 3"):
        check_stratified_folds(labelled(5, 3), 4)
    with pytest.raises(DatalistError, match="validation_fraction must be in"):
        stratified_cross_validation(labelled(5, 5), fold=0, num_folds=2, validation_fraction=1.0)


def test_slice_datalist_folds_pool_every_split_of_the_layout():
    demo = ensure_slice_classification_demo_data()
    plain = slice_classification_datalist(demo)
    pooled = images(plain["training"]) | images(plain["validation"]) | images(plain["test"])
    folds = [slice_classification_datalist(demo, fold=k, num_folds=2, seed=0) for k in range(2)]
    for datalist in folds:
        assert [len(datalist[split]) for split in ("training", "validation", "test")] == [54, 6, 60]
        assert class_counts(datalist["test"], 3) == [20, 20, 20] and datalist["labels"] == plain["labels"]
    assert images(folds[0]["test"]) | images(folds[1]["test"]) == pooled and len(pooled) == 120


# ------------------------------------------------------------------------------------------ the study machinery


def test_a_fold_is_one_more_axis_of_the_plan_and_of_the_run_keys(tmp_path):
    a, b = Method("a"), Method("b", "/x.pt")
    runs = plan_runs([a, b], (1.0,), (0, 1), num_folds=2)
    assert [(r.method.label, r.seed, r.fold) for r in runs] == [(m, s, f) for m in "ab" for s in (0, 1) for f in (0, 1)]
    run = runs[1]
    assert run.key == ("a", 1.0, 0, 1, 2) and run.name == "a | 100 % | seed 0 | fold 2/2"
    assert run.folder == "a_1_seed0_fold1"
    assert run_params(run, tmp_path) | {"hyper_parameters#study": ""} == {
        "pretrained": None, "train_fraction": 1.0, "seed": 0, "fold": 1, "num_folds": 2, "run_name": run.name,
        "hyper_parameters#method": "a", "hyper_parameters#study": ""}
    assert plan_runs([a], (0.5,), (0,))[0].key == ("a", 0.5, 0)  # no fold: the keys of the other studies
    assert "fold" not in run_params(PlannedRun(a, 0.5, 0), tmp_path)
    params = {"method": "a", "train_fraction": "1.0", "seed": "0", "fold": "1", "num_folds": "2"}
    assert _run_key(params) == run.key
    assert _run_key(params | {"fold": "None"}) == ("a", 1.0, 0)
    assert _run_key({"method": "a", "seed": "0", "fold": "0", "num_folds": "2"}) == ("a", 1.0, 0, 0, 2)


def test_aggregate_over_folds_per_method_drops_what_differs():
    records = [{"method": m, "fraction": 1.0, "seed": 0, "fold": f, "train_cases": 3 + f, "heldout_cases": 3 - f,
                "val_mean_dice": d + 0.1 * f} for m, d in (("scratch", 0.4), ("mim", 0.6)) for f in (0, 1)]
    rows = aggregate(records, ["val_mean_dice"], by=("method",), count="runs")
    assert [list(row) for row in rows] == [["method", "fraction", "runs", "val_mean_dice", "val_mean_dice_std"]] * 2
    assert rows[1]["method"] == "mim" and rows[1]["val_mean_dice"] == pytest.approx(0.65)
    assert rows[1]["val_mean_dice_std"] == pytest.approx(math.sqrt(0.005))  # ddof=1 over the 2 folds


# ------------------------------------------------------------------------------------------ results


def segmentation_rows() -> tuple[list[dict], list[str], list[str]]:
    """Two methods' rows with Dice per class and average and an average NSD, as the evaluation logs them today."""
    classes = ["spleen", "left_kidney"]
    logged = ["val_mean_dice", "val_dice_spleen", "val_dice_left_kidney", "val_mean_nsd"]
    records = [{"method": m, "seed": 0, "fold": f, **{k: d + 0.01 * f for k in logged}}
               for m, d in (("scratch", 0.5), ("hyspark_pretrain", 0.7)) for f in (0, 1, 2)]
    return aggregate(records, logged, by=("method",), count="runs"), classes, logged


def test_report_mean_and_std_over_folds_per_class_and_the_missing_metrics():
    rows, classes, logged = segmentation_rows()
    report = markdown_report(SEGMENTATION, rows, classes, logged, num_folds=3, seeds=1)
    assert "mean ± std over 3 folds" in report
    assert "| method | Dice (%) | NSD (%) |" in report and "| scratch | 51.00 ± 1.00 | 51.00 ± 1.00 |" in report
    assert "| method | spleen | left kidney | mean |" in report
    assert "| hyspark_pretrain | 71.00 ± 1.00 | 71.00 ± 1.00 | 71.00 ± 1.00 |" in report
    assert "NSD (%) per class" not in report  # no per-class NSD logged: no table of its average alone
    assert missing_metrics(SEGMENTATION, classes, logged) == ["val_nsd_<class>", "val_mean_hd95", "val_hd95_<class>"]
    assert "not reported: val_nsd_<class>, val_mean_hd95, val_hd95_<class>." in report
    complete = logged + ["val_nsd_spleen", "val_nsd_left_kidney"]
    assert missing_metrics(SEGMENTATION, classes, complete[:-1]) == ["val_nsd_left_kidney", "val_mean_hd95",
                                                                     "val_hd95_<class>"]


def test_plot_draws_bars_per_method_and_class(tmp_path):
    rows, classes, logged = segmentation_rows()
    plot(SEGMENTATION, rows, classes, logged, tmp_path / "plot.png")
    with Image.open(tmp_path / "plot.png") as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert image.size[1] > 1.5 * 360  # two panels stacked: Dice per class, NSD (its mean)
    for colour in ((31, 119, 180), (255, 127, 14)):  # matplotlib's first two: one per method
        assert (np.abs(pixels - colour).sum(-1) < 30).sum() > 5000


# ------------------------------------------------------------------------------------------ inputs


def test_bad_inputs_fail_before_anything_is_written(tmp_path):
    output = tmp_path / "study"
    with pytest.raises(ValueError, match="unknown bundle 'mim_pretrain': tools.crossval runs btcv_segmentation"):
        crossval("mim_pretrain", output_dir=str(output))
    for k in (1, 2.5, "two"):
        with pytest.raises(ValueError, match="num_folds must be a whole number of at least 2"):
            crossval("btcv_segmentation", num_folds=k, output_dir=str(output))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        crossval("btcv_segmentation", checkpoints=f"mim_pretrain={tmp_path / 'missing.pt'}", output_dir=str(output))
    with pytest.raises(ValueError, match="known: byol2d_pretrain"):
        crossval("ct_slice_classification", checkpoints="mim_pretrain=x.pt", output_dir=str(output))
    with pytest.raises(DatalistError, match="7 folds need at least 7 cases, but .* has 6"):
        crossval("btcv_segmentation", num_folds=7, output_dir=str(output))  # the demo's 6 training cases
    with pytest.raises(DatalistError, match="7 stratified folds need at least 7 cases of every class, but class 0 "
                                            "has 6"):
        crossval("ct_classification3d", num_folds=7, output_dir=str(output))  # the demo's 6 volumes per class
    with pytest.raises(ValueError, match="--fold is set by the study"):
        crossval("ct_slice_classification", output_dir=str(output), fold=1)
    assert not output.exists()
    (output / "old").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="--resume"):
        crossval("ct_slice_classification", num_folds=2, output_dir=str(output))


# ------------------------------------------------------------------------------------------ end to end


def _runs(output: Path, experiment: str) -> list:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{output / 'mlruns.db'}")
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def _read_csv(path: Path) -> list[dict]:
    with open(path) as stream:
        return list(csv.DictReader(stream))


def small_slice_dataset(root: Path) -> Path:
    """A datalist json of 24 demo slices: 7 training and 1 test slice of each class (cross-validation pools them)."""
    demo = slice_classification_datalist(ensure_slice_classification_demo_data())
    dataset = {"labels": demo["labels"], "training": [], "test": []}
    for label in range(3):
        dataset["training"] += [entry for entry in demo["training"] if entry["label"] == label][:7]
        dataset["test"] += [entry for entry in demo["test"] if entry["label"] == label][:1]
    (root / "dataset.json").write_text(json.dumps(dataset))
    return root / "dataset.json"


@pytest.fixture(scope="module")
def slice_study(tmp_path_factory) -> dict:
    """ct_slice_classification on 24 demo slices, 2 folds, scratch and a BYOL-shaped ResNet-18 (both arms ResNet-18:
    the checkpoint's depth), one smoke step per fold."""
    root = tmp_path_factory.mktemp("crossval_slices")
    torch.manual_seed(0)
    encoder = ResNetEncoder(depth=18, spatial_dims=2)
    spec = method_spec("BYOL", {"depth": 18, "hidden_features": 32, "projection_dim": 8})
    checkpoint = root / "byol.pt"
    torch.save({"model": {f"encoder.{k}": v for k, v in encoder.state_dict().items()},
                "network_spec": spec.state_dict()}, checkpoint)
    arguments = dict(bundle="ct_slice_classification", checkpoints=[f"byol2d_pretrain={checkpoint}"], num_folds=2,
                     output_dir=str(root / "study"), configs=["smoke.json"], dataset_dir=str(small_slice_dataset(root)),
                     epoch_length=1, gradcam_images=0)
    paths = crossval(**arguments)
    return {"paths": {key: Path(path) for key, path in paths.items()}, "arguments": arguments,
            "checkpoint": checkpoint.resolve(), "output": root / "study"}


@pytest.mark.slow
def test_slice_folds_train_evaluate_their_held_out_fold_and_report_mean_and_std(slice_study):
    runs = _runs(slice_study["output"], "ct_slice_classification")
    keys = sorted((r.data.params["method"], r.data.params["fold"], r.data.params["num_folds"]) for r in runs)
    assert keys == [(m, f, "2") for m in ("byol2d_pretrain", "scratch") for f in ("0", "1")]
    for run in runs:
        assert run.info.status == "FINISHED"
        pretrained = str(slice_study["checkpoint"]) if run.data.params["method"] == "byol2d_pretrain" else "None"
        assert run.data.params["pretrained"] == pretrained
        # the evaluation of the fold's best model on its held-out fold, logged beside the training's own test
        folder = slice_study["output"] / "runs" / f"{run.data.params['method']}_1_seed0_fold{run.data.params['fold']}"
        evaluated = json.loads((folder / "test_metrics.json").read_text())
        for name in ("test_accuracy", "test_auc", "test_f1", "test_f1_macro"):
            assert run.data.metrics[f"evaluate/{name}"] == pytest.approx(evaluated[name])
            assert run.data.metrics[f"evaluate/{name}"] == pytest.approx(run.data.metrics[name])

    rows = _read_csv(slice_study["paths"]["csv"])
    assert [(r["method"], r["fold"]) for r in rows] == [(m, f) for m in ("scratch", "byol2d_pretrain") for f in "01"]
    assert {(r["train_cases"], r["heldout_cases"]) for r in rows} == {("9", "12")}  # 24 slices; 1 validation per class
    assert all(0.0 <= float(r[m]) <= 1.0 for r in rows for m in ("test_accuracy", "test_auc", "test_f1"))
    report = slice_study["paths"]["md"].read_text()
    assert "mean ± std over 2 folds" in report and "| method | accuracy | AUC | F1 | macro F1 |" in report
    assert report.count(" ± ") >= 8 and "not reported" not in report
    with Image.open(slice_study["paths"]["png"]) as image:
        assert image.format == "PNG" and len(image.convert("L").getcolors(1 << 16)) > 10


@pytest.mark.slow
def test_resume_skips_the_finished_folds(slice_study):
    with pytest.raises(FileExistsError):
        crossval(**slice_study["arguments"])
    models = {path: path.stat().st_mtime_ns for path in slice_study["output"].glob("runs/*/model.pt")}
    paths = crossval(**slice_study["arguments"], resume=True)
    assert len(_runs(slice_study["output"], "ct_slice_classification")) == 4 and len(models) == 4
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in models.items())  # nothing trained again
    assert _read_csv(Path(paths["csv"])) == _read_csv(slice_study["paths"]["csv"])


def test_resume_runs_again_only_the_folds_not_finished_with_their_evaluation(tmp_path, monkeypatch):
    """Against a fake fold run that logs what the bundle and the evaluation log: a fold whose run FAILED (an
    interrupted training) and one whose run FINISHED without its evaluation run again; the others do not."""
    calls = []

    def fake_fold(run, task, store, **_):
        calls.append((run.method.label, run.fold))
        client = mlflow.MlflowClient(tracking_uri=store.uri)
        experiment = client.get_experiment_by_name(store.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(store.experiment)
        run_id = client.create_run(experiment_id, run_name=run.name).info.run_id
        params = {"method": run.method.label, "study": store.study, "seed": run.seed, "fold": run.fold,
                  "num_folds": run.num_folds, "train_cases": 6, "heldout_cases": 6}
        client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in params.items()])
        if (run.method.label, run.fold) in broken:
            client.set_terminated(run_id, "FAILED")
            return
        client.set_terminated(run_id)
        if (run.method.label, run.fold) not in unevaluated:
            store.log_metrics(run, {f"evaluate/{m.average}": 0.5 + 0.1 * run.fold for m in task.measures})

    monkeypatch.setattr("tools.crossval.run_fold", fake_fold)
    arguments = dict(bundle="ct_classification3d", num_folds=3, output_dir=str(tmp_path / "study"))
    broken, unevaluated = {("scratch", 1)}, {("scratch", 2)}
    with pytest.raises(LookupError, match=r"scratch \| 100 % \| seed 0 \| fold 2/3: no FINISHED run"):
        crossval(**arguments)
    assert calls == [("scratch", 0), ("scratch", 1), ("scratch", 2)]
    broken = set()
    with pytest.raises(LookupError, match=r"fold 3/3: its MLflow run logged no evaluate/val_accuracy"):
        crossval(**arguments, resume=True)
    assert calls[3:] == [("scratch", 1), ("scratch", 2)]  # fold 0 was done
    unevaluated = set()
    calls.clear()
    paths = crossval(**arguments, resume=True)
    assert calls == [("scratch", 2)]
    rows = _read_csv(Path(paths["csv"]))
    assert [(r["fold"], float(r["val_accuracy"])) for r in rows] == [("0", 0.5), ("1", 0.6), ("2", pytest.approx(0.7))]
    assert "| scratch | 0.600 ± 0.100 |" in Path(paths["md"]).read_text()


@pytest.fixture(scope="module")
def segmentation_study(tmp_path_factory) -> dict:
    """btcv_segmentation from scratch, 2 folds of the demo's 6 training cases, MiM at 32^3, one step per fold."""
    root = tmp_path_factory.mktemp("crossval_btcv")
    arguments = dict(bundle="btcv_segmentation", num_folds=2, output_dir=str(root / "study"), configs=["smoke.json"],
                     arch="mim", roi_size=[32, 32, 32], sw_overlap=0.0, epoch_length=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 32^3 crops gain little from a second thread and lose much on a shared CPU
    try:
        paths = crossval(**arguments)
    finally:
        torch.set_num_threads(threads)
    return {"paths": {key: Path(path) for key, path in paths.items()}, "output": root / "study"}


@pytest.mark.slow
def test_segmentation_folds_report_dice_per_organ_and_name_what_evaluation_lacks(segmentation_study):
    runs = _runs(segmentation_study["output"], "btcv_segmentation")
    assert sorted(r.data.params["fold"] for r in runs) == ["0", "1"]
    assert sum(int(r.data.params["heldout_cases"]) for r in runs) == 6  # the folds partition the 6 cases
    for run in runs:  # evaluate.json on the held-out fold scores the best model as its validation did
        assert run.data.metrics["evaluate/val_mean_dice"] == pytest.approx(run.data.metrics["val_mean_dice"])
        assert "evaluate/val_mean_nsd" in run.data.metrics
    folders = sorted(path.name for path in segmentation_study["output"].glob("runs/*"))
    assert folders == ["scratch_1_seed0_fold0", "scratch_1_seed0_fold1"]
    assert all((segmentation_study["output"] / "runs" / f / "metrics" / "metrics.csv").is_file() for f in folders)

    rows = _read_csv(segmentation_study["paths"]["csv"])
    assert [(r["method"], r["fold"], r["train_cases"], r["heldout_cases"]) for r in rows] == [
        ("scratch", "0", "3", "3"), ("scratch", "1", "3", "3")]
    organs = [key for key in rows[0] if key.startswith("val_dice_")]
    assert len(organs) == 13 and all(0.0 <= float(r[k]) <= 1.0 for r in rows for k in organs + ["val_mean_dice"])
    report = segmentation_study["paths"]["md"].read_text()
    assert "| method | Dice (%) |" in report and "Dice (%) per class." in report and " inferior vena cava |" in report
    for metric in ("nsd", "hd95"):  # per class and averaged, read back from the evaluation of every fold
        assert len([key for key in rows[0] if key.startswith(f"val_{metric}_")]) == 13
        assert all(r[f"val_mean_{metric}"] != "" for r in rows)
    assert "HD95 (mm)" in report and "not reported" not in report
    with Image.open(segmentation_study["paths"]["png"]) as image:
        assert image.format == "PNG" and len(image.convert("L").getcolors(1 << 16)) > 10
