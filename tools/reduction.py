"""Downstream dataset reduction (Wolf et al. 2023, "Downstream Dataset Reduction", Table 3 / Fig. 5): fine-tune
``ct_slice_classification`` from every given 2D pre-trained ResNet-50 and from scratch on shrinking fractions of
the training images, and compare the test AUC, F1 and accuracy.

::

    # the paper's protocol on one task: 100, 75, 50, 25, 10, 5 % of the training images, five seeds
    python -m tools.reduction \\
        --checkpoints spark2d_pretrain=bundles/spark2d_pretrain/models/model.pt,moco2d_pretrain=bundles/moco2d_pretrain/models/model.pt \\
        --dataset_dir ../shared/data/covid_ct_ucsd --output_dir studies/covid

    # fewer steps and seeds; pre-trained methods only (scratch is always run unless --no_scratch)
    python -m tools.reduction --checkpoints byol2d_pretrain=path/to/model.pt --no_scratch \\
        --fractions 1,0.5,0.25 --seeds 0,1,2 --output_dir studies/covid_short

    # a quick look on the demo slices (extra config files merge over train.json, then --key value overrides)
    python -m tools.reduction --configs smoke.json --fractions 1,0.5 --seeds 0,1 --output_dir /tmp/reduction_demo

    # the paper's choice of pre-training epoch: a series kept every 50 epochs (--checkpoint_series_interval 50, the
    # paper recipe), each checkpoint fine-tuned once (all images, seed 0), the best test F1 kept for the study
    python -m tools.reduction --checkpoints spark2d_pretrain=bundles/spark2d_pretrain/models/series \\
        --dataset_dir ../shared/data/covid_ct_ucsd --output_dir studies/covid_series

    # an interrupted study: runs FINISHED in its MLflow store (with their test metrics) are skipped
    python -m tools.reduction --checkpoints spark2d_pretrain=bundles/spark2d_pretrain/models/model.pt \\
        --dataset_dir ../shared/data/covid_ct_ucsd --output_dir studies/covid --resume

The protocol, step by step:

1. The fractions are run from the largest down. One step is one fraction: every method (``scratch`` first,
   then the checkpoints in the order given) fine-tuned once per seed. The bundle draws a stratified subset
   of ``train_fraction`` of its training images from ``seed``, so the seeds give different subsets and, for
   one seed, every method trains on the same subset; validation and test sets never shrink.
2. Stop rule: after a step, if the mean test F1 over the seeds of *every* method is below ``min_f1``
   (0.7, the paper's), the smaller fractions are not run: the task is then too hard for every method and
   further reduction says nothing. A step where any one method reaches ``min_f1`` lets the reduction go on;
   ``--min_f1 0`` runs every fraction. The tables say where a study stopped.
3. Each fine-tuning runs in this process, in ``<output_dir>/runs/<method>_<fraction>_seed<seed>/`` (its
   checkpoints, ``test_metrics.json`` and the Grad-CAM heat maps of test images in ``gradcam/``), and
   logs to the study's one MLflow store (``<output_dir>/mlruns.db``, or ``$MLFLOW_TRACKING_URI``); its
   params carry ``method`` and ``study`` (the output folder) besides the bundle's own.
4. The results are read back from MLflow: the ``test_auc``, ``test_f1`` (the paper's: the binary F1 of the
   positive class for two classes, the micro F1 for more), ``test_f1_macro`` and ``test_accuracy`` of every run,
   averaged over seeds (std with ``ddof=1``), and written to the output folder:

   - ``reduction.csv``: one row per method and fraction: training images, seeds, mean and std of each metric;
   - ``reduction.md``: Markdown tables of each metric per method (rows) and fraction (columns, largest first),
     like the paper's Table 3, and where the stop rule ended the study;
   - ``reduction.png``: test F1 and AUC against the fraction of training images, one line per method with
     a ± std band, like the paper's Fig. 5.

Every other ``--key value`` is a bundle override for all runs (``dataset_dir``, ``max_epochs``, ``batch_size``,
``gradcam_images`` ...), so help is ``python -m tools.reduction -- --help``. The output folder is
``bundles/ct_slice_classification/eval/reduction`` unless ``--output_dir`` names another; an existing,
non-empty one is never written into unless ``--resume`` is given.
"""

