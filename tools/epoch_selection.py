"""The pre-training epoch of a series of checkpoints with the best downstream F1, as Wolf et al. (Sci. Rep. 2023,
"Downstream Evaluation") choose it: "we perform a downstream task evaluation every 50 epochs. The pre-training epoch
with the highest F1 score on the downstream tasks is used for all evaluations."

A 2D pre-training bundle keeps such a series with ``--checkpoint_series_interval N`` (50 in its ``paper`` recipe):
``models/series/checkpoint_epoch=<n>.pt``, each with the weights and network spec that ``model.pt`` holds.
:func:`pick_epochs` fine-tunes the downstream bundle from every checkpoint of a series on all its training images with
seed 0 and keeps the one with the highest test F1 (``test_f1``, the study's F1): like the paper, it selects on the
test split. ``tools.reduction`` takes a series folder wherever it takes a checkpoint.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Container, Mapping, Sequence
from pathlib import Path

from tools.study import Method, PlannedRun, Store, plan_runs, train_runs

SERIES_FILE = re.compile(r"epoch=(\d+)\.pt$")
SELECTION_METRIC = "test_f1"
SELECTION_FRACTION, SELECTION_SEED = 1.0, 0


def series_checkpoints(folder: str | Path) -> list[tuple[int, str]]:
    """The ``*epoch=<n>.pt`` checkpoints of a series folder as ``(epoch, absolute path)``, by epoch.

    Raises:
        FileNotFoundError: the folder holds none.
    """
    found = sorted(
        (int(match.group(1)), str(path.resolve()))
        for path in Path(folder).iterdir()
        if (match := SERIES_FILE.search(path.name)) and path.is_file()
    )
    if not found:
        raise FileNotFoundError(f"no *epoch=<n>.pt checkpoint in the series folder {folder}")
    return found


def candidate(name: str, epoch: int, path: str) -> Method:
    """One checkpoint of ``name``'s series as a method of its own (its MLflow ``method`` param)."""
    return Method(f"{name} epoch {epoch}", path)


def pick_epochs(
    series: Mapping[str, Sequence[tuple[int, str]]],
    fine_tune: Callable[[PlannedRun], None],
    store: Store,
    done: Container = (),
) -> dict[str, dict]:
    """Fine-tune from every checkpoint of every series (all training images, seed 0) and keep the best.

    Args:
        series: a pre-training method's name -> its :func:`series_checkpoints`.
        fine_tune: trains one planned run, logging it to ``store``.
        store: the study's MLflow runs.
        done: keys of runs FINISHED earlier (a resumed study), not trained again.

    Returns:
        ``{name: {"epoch": best epoch, "pretrained": its path, "f1": {epoch: test F1}}}``; ties go to the earlier
        epoch.
    """
    choices = {}
    for name, checkpoints in series.items():
        runs = plan_runs([candidate(name, *checkpoint) for checkpoint in checkpoints], (SELECTION_FRACTION,),
                         (SELECTION_SEED,))
        train_runs(runs, fine_tune, done)
        f1 = {epoch: record[SELECTION_METRIC]
              for (epoch, _), record in zip(checkpoints, store.records(runs, [SELECTION_METRIC], "train_images"))}
        best = max(f1, key=lambda epoch: (f1[epoch], -epoch))
        choices[name] = {"epoch": best, "pretrained": dict(checkpoints)[best], "f1": f1}
    return choices


def write_selection(choices: Mapping[str, Mapping], path: Path) -> None:
    """``path`` (CSV): one row per checkpoint of each series, its test F1 and whether it was chosen."""
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["method", "epoch", SELECTION_METRIC, "chosen"])
        for name, choice in choices.items():
            for epoch, value in choice["f1"].items():
                writer.writerow([name, epoch, value, epoch == choice["epoch"]])
