"""Cross-validation as the papers run it: the k folds of a downstream bundle, from pre-trained checkpoints and from
scratch, each fold's best model evaluated on its held-out part, then mean ± std over the folds.

HySparK (Sec. 3.2): "a five-fold cross-validation strategy is used to train models for all BTCV and MSD experiments
and we select the best model in each fold". Wolf et al. 2023 ("Brain"): "We perform a five-fold stratified
cross-validation using 10% of the training data for validation and report the mean and standard deviation of
accuracy, AUC score, and F1 score over the five runs".

::

    # HySparK's protocol: 5 folds of btcv_segmentation from a HySparK checkpoint and from scratch
    python -m tools.crossval btcv_segmentation \\
        --checkpoints hyspark_pretrain=bundles/hyspark_pretrain/models/model.pt \\
        --dataset_dir /data/btcv/dataset_0.json --output_dir studies/hyspark_btcv_cv

    # Wolf et al.'s Brain protocol: 5 stratified folds of ct_slice_classification, 10 % of each training part
    # held out for validation (the bundle's validation_fraction), every pre-training method and scratch
    python -m tools.crossval ct_slice_classification \\
        --checkpoints spark2d_pretrain=bundles/spark2d_pretrain/models/model.pt,moco2d_pretrain=bundles/moco2d_pretrain/models/model.pt \\
        --dataset_dir /data/brain_slices --output_dir studies/brain_cv

    # 3D classification, 5 stratified folds, two seeds (two different partitions: 10 runs per method)
    python -m tools.crossval ct_classification3d --checkpoints mim_pretrain=bundles/mim_pretrain/models/model.pt \\
        --seeds 0,1 --dataset_dir /data/cc_ccii

    # a quick look on the demo data (extra config files merge over train.json, then --key value overrides)
    python -m tools.crossval ct_slice_classification --num_folds 2 --configs smoke.json --output_dir /tmp/cv_demo

    # an interrupted cross-validation: folds FINISHED and evaluated in its MLflow store are skipped
    python -m tools.crossval btcv_segmentation --checkpoints hyspark_pretrain=path/to/model.pt --resume

A fold is one more axis of :func:`tools.study.plan_runs`: every method (scratch first, one per arch of the
checkpoints, then the checkpoints in the order given) x seed x fold ``0 .. k - 1``. For each:

1. the bundle's ``train.json`` trains with ``--fold i --num_folds k --seed s`` in this process, in
   ``<output_dir>/runs/<method>_1_seed<s>_fold<i>/``, keeping its best model (``model.pt``) as the bundle does, and
   logs to the study's one MLflow store (``<output_dir>/mlruns.db``, or ``$MLFLOW_TRACKING_URI``) with the params
   ``method``, ``study``, ``fold``, ``num_folds``, ``train_cases`` and ``heldout_cases`` besides its own;
2. the bundle's ``evaluate.json`` evaluates that ``model.pt`` on the fold's held-out part (its per-case CSVs land in
   the run folder) and the evaluator's metrics are added to the fold's MLflow run as ``evaluate/<metric>``.

The folds are the bundles' own (``--fold``, deterministic for a seed): ``btcv_segmentation`` k folds over all its
training cases, the held-out fold being the validation set (Dice, NSD, HD95 per organ and averaged);
``ct_classification3d`` k stratified folds, the held-out fold the validation set (accuracy, AUC, F1, macro F1);
``ct_slice_classification`` k stratified folds over all its labelled slices, the held-out fold the test set and a
stratified ``validation_fraction`` (10 %) of the others the validation set (accuracy, AUC, F1, macro F1). The results
are read back from MLflow and written to the output folder:

- ``crossval.csv``: one row per method, seed and fold: training and held-out cases, every metric;
- ``crossval.md``: mean ± std over the folds (and seeds) per method, overall and, for segmentation, per organ; metrics
  that the bundle's evaluation did not compute are named in a note;
- ``crossval.png``: per-method bars of the mean with ± std error bars (per organ for segmentation).

Every other ``--key value`` is a bundle override for all runs (``dataset_dir``, ``max_epochs`` ...), so help is
``python -m tools.crossval -- --help``. The output folder is ``bundles/<bundle>/eval/crossval`` unless
``--output_dir`` names another; an existing, non-empty one is never written into unless ``--resume`` is given.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import fire
from monai.bundle import ConfigParser

from common.data import (
    DatalistError,
    check_stratified_folds,
    classification_datalist,
    load_datalist,
    slice_classification_datalist,
)
from common.engine import tracking_uri
from common.networks import PRETRAINING_ARCHS
from common.transfer import CLASSIFICATION_PRETRAINING, SEGMENTATION_PRETRAINING, SLICE_PRETRAINING
from tools.reduction import PRETRAINING_BUNDLES as SLICE_PRETRAINING_BUNDLES
from tools.study import (
    Bundle,
    Method,
    PlannedRun,
    Store,
    aggregate,
    checked_seeds,
    checkpoint_paths,
    markdown_table,
    metric_cell,
    plan_runs,
    plot_bars,
    prepared_output_dir,
    run_params,
    scratch_method,
    train_runs,
    write_csv,
)

logger = logging.getLogger(__name__)

EVALUATED = "evaluate/"  # the prefix of the held-out metrics in a fold's MLflow run
COUNTS = ("train_cases", "heldout_cases")  # MLflow params of every fold's run
MEAN = "mean"  # the group of an average in a per-class plot panel


@dataclass(frozen=True)
class Measure:
    """One measure a cross-validation reports: its average over classes and, for segmentation, its value per class.

    Args:
        label: its name in tables and plots.
        average: the metric name of the average (``val_mean_dice``, ``test_auc``).
        per_class: the metric name of one class, ``{}`` standing for the class (``val_dice_{}``); ``None``: none.
        scale, digits: tables and plots show ``scale * value`` with ``digits`` decimals (``100, 2``: a Dice in %).
    """

    label: str
    average: str
    per_class: str | None = None
    scale: float = 1.0
    digits: int = 3


@dataclass(frozen=True)
class Task:
    """How ``tools.crossval`` runs one downstream bundle.

    Args:
        bundle: the bundle (its name is its MLflow experiment).
        pretraining: the pre-training bundles whose checkpoints it fine-tunes -> the ``arch`` each needs (``None``:
            the bundle has one network).
        scratch_size: ``(config id, checkpoint setting)``: what sizes a scratch network like the checkpoints'
            (:func:`tools.study.scratch_method`).
        encoder_methods: ``arch`` -> the pre-training methods whose ``network_spec`` sizes its encoder.
        evaluator: the id of the evaluator ``evaluate.json`` runs.
        measures: what the evaluation reports, the first being the bundle's key metric.
        cases: the labelled cases the folds partition, from the bundle's configuration.
        classes: the class names in the per-class metric names, from the bundle's configuration; ``None``: none.
        stratified: whether the folds are stratified by class.
        counts: config expressions of the :data:`COUNTS` params.
        has_fraction: whether the bundle has a ``train_fraction`` setting.
    """

    bundle: Bundle
    pretraining: Mapping[str, str | None]
    scratch_size: tuple[str, str]
    encoder_methods: Mapping[str | None, Sequence[str]]
    evaluator: str
    measures: tuple[Measure, ...]
    cases: Callable[[ConfigParser], list[dict]]
    classes: Callable[[ConfigParser], list[str]] | None = None
    stratified: bool = True
    counts: Mapping[str, str] = field(default_factory=lambda: {"train_cases": "$len(@split[0])",
                                                              "heldout_cases": "$len(@split[1])"})
    has_fraction: bool = True


def _classification_measures(prefix: str) -> tuple[Measure, ...]:
    """The classifiers' metrics: ``<prefix>accuracy``, ``_auc``, ``_f1`` (the study's F1), ``_f1_macro``."""
    return (Measure("accuracy", f"{prefix}accuracy"), Measure("AUC", f"{prefix}auc"), Measure("F1", f"{prefix}f1"),
            Measure("macro F1", f"{prefix}f1_macro"))


def _slice_cases(parser: ConfigParser) -> list[dict]:
    datalist = slice_classification_datalist(parser.get_parsed_content("dataset_dir"),
                                             label_column=parser.get_parsed_content("label_column"))
    return [entry for split in ("training", "validation", "test") for entry in datalist[split]]


TASKS = {
    "btcv_segmentation": Task(
        bundle=Bundle("btcv_segmentation"),
        pretraining=PRETRAINING_ARCHS,
        scratch_size=("encoder_config", "encoder"),
        encoder_methods=SEGMENTATION_PRETRAINING,
        evaluator="validate#evaluator",
        measures=(Measure("Dice (%)", "val_mean_dice", "val_dice_{}", 100, 2),
                  Measure("NSD (%)", "val_mean_nsd", "val_nsd_{}", 100, 2),
                  Measure("HD95 (mm)", "val_mean_hd95", "val_hd95_{}", 1, 2)),
        cases=lambda parser: load_datalist(parser.get_parsed_content("dataset_dir")),
        classes=lambda parser: [name.removeprefix("val_dice_")
                                for name in parser.get_parsed_content("organ_dice_names")],
        stratified=False,
    ),
    "ct_classification3d": Task(
        bundle=Bundle("ct_classification3d"),
        pretraining={"mim_pretrain": "mim", "hyspark_pretrain": "hyspark", "glmae_pretrain": "vit",
                     "mae3d_pretrain": "vit"},
        scratch_size=("encoder_config", "encoder"),
        encoder_methods=CLASSIFICATION_PRETRAINING,
        evaluator="validate#evaluator",
        measures=_classification_measures("val_"),
        cases=lambda parser: classification_datalist(parser.get_parsed_content("dataset_dir"))[0],
        has_fraction=False,
    ),
    "ct_slice_classification": Task(
        bundle=Bundle("ct_slice_classification"),
        pretraining=dict.fromkeys(SLICE_PRETRAINING_BUNDLES),
        scratch_size=("network_spec#depth", "depth"),
        encoder_methods={None: SLICE_PRETRAINING},
        evaluator="test#evaluator",
        measures=_classification_measures("test_"),
        cases=_slice_cases,
        counts={"train_cases": "$len(@train_items)", "heldout_cases": "$len(@datalist['test'])"},
    ),
}
# Set by the tool for every run; not accepted as ``--key value`` overrides.
MANAGED_KEYS = ("pretrained", "seed", "fold", "num_folds", "ckpt_dir", "output_dir", "tracking_uri", "run_name")


# ------------------------------------------------------------------------------------------ inputs


def checked_task(bundle: str) -> Task:
    """The :class:`Task` of ``bundle``.

    Raises:
        ValueError: not a downstream bundle this tool runs.
    """
    if bundle not in TASKS:
        raise ValueError(f"unknown bundle {bundle!r}: tools.crossval runs {', '.join(TASKS)}")
    return TASKS[bundle]


def checked_num_folds(num_folds) -> int:
    """``num_folds`` as an int.

    Raises:
        ValueError: not a whole number of at least 2.
    """
    if isinstance(num_folds, bool) or not isinstance(num_folds, (int, float)) or num_folds != int(num_folds) \
            or num_folds < 2:
        raise ValueError(f"num_folds must be a whole number of at least 2, got {num_folds!r}")
    return int(num_folds)


def study_methods(task: Task, checkpoints, no_scratch: bool = False, overrides: Collection[str] = ()) -> list[Method]:
    """Scratch (one per arch of the checkpoints, the bundle's own network without any) unless ``no_scratch``, then
    one method per ``name=path`` checkpoint in the order given, ``name`` a pre-training bundle of the task.

    Raises:
        ValueError: no method at all; a bad entry (see :func:`tools.study.checkpoint_paths`); ``--arch`` given with
            checkpoints (each fine-tunes the arch of its pre-training bundle).
        FileNotFoundError: a checkpoint file does not exist.
    """
    paths = checkpoint_paths(checkpoints, task.pretraining)
    pretrained = [Method(name, path, task.pretraining[name]) for name, path in paths.items()]
    if pretrained and "arch" in overrides:
        raise ValueError("--arch is set by the checkpoints (each fine-tunes the arch of its pre-training bundle)")
    config_id, setting = task.scratch_size
    scratch = [
        scratch_method(arch, pretrained, config_id, task.encoder_methods.get(arch, ()), setting)
        for arch in dict.fromkeys(method.arch for method in pretrained) or (None,)
    ]
    methods = ([] if no_scratch else scratch) + pretrained
    if not methods:
        raise ValueError("nothing to cross-validate: give --checkpoints name=path, or drop --no_scratch")
    return methods


def check_folds(task: Task, parser: ConfigParser, num_folds: int) -> None:
    """Check that the data set has enough cases for ``num_folds`` folds (of every class, for stratified folds).

    Raises:
        DatalistError: more folds than cases, or than cases of the smallest class.
    """
    cases = task.cases(parser)
    if num_folds > len(cases):
        raise DatalistError(f"{num_folds} folds need at least {num_folds} cases, but "
                            f"{parser.get_parsed_content('dataset_dir')} has {len(cases)}")
    if task.stratified:
        check_stratified_folds(cases, num_folds)


# ------------------------------------------------------------------------------------------ training


def run_fold(run: PlannedRun, task: Task, files: Sequence[str], output_dir: Path, overrides: Mapping,
             store: Store) -> None:
    """Train one fold in this process, evaluate its best model on the held-out part with ``evaluate.json``, and add
    the evaluation's metrics to the fold's MLflow run (:data:`EVALUATED` + name).

    Raises:
        LookupError: the evaluation did not compute the task's key metric.
    """
    run_dir = str(output_dir / "runs" / run.folder)
    params = run_params(run, output_dir)
    if not task.has_fraction:
        params.pop("train_fraction")
    counts = {f"hyper_parameters#{name}": expression for name, expression in task.counts.items()}
    placement = {"ckpt_dir": run_dir, "output_dir": run_dir, "tracking_uri": tracking_uri(output_dir)}
    task.bundle.fine_tune(files, {**overrides, **params, **counts, **placement})
    held_out = {key: params[key] for key in ("seed", "fold", "num_folds", "train_fraction") if key in params}
    metrics = task.bundle.evaluate(files, {**overrides, **held_out, **placement, "experiment_tracking": False},
                                   task.evaluator)
    if task.measures[0].average not in metrics:
        raise LookupError(f"{run.name}: {task.bundle.name}'s evaluation logged no {task.measures[0].average} "
                          f"(it logged {', '.join(metrics) or 'nothing'})")
    store.log_metrics(run, {EVALUATED + name: value for name, value in metrics.items()})


# ------------------------------------------------------------------------------------------ results


def expected_metrics(task: Task, classes: Sequence[str]) -> dict[Measure, list[str]]:
    """Per measure: its average, then its per-class metric of each class."""
    return {
        measure: [measure.average] + ([measure.per_class.format(name) for name in classes] if measure.per_class else [])
        for measure in task.measures
    }


def logged_metrics(store: Store, runs: Sequence[PlannedRun], wanted: Sequence[str]) -> list[str]:
    """The metrics of ``wanted`` that the MLflow runs of all ``runs`` hold as :data:`EVALUATED` + name, in order;
    the first of ``wanted`` (the key metric) always."""
    found = [run.data.metrics for key, run in store.completed().items() if key in {run.key for run in runs}]
    return wanted[:1] + [name for name in wanted[1:] if all(EVALUATED + name in metrics for metrics in found)]


def missing_metrics(task: Task, classes: Sequence[str], logged: Sequence[str]) -> list[str]:
    """The expected metrics not ``logged``; a measure's per-class metrics as one name with ``<class>`` where none is
    logged (the bundle's evaluation does not compute them)."""
    missing = []
    for measure, (average, *per_class) in expected_metrics(task, classes).items():
        missing += [average] if average not in logged else []
        absent = [name for name in per_class if name not in logged]
        missing += [measure.per_class.format("<class>")] if absent and absent == per_class else absent
    return missing


def class_groups(measure: Measure, classes: Sequence[str], logged: Sequence[str]) -> dict[str, str]:
    """``{class name: metric}`` of a measure's logged per-class metrics, then ``{"mean": average}`` if logged; empty
    for a measure without per-class values."""
    if measure.per_class is None:
        return {}
    groups = {name.replace("_", " "): measure.per_class.format(name) for name in classes} | {MEAN: measure.average}
    return {group: metric for group, metric in groups.items() if metric in logged}


def markdown_report(task: Task, rows: Sequence[Mapping], classes: Sequence[str], logged: Sequence[str],
                    num_folds: int, seeds: int) -> str:
    """Mean ± std per method: the averages of every measure, then, per measure with per-class values, a table of
    the classes; a note names the metrics the evaluation did not compute."""
    spread = f"{num_folds} folds" + (f" x {seeds} seeds" if seeds > 1 else "")
    measures = [measure for measure in task.measures if measure.average in logged]
    overall = markdown_table(
        ["method", *(measure.label for measure in measures)],
        [[row["method"], *(metric_cell(row, m.average, m.scale, m.digits) for m in measures)] for row in rows],
    )
    sections = [
        f"Cross-validation of {task.bundle.name}: mean ± std over {spread} of each fold's best model evaluated on "
        f"the fold's held-out part (`evaluate.json`).\n\n{overall}"
    ]
    for measure in task.measures:
        groups = class_groups(measure, classes, logged)
        if set(groups) - {MEAN}:  # a table of the average alone would repeat the first
            lines = [[row["method"], *(metric_cell(row, metric, measure.scale, measure.digits)
                                       for metric in groups.values())] for row in rows]
            sections.append(f"{measure.label} per class.\n\n{markdown_table(['method', *groups], lines)}")
    missing = missing_metrics(task, classes, logged)
    if missing:
        sections.append(f"Not computed by {task.bundle.name}'s evaluation, so not reported: {', '.join(missing)}.")
    return "\n\n".join(sections) + "\n"


def plot(task: Task, rows: Sequence[Mapping], classes: Sequence[str], logged: Sequence[str], path: Path) -> None:
    """Per-method bars of the mean ± std: one panel per measure with per-class values (each class and the mean),
    and one panel of the averages of the measures without."""
    panels = {measure.label: class_groups(measure, classes, logged) for measure in task.measures}
    panels = {label: groups for label, groups in panels.items() if groups}
    overall = {m.label: m.average for m in task.measures if m.per_class is None and m.average in logged}
    panels |= {"value": overall} if overall else {}
    scaled = []
    for row in rows:  # each measure in its unit (a Dice in %)
        scaled.append(dict(row))
        for measure, names in expected_metrics(task, classes).items():
            for name in set(names) & set(logged):
                scaled[-1] |= {name: measure.scale * row[name], f"{name}_std": measure.scale * row[f"{name}_std"]}
    plot_bars(scaled, panels, path, title=f"Cross-validation of {task.bundle.name} (mean ± std over the folds)")


# ------------------------------------------------------------------------------------------ the tool


def crossval(
    bundle: str,
    checkpoints=(),
    no_scratch: bool = False,
    num_folds=5,
    seeds=(0,),
    output_dir: str | None = None,
    configs=(),
    resume: bool = False,
    **overrides,
) -> dict[str, str]:
    """Cross-validate ``bundle`` per method: train every fold, evaluate each fold's best model on its held-out part,
    then tabulate and plot mean ± std over the folds.

    Args:
        bundle: ``btcv_segmentation``, ``ct_classification3d`` or ``ct_slice_classification``.
        checkpoints: ``name=path`` entries (a list, or one string with commas), ``name`` a pre-training bundle the
            downstream bundle fine-tunes (``hyspark_pretrain``, ``mim_pretrain``, ``spark2d_pretrain`` ...).
        no_scratch: leave out training from scratch.
        num_folds: k, at least 2, at most the cases (of the smallest class, for the classifiers).
        seeds: seeds of the folds and the runs; each seed is another partition into folds.
        output_dir: the study's folder: MLflow store, one folder per run, tables and plot (default: the bundle's
            git-ignored ``eval/crossval``).
        configs: config files merged over the bundle's ``train.json`` (paths, or names in its ``configs/``).
        resume: continue the study in a non-empty ``output_dir`` (with the same arguments), skipping the folds
            FINISHED and evaluated in its MLflow store and running the others, an interrupted one from its start.
        overrides: further bundle overrides for every run (``dataset_dir``, ``max_epochs`` ...).

    Returns:
        The paths of the CSV, Markdown and PNG files written.

    Raises:
        ValueError, FileNotFoundError, FileExistsError: bad inputs, before any training (a
            :class:`~common.data.DatalistError` for more folds than cases).
    """
    task = checked_task(bundle)
    num_folds = checked_num_folds(num_folds)
    methods = study_methods(task, checkpoints, no_scratch, overrides)
    seeds = checked_seeds(seeds)
    files = task.bundle.config_files(configs)
    managed = MANAGED_KEYS + (("train_fraction",) if task.has_fraction else ())
    parser = task.bundle.parser(files, overrides, managed)
    check_folds(task, parser, num_folds)
    classes = task.classes(parser) if task.classes else []
    output = prepared_output_dir(output_dir or task.bundle.root / "eval" / "crossval", resume)
    store = Store(tracking_uri(output), task.bundle.name, str(output))
    runs = plan_runs(methods, (1.0,), seeds, num_folds)
    done = store.completed([EVALUATED + task.measures[0].average]) if resume else {}
    train_runs(runs, partial(run_fold, task=task, files=files, output_dir=output, overrides=overrides, store=store),
               done)

    wanted = [name for names in expected_metrics(task, classes).values() for name in names]
    logged = logged_metrics(store, runs, wanted)
    records = [{key: value for key, value in record.items() if key != "fraction"}
               for record in store.records(runs, logged, COUNTS, prefix=EVALUATED)]
    rows = aggregate(records, logged, by=("method",), count="runs")
    paths = {suffix: output / f"crossval.{suffix}" for suffix in ("csv", "md", "png")}
    write_csv(records, paths["csv"])
    paths["md"].write_text(markdown_report(task, rows, classes, logged, num_folds, len(seeds)))
    plot(task, rows, classes, logged, paths["png"])
    return {suffix: str(path) for suffix, path in paths.items()}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    fire.Fire(crossval)