from __future__ import annotations

import logging
import logging.config
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import fire

from common.engine import tracking_uri
from common.transfer import SLICE_PRETRAINING
from tools.epoch_selection import SELECTION_METRIC, pick_epochs, series_checkpoints, write_selection
from tools.study import (
    Bundle,
    Method,
    PlannedRun,
    Store,
    aggregate,
    as_tuple,
    checked_fractions,
    checked_seeds,
    checkpoint_paths,
    fraction_table,
    plan_runs,
    plot_against_fraction,
    prepared_output_dir,
    run_params,
    scratch_method,
    train_runs,
    write_csv,
)

logger = logging.getLogger(__name__)

BUNDLE = Bundle("ct_slice_classification")  # its ``bundle_name``, hence its MLflow experiment
PRETRAINING_BUNDLES = ("spark2d_pretrain", "moco2d_pretrain", "swav2d_pretrain", "byol2d_pretrain")
# The test metrics the bundle logs to MLflow after training, with their names in the report.
# test_f1 is the study's F1 (the positive class's for two classes, :func:`common.engine.study_f1`), which the stop
# rule reads; the macro average is reported beside it.
METRICS = {"test_auc": "AUC", "test_f1": "F1", "test_f1_macro": "macro F1", "test_accuracy": "accuracy"}
STOP_METRIC = "test_f1"
COUNT = "train_images"  # the bundle's MLflow param: images in the run's training subset
# Set by the study for every run; not accepted as ``--key value`` overrides.
MANAGED_KEYS = ("pretrained", "train_fraction", "seed", "ckpt_dir", "output_dir", "tracking_uri", "run_name")


def study_methods(checkpoints, no_scratch: bool = False) -> list[Method]:
    """``scratch`` (unless ``no_scratch``), then one method per ``name=path`` checkpoint in the order given,
    ``name`` a 2D pre-training bundle (:data:`PRETRAINING_BUNDLES`).

    Raises:
        ValueError: no method at all, or a bad entry (see :func:`tools.study.checkpoint_paths`).
        FileNotFoundError: a checkpoint file does not exist.
    """
    paths = checkpoint_paths(checkpoints, PRETRAINING_BUNDLES)
    pretrained = [Method(name, path) for name, path in paths.items()]
    scratch = scratch_method(None, pretrained, "network_spec#depth", SLICE_PRETRAINING, "depth")
    methods = ([] if no_scratch else [scratch]) + pretrained
    if not methods:
        raise ValueError("nothing to compare: give --checkpoints name=path, or drop --no_scratch")
    return methods


def every_method_below(rows: Sequence[Mapping], min_f1: float) -> bool:
    """The stop rule: whether every method's mean test F1 in ``rows`` (one step's :func:`aggregate` rows)
    is below ``min_f1``."""
    return all(row[STOP_METRIC] < min_f1 for row in rows)


def fine_tune(run: PlannedRun, files: Sequence[str], output_dir: Path, overrides: Mapping) -> None:
    """Train ``ct_slice_classification`` once, in this process, in the run's own folder (checkpoints, test
    metrics, Grad-CAM), logging to the study's MLflow store."""
    run_dir = str(output_dir / "runs" / run.folder)
    BUNDLE.fine_tune(
        files,
        {
            **overrides,
            **run_params(run, output_dir),
            "ckpt_dir": run_dir,
            "output_dir": run_dir,
            "tracking_uri": tracking_uri(output_dir),
        },
    )


