"""tools.epoch_selection: the pre-training epoch of a checkpoint series with the best downstream test F1 (Wolf et
al., "Downstream Evaluation"), against a fake fine-tuning that logs MLflow runs as the bundle does."""

import csv

import pytest
from study_runs import log_run

from tools.epoch_selection import pick_epochs, series_checkpoints, write_selection
from tools.study import Store

# the test F1 each checkpoint's fine-tuning reaches: epoch 100 is the best, 50 and 150 tie below it
F1 = {50: 0.6, 100: 0.8, 150: 0.6}


def series_folder(folder, epochs):
    folder.mkdir()
    for epoch in epochs:
        (folder / f"checkpoint_epoch={epoch}.pt").write_bytes(b"weights")
    (folder / "notes.txt").write_text("not a checkpoint")
    return folder


class FakeFineTuning:
    """One FINISHED MLflow run per call (:func:`study_runs.log_run`) with the test F1 of its checkpoint's epoch."""

    def __init__(self, store: Store, f1: dict):
        self.store, self.f1, self.calls = store, f1, []

    def __call__(self, run) -> None:
        self.calls.append(run.key)
        epoch = int(run.method.pretrained.rsplit("=", 1)[1].removesuffix(".pt"))
        log_run(self.store, run, {"test_f1": self.f1[epoch]})


def test_the_series_checkpoint_with_the_best_test_f1_is_chosen_and_written(tmp_path):
    folder = series_folder(tmp_path / "series", [150, 50, 100])
    checkpoints = series_checkpoints(folder)
    assert [epoch for epoch, _ in checkpoints] == [50, 100, 150]
    store = Store(f"sqlite:///{tmp_path / 'mlruns.db'}", "ct_slice_classification", "study")
    fake = FakeFineTuning(store, F1)
    choices = pick_epochs({"spark2d_pretrain": checkpoints}, fake, store)
    assert fake.calls == [(f"spark2d_pretrain epoch {epoch}", 1.0, 0) for epoch in (50, 100, 150)]
    choice = choices["spark2d_pretrain"]
    assert choice["epoch"] == 100 and choice["pretrained"] == str(folder / "checkpoint_epoch=100.pt")
    assert choice["f1"] == F1

    # a tie goes to the earlier epoch; runs FINISHED before (a resumed study) are not trained again
    tied = FakeFineTuning(store, {50: 0.7, 100: 0.7, 150: 0.7})
    store_b = Store(store.uri, store.experiment, "tied study")
    tied.store = store_b
    assert pick_epochs({"spark2d_pretrain": checkpoints}, tied, store_b)["spark2d_pretrain"]["epoch"] == 50
    again = FakeFineTuning(store_b, F1)
    pick_epochs({"spark2d_pretrain": checkpoints}, again, store_b, store_b.completed(["test_f1"]))
    assert again.calls == []

    write_selection(choices, tmp_path / "selection.csv")
    with open(tmp_path / "selection.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [(row["epoch"], row["chosen"]) for row in rows] == [("50", "False"), ("100", "True"), ("150", "False")]


def test_a_folder_without_checkpoints_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no \\*epoch=<n>.pt checkpoint"):
        series_checkpoints(tmp_path / "empty")