def run_reduction(
    methods: Sequence[Method],
    fractions: Sequence[float],
    seeds: Sequence[int],
    fine_tune: Callable[[PlannedRun], None],
    store: Store,
    resume: bool = False,
    min_f1: float = 0.7,
) -> tuple[list[dict], tuple[float, ...]]:
    """Fine-tune step by step, the largest fraction first, until the stop rule ends the reduction.

    Args:
        methods: the methods of every step.
        fractions: the training fractions, in any order; run from the largest down.
        seeds: the seeds of every method at every fraction.
        fine_tune: trains one planned run, logging it to ``store``.
        store: the study's MLflow runs.
        resume: skip the runs already FINISHED in ``store`` with every test metric.
        min_f1: the stop rule's threshold (see :func:`every_method_below`).

    Returns:
        The records of the runs of the steps made (see :meth:`tools.study.Store.records`), and the fractions
        the stop rule left out, largest first.
    """
    done = store.completed(list(METRICS)) if resume else {}
    steps = sorted(fractions, reverse=True)
    records: list[dict] = []
    for index, fraction in enumerate(steps):
        step = plan_runs(methods, (fraction,), seeds)
        logger.info("%g %% of the training images: %d methods x %d seeds", 100 * fraction, len(methods), len(seeds))
        train_runs(step, fine_tune, done)
        step_records = store.records(step, list(METRICS), COUNT)
        records += step_records
        left = tuple(steps[index + 1 :])
        if left and every_method_below(aggregate(step_records, list(METRICS)), min_f1):
            logger.info(
                "every method's mean test F1 is below %g at %g %%: %s not run",
                min_f1,
                100 * fraction,
                ", ".join(f"{100 * f:g} %" for f in left),
            )
            return records, left
    return records, ()


# ------------------------------------------------------------------------------------------ results


def summary_rows(records: Sequence[Mapping], methods: Sequence[Method]) -> list[dict]:
    """:func:`tools.study.aggregate` rows, method by method in ``methods`` order, the largest fraction first."""
    order = {method.label: index for index, method in enumerate(methods)}
    rows = aggregate(records, list(METRICS))
    return sorted(rows, key=lambda row: (order[row["method"]], -row["fraction"]))


def markdown_report(rows: Sequence[Mapping], left_out: Sequence[float], min_f1: float) -> str:
    """One table per test metric (methods by fractions, largest first, best of each column in bold), and
    where the stop rule ended the study."""
    seeds = max(row["seeds"] for row in rows)
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "one seed"
    if left_out:
        smallest = min(row["fraction"] for row in rows)
        stop = (
            f"Reduction stopped after {100 * smallest:g} %: every method's mean test F1 was below {min_f1:g}, "
            f"so {', '.join(f'{100 * f:g} %' for f in left_out)} were not run."
        )
    else:
        stop = f"Every planned fraction was run (stop rule: every method's mean test F1 below {min_f1:g})."
    tables = "\n\n".join(
        f"Test {name}.\n\n{fraction_table(rows, metric, COUNT, 'images', largest_first=True)}"
        for metric, name in METRICS.items()
    )
    return (
        f"Test metrics of {BUNDLE.name} fine-tuned on fractions of the training images ({spread}; best of "
        f"each column in bold). {stop}\n\n{tables}\n"
    )


def plot(rows: Sequence[Mapping], path: Path) -> None:
    """Test F1 and AUC against the fraction of training images (%), one line per method, ± std bands."""
    plot_against_fraction(
        rows,
        {"test_f1": "test F1", "test_auc": "test AUC"},
        path,
        title=f"Dataset reduction on {BUNDLE.name}",
        xlabel="training images used (%)",
        band=True,
    )


def write_results(rows: Sequence[Mapping], left_out: Sequence[float], min_f1: float, output: Path) -> dict[str, str]:
    """``reduction.csv``, ``reduction.md`` and ``reduction.png`` in ``output``; their paths by suffix."""
    paths = {suffix: output / f"reduction.{suffix}" for suffix in ("csv", "md", "png")}
    write_csv(rows, paths["csv"])
    paths["md"].write_text(markdown_report(rows, left_out, min_f1))
    plot(rows, paths["png"])
    return {suffix: str(path) for suffix, path in paths.items()}


# ------------------------------------------------------------------------------------------ the tool


def reduction(
    checkpoints=(),
    fractions=(1.0, 0.75, 0.5, 0.25, 0.1, 0.05),
    seeds=(0, 1, 2, 3, 4),
    no_scratch: bool = False,
    min_f1: float = 0.7,
    output_dir: str = str(BUNDLE.root / "eval" / "reduction"),
    configs=(),
    resume: bool = False,
    **overrides,
) -> dict[str, str]:
    """Fine-tune ``ct_slice_classification`` per method, shrinking training fraction and seed, then tabulate
    and plot the test AUC, F1 and accuracy.

    Args:
        checkpoints: ``name=path`` entries (a list, or one string with commas), ``name`` a 2D pre-training
            bundle (``spark2d_pretrain``, ``moco2d_pretrain``, ``swav2d_pretrain``, ``byol2d_pretrain``), ``path``
            a checkpoint or a series folder (``models/series``): the series' checkpoint with the best test F1 is
            chosen first (:mod:`tools.epoch_selection`) and written to ``epoch_selection.csv``.
        fractions: fractions of the training images (the bundle's ``train_fraction``), in ``(0, 1]``;
            run from the largest down.
        seeds: seeds of the subsets and the runs; for one seed every method sees the same subset.
        no_scratch: leave out training from scratch.
        min_f1: stop reducing once every method's mean test F1 at a fraction is below this (0 never stops).
        output_dir: the study's folder: MLflow store, one folder per run, tables and plot
            (default: the bundle's git-ignored ``eval/reduction``).
        configs: config files merged over the bundle's ``train.json`` (paths, or names in its ``configs/``).
        resume: continue the study in a non-empty ``output_dir`` (with the same arguments), skipping the runs
            FINISHED in its MLflow store and training the others, an interrupted one from its start.
        overrides: further bundle overrides for every run (``dataset_dir``, ``max_epochs``, ``image_size`` ...).

    Returns:
        The paths of the CSV, Markdown and PNG files written.

    Raises:
        ValueError, FileNotFoundError, FileExistsError: bad inputs, before any training.
    """
    entries = [str(entry).partition("=")[::2] for entry in as_tuple(checkpoints)]
    series = {name: series_checkpoints(path) for name, path in entries if path and Path(path).is_dir()}

    def with_checkpoints(choose: Callable[[str], str]) -> list[str]:
        """The ``name=path`` entries with each series folder replaced by ``choose(name)``, one of its files."""
        return [f"{name}={choose(name) if name in series else path}" for name, path in entries]

    study_methods(with_checkpoints(lambda name: series[name][-1][1]), no_scratch)  # bad inputs stop before training
    fractions, seeds = checked_fractions(fractions), checked_seeds(seeds)
    files = BUNDLE.config_files(configs)
    BUNDLE.parser(files, overrides, MANAGED_KEYS)
    output = prepared_output_dir(output_dir, resume)
    store = Store(tracking_uri(output), BUNDLE.name, str(output))
    train = partial(fine_tune, files=files, output_dir=output, overrides=overrides)
    choices = pick_epochs(series, train, store, store.completed([SELECTION_METRIC]) if resume else {})
    for name, choice in choices.items():
        logger.info("%s: pre-training epoch %d has the best test F1 (%.3f)", name, choice["epoch"],
                    choice["f1"][choice["epoch"]])
    methods = study_methods(with_checkpoints(lambda name: choices[name]["pretrained"]), no_scratch)
    records, left_out = run_reduction(methods, fractions, seeds, train, store, resume, min_f1)
    paths = write_results(summary_rows(records, methods), left_out, min_f1, output)
    if choices:
        write_selection(choices, output / "epoch_selection.csv")
        paths["selection"] = str(output / "epoch_selection.csv")
    return paths


if __name__ == "__main__":
    logging.config.fileConfig(str(BUNDLE.configs / "logging.conf"), disable_existing_loggers=False)
    fire.Fire(reduction)
