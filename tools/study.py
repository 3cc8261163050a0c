"""Fine-tuning studies: a downstream bundle trained in this process once per method, training fraction, seed and,
for a cross-validation, fold, every run logged to one MLflow store, read back and summarised as CSV, Markdown tables
and plots.

The machinery shared by ``tools.label_efficiency`` (GL-MAE, Table 1 / Fig. 4), ``tools.reduction`` (Wolf et al.
2023, Table 3 / Fig. 5) and ``tools.crossval`` (HySparK Sec. 3.2; Wolf et al., "Brain"). A study is identified in
its store by the MLflow params ``study`` (its output folder) and ``method``, which every run carries besides the
bundle's own settings (``train_fraction``, ``seed``, ``fold``, ``num_folds`` among them).
"""

from __future__ import annotations

import csv
import logging
import math
import numbers
import re
import time
from collections.abc import Callable, Collection, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric
from monai.bundle import ConfigParser, ConfigWorkflow
from tqdm import tqdm

from common.transfer import pretrained_encoder_setting

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless back-end)
from matplotlib.transforms import ScaledTranslation  # noqa: E402

logger = logging.getLogger(__name__)

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"

# ``(method, fraction, seed)``, and ``(method, fraction, seed, fold, num_folds)`` for a run of a cross-validation.
RunKey = tuple
# The record keys that tell repetitions apart: never a key of an aggregated row.
REPEATS = ("seed", "fold")


@dataclass(frozen=True)
class Method:
    """One row of a study: a network initialised from ``pretrained`` or (``None``) at random.

    Args:
        label: the method's name in tables, plots and the MLflow param ``method``.
        pretrained: the checkpoint to fine-tune from, ``None`` to train from scratch.
        arch: the bundle's ``arch`` override; ``None`` for a bundle with a single network.
        settings: config ids -> values for this method's runs, e.g. a scratch network's encoder sizes: those of
            the pre-trained networks it is compared with, whose checkpoints size theirs.
    """

    label: str
    pretrained: str | None = None
    arch: str | None = None
    settings: Mapping = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedRun:
    """One fine-tuning of a study: ``method`` on ``fraction`` of the training cases with ``seed``; in a
    cross-validation, with fold ``fold`` of ``num_folds`` held out (the bundle's ``fold`` and ``num_folds``)."""

    method: Method
    fraction: float
    seed: int
    fold: int | None = None
    num_folds: int | None = None

    @property
    def key(self) -> RunKey:
        """What finds the run in the store (:meth:`Store.completed`)."""
        folds = (self.fold, self.num_folds) if self.fold is not None else ()
        return self.method.label, self.fraction, self.seed, *folds

    @property
    def name(self) -> str:
        """The MLflow run name."""
        fold = f" | fold {self.fold + 1}/{self.num_folds}" if self.fold is not None else ""
        return f"{self.method.label} | {100 * self.fraction:g} % | seed {self.seed}{fold}"

    @property
    def folder(self) -> str:
        """The run's sub-folder of ``<output_dir>/runs``."""
        fold = f" fold{self.fold}" if self.fold is not None else ""
        name = f"{self.method.label} {self.fraction:g} seed{self.seed}{fold}"
        return re.sub(r"[^A-Za-z0-9.]+", "_", name).strip("_")


def plan_runs(
    methods: Sequence[Method], fractions: Sequence[float], seeds: Sequence[int], num_folds: int | None = None
) -> list[PlannedRun]:
    """Every method at every fraction with every seed and, with ``num_folds``, every fold ``0 .. num_folds - 1``:
    method by method, then fraction, seed and fold, fractions and seeds in the order given."""
    folds = range(num_folds) if num_folds is not None else (None,)
    return [
        PlannedRun(method, fraction, seed, fold, num_folds if fold is not None else None)
        for method in methods
        for fraction in fractions
        for seed in seeds
        for fold in folds
    ]


# ------------------------------------------------------------------------------------------ inputs


def as_tuple(value) -> tuple:
    """A command-line value as a tuple: fire gives a scalar, a tuple or a list; a string may hold commas."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if isinstance(value, Iterable):
        return tuple(value)
    return (value,)


def checkpoint_paths(checkpoints, known: Collection[str]) -> dict[str, str]:
    """``name=path`` entries as ``{name: absolute path}``, in the order given, ``name`` one of ``known``.

    Raises:
        ValueError: an entry without ``=``, an unknown name, or a name given twice.
        FileNotFoundError: a checkpoint file does not exist.
    """
    paths: dict[str, str] = {}
    for entry in as_tuple(checkpoints):
        name, separator, path = str(entry).partition("=")
        if not separator or not path:
            raise ValueError(f"checkpoint {entry!r} is not name=path, e.g. {min(known)}=path/to/model.pt")
        if name not in known:
            raise ValueError(f"unknown pre-training method {name!r} in {entry!r}; known: {', '.join(sorted(known))}")
        if name in paths:
            raise ValueError(f"checkpoint {name!r} is given twice")
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint {path} of {name!r} does not exist")
        paths[name] = str(Path(path).resolve())
    return paths


def checked_fractions(fractions) -> tuple[float, ...]:
    """The training fractions, sorted (smallest first) and deduplicated.

    Raises:
        ValueError: none given, or one outside ``(0, 1]``.
    """
    values = sorted({float(fraction) for fraction in as_tuple(fractions)})
    if not values:
        raise ValueError("give at least one training fraction")
    outside = [value for value in values if not 0.0 < value <= 1.0]
    if outside:
        raise ValueError(f"training fractions must be in (0, 1], got {outside[0]}")
    return tuple(values)


def checked_seeds(seeds) -> tuple[int, ...]:
    """The seeds, deduplicated in the order given.

    Raises:
        ValueError: none given, or one that is not a whole number.
    """
    values = as_tuple(seeds)
    if not values or any(float(seed) != int(float(seed)) for seed in values):
        raise ValueError(f"seeds must be one or more whole numbers, got {seeds!r}")
    return tuple(dict.fromkeys(int(float(seed)) for seed in values))


def prepared_output_dir(output_dir: str | Path, resume: bool) -> Path:
    """The study's output folder, absolute and created.

    Raises:
        FileExistsError: it exists and is not empty, and ``resume`` is not set.
    """
    path = Path(output_dir).resolve()
    if path.is_dir() and any(path.iterdir()) and not resume:
        raise FileExistsError(f"{path} is not empty: pass --resume to continue its study, or another --output_dir")
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------------ the bundle


@dataclass(frozen=True)
class Bundle:
    """A downstream bundle of ``bundles/`` that a study fine-tunes; ``name`` is also its MLflow experiment."""

    name: str

    @property
    def root(self) -> Path:
        return BUNDLES / self.name

    @property
    def configs(self) -> Path:
        return self.root / "configs"

    def config_files(self, extra=()) -> list[str]:
        """``train.json`` then the ``extra`` config files, each a path or a file of the bundle's ``configs/``.

        Raises:
            FileNotFoundError: a config file is neither.
        """
        files = [self.configs / "train.json"]
        for config in as_tuple(extra):
            found = next((path for path in (Path(config), self.configs / str(config)) if path.is_file()), None)
            if found is None:
                raise FileNotFoundError(f"config file {config} does not exist (nor in {self.configs})")
            files.append(found)
        return [str(path.resolve()) for path in files]

    def parser(self, files: Sequence[str], overrides: Mapping, managed: Sequence[str]) -> ConfigParser:
        """The configuration one run will see, checked before any training.

        Args:
            files: the config files, as :meth:`config_files` gives them.
            overrides: the user's ``--key value`` overrides for every run.
            managed: the keys the study sets for every run; they must be keys of the configuration.

        Raises:
            ValueError: an override the study sets itself, a managed key the configuration lacks, or an
                override naming no key of the configuration (a ``#`` id may add a key to an existing section).
        """
        taken = sorted(set(overrides) & set(managed))
        if taken:
            raise ValueError(f"--{taken[0]} is set by the study for every run (as are {', '.join(managed)})")
        parser = ConfigParser()
        parser.read_config(list(files))
        parser.read_meta(str(self.configs / "metadata.json"))
        lacking = [key for key in managed if key not in parser]
        if lacking:
            raise ValueError(f"the {self.name} configuration {list(files)} has no {lacking[0]!r}, which a study sets")
        for key in overrides:
            parent, _, _ = key.rpartition("#")
            if key not in parser and not (parent and parent in parser):
                raise ValueError(f"--{key} is no key of the {self.name} configuration {list(files)}")
        parser.update(dict(overrides))
        return parser

    def fine_tune(self, files: Sequence[str], overrides: Mapping) -> None:
        """Train the bundle once in this process (``initialize``, ``run``, ``finalize``) with ``overrides``."""
        workflow = ConfigWorkflow(
            config_file=list(files),
            meta_file=str(self.configs / "metadata.json"),
            logging_file=False,  # the command line configures logging once, not once per run
            workflow_type="train",
            **overrides,
        )
        workflow.initialize()
        workflow.run()
        workflow.finalize()

    def evaluate(self, files: Sequence[str], overrides: Mapping, evaluator: str) -> dict[str, float]:
        """Run the bundle's ``evaluate.json`` over ``files`` once in this process with ``overrides``.

        Returns:
            The scalar metrics of the evaluator with config id ``evaluator`` (``validate#evaluator``), by name
            (a metric of several values, e.g. MONAI's per-class Dice with ``return_with_label``, gives its
            scalars under their own names).
        """
        workflow = ConfigWorkflow(
            config_file=[*files, str(self.configs / "evaluate.json")],
            meta_file=str(self.configs / "metadata.json"),
            logging_file=False,
            workflow_type="eval",
            **overrides,
        )
        workflow.initialize()
        workflow.run()
        metrics = workflow.parser.get_parsed_content(evaluator).state.metrics
        workflow.finalize()
        return {name: float(value) for name, value in metrics.items() if isinstance(value, numbers.Real)}


def scratch_settings(pretrained: Sequence[Method], config_id: str, methods: Sequence[str],
                     setting: str = "encoder") -> dict:
    """A scratch arm's ``settings``: ``{config_id: size}``, the encoder size of the first of ``pretrained`` whose
    checkpoint carries one (:func:`common.transfer.pretrained_encoder_setting` of ``methods``' ``setting``), so the
    scratch network is the pre-trained ones'; empty when none does (the bundle's own size then applies to every
    arm). Differing sizes among them are logged."""
    sizes = [pretrained_encoder_setting(m.pretrained, None, methods, setting) for m in pretrained]
    sizes = [size for size in sizes if size is not None]
    if any(size != sizes[0] for size in sizes):
        logger.warning("the pre-trained encoders differ in size (%s); the scratch network takes %s", sizes, sizes[0])
    return {config_id: sizes[0]} if sizes else {}


def scratch_method(arch: str | None, pretrained: Sequence[Method], config_id: str, methods: Sequence[str],
                   setting: str = "encoder") -> Method:
    """Training ``arch`` (``None``: the bundle's one network) from scratch, labelled ``scratch (<arch>)`` or
    ``scratch``, its encoder sized by :func:`scratch_settings` as the first of the ``pretrained`` methods of the
    same arch whose checkpoint carries a size, so both arms compare the same network."""
    same_arch = [method for method in pretrained if method.arch == arch]
    return Method(f"scratch ({arch})" if arch is not None else "scratch", arch=arch,
                  settings=scratch_settings(same_arch, config_id, methods, setting))


def run_params(run: PlannedRun, output_dir: Path) -> dict[str, object]:
    """The overrides that make one planned run of the study in ``output_dir``: initialisation, subset,
    seed, fold, run name, and the ``method`` and ``study`` params that find it again in MLflow."""
    params = {
        "pretrained": run.method.pretrained,
        "train_fraction": run.fraction,
        "seed": run.seed,
        "run_name": run.name,
        "hyper_parameters#method": run.method.label,
        "hyper_parameters#study": str(output_dir),
    }
    params |= {"fold": run.fold, "num_folds": run.num_folds} if run.fold is not None else {}
    return params | dict(run.method.settings) | ({"arch": run.method.arch} if run.method.arch is not None else {})


def train_runs(runs: Sequence[PlannedRun], fine_tune: Callable[[PlannedRun], None], done: Container[RunKey]) -> None:
    """``fine_tune`` every run in turn, skipping those whose key is ``done``, with a progress bar over the runs."""
    with tqdm(total=len(runs), desc="study", unit="run", dynamic_ncols=True) as progress:
        for index, run in enumerate(runs, 1):
            if run.key in done:
                logger.info("[%d/%d] %s: finished earlier, skipped", index, len(runs), run.name)
            else:
                logger.info("[%d/%d] %s: fine-tuning", index, len(runs), run.name)
                fine_tune(run)
            progress.update()


# ------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class Store:
    """The MLflow runs of one study: the runs of ``experiment`` in the store at ``uri`` whose param ``study``
    is ``study``."""

    uri: str
    experiment: str
    study: str

    def completed(self, metrics: Sequence[str] = ()) -> dict[RunKey, object]:
        """The study's FINISHED runs that logged every one of ``metrics``, by their :attr:`PlannedRun.key`; the
        newest where there are several. A run without a ``train_fraction`` param trained on all its training
        cases (1.0); one whose ``fold`` is ``None`` is no cross-validation run."""
        client = MlflowClient(tracking_uri=self.uri)
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            return {}
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time ASC"],
            max_results=50_000,
        )
        return {
            _run_key(run.data.params): run
            for run in runs
            if run.data.params.get("study") == self.study and all(metric in run.data.metrics for metric in metrics)
        }

    def log_metrics(self, run: PlannedRun, metrics: Mapping[str, float]) -> None:
        """Add ``metrics`` to the FINISHED MLflow run of ``run`` (say, the evaluation of the model it trained).

        Raises:
            LookupError: ``run`` has no FINISHED MLflow run.
        """
        found = self.completed()
        if run.key not in found:
            raise LookupError(f"{run.name}: no FINISHED run of study {self.study} in the MLflow store {self.uri}")
        timestamp = int(time.time() * 1000)
        MlflowClient(tracking_uri=self.uri).log_batch(
            found[run.key].info.run_id, metrics=[Metric(name, value, timestamp, 0) for name, value in metrics.items()]
        )

    def records(
        self, runs: Sequence[PlannedRun], metrics: Sequence[str], count: str | Sequence[str], prefix: str = ""
    ) -> list[dict]:
        """One record per planned run from its FINISHED MLflow run: ``method``, ``arch`` (where the method
        has one), ``fraction``, ``seed``, ``fold`` (in a cross-validation), the integer param(s) ``count`` and the
        last logged value of each metric.

        Args:
            runs: the planned runs.
            metrics: the metrics to read, each logged as ``prefix + metric`` and recorded as ``metric``.
            count: one or more integer params to record (``train_cases`` ...).
            prefix: the prefix of the metrics' MLflow names.

        Raises:
            LookupError: a planned run has no FINISHED MLflow run, or it logged no value of a metric.
        """
        found = self.completed()
        records = []
        for run in runs:
            if run.key not in found:
                raise LookupError(f"{run.name}: no FINISHED run of study {self.study} in the MLflow store {self.uri}")
            logged = found[run.key].data
            missing = [metric for metric in metrics if prefix + metric not in logged.metrics]
            if missing:
                raise LookupError(f"{run.name}: its MLflow run logged no {prefix + missing[0]}")
            record = {"method": run.method.label}
            record |= {"arch": run.method.arch} if run.method.arch is not None else {}
            record |= {"fraction": run.fraction, "seed": run.seed}
            record |= {"fold": run.fold} if run.fold is not None else {}
            record |= {name: int(logged.params[name]) for name in as_tuple(count)}
            records.append(record | {metric: logged.metrics[prefix + metric] for metric in metrics})
        return records


def _run_key(params: Mapping[str, str]) -> RunKey:
    """The :attr:`PlannedRun.key` of an MLflow run from its params."""
    key = params["method"], float(params.get("train_fraction", 1.0)), int(params["seed"])
    fold = params.get("fold", "None")
    return key if fold == "None" else (*key, int(fold), int(params["num_folds"]))


def aggregate(
    records: Sequence[Mapping], metrics: Sequence[str], by: Sequence[str] = ("method", "fraction"), count: str = "seeds"
) -> list[dict]:
    """Mean and std (``ddof=1``; NaN for one record) of each metric over the records of each group: over seeds per
    method and fraction by default; over folds and seeds per method for a cross-validation.

    Args:
        records: ``{"method", "fraction", "seed", <metric>: value ...}`` per run, with any further keys (``arch``,
            ``fold``, the training-set size); the rows keep the order in which their group first appears.
        metrics: the metric keys to average.
        by: the keys whose values make a group.
        count: the row key of the group's size.

    Returns:
        Per group: the keys whose value is the same in all its records (the ``by`` keys among them; never those
        of :data:`REPEATS`), in the order of its first record, ``count``, then ``<metric>`` and ``<metric>_std`` of
        each metric.
    """
    groups: dict[tuple, list[Mapping]] = {}
    for record in records:
        groups.setdefault(tuple(record[key] for key in by), []).append(record)
    rows = []
    for group in groups.values():
        row = {
            key: value
            for key, value in group[0].items()
            if key not in (*metrics, *REPEATS) and all(record.get(key) == value for record in group)
        }
        row[count] = len(group)
        for metric in metrics:
            values = np.array([record[metric] for record in group], dtype=float)
            row[metric] = float(values.mean())
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        rows.append(row)
    return rows


def write_csv(rows: Sequence[Mapping], path: Path) -> None:
    """One line per row, the columns of the first row."""
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def metric_cell(row: Mapping, metric: str, scale: float = 1.0, digits: int = 3, bold: bool = False) -> str:
    """``mean ± std`` of ``metric`` times ``scale``, the mean only where there is no std (one record)."""
    text = f"{scale * row[metric]:.{digits}f}"
    if not math.isnan(row[f"{metric}_std"]):
        text += f" ± {scale * row[f'{metric}_std']:.{digits}f}"
    return f"**{text}**" if bold else text


def markdown_table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """A Markdown table, the first column left-aligned and the others right-aligned."""
    rule = [":---"] + ["---:"] * (len(header) - 1)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, rule, *lines])


def fraction_table(
    rows: Sequence[Mapping],
    metric: str,
    count: str,
    unit: str,
    scale: float = 1.0,
    digits: int = 3,
    largest_first: bool = False,
) -> str:
    """A Markdown table of ``metric`` per method (rows) and training fraction (columns), best of each
    column in bold; every method has a row at every fraction.

    Args:
        rows: :func:`aggregate` rows.
        metric: the metric to show (higher is better).
        count: the row key of the training-set size, shown in the header as ``<count> <unit>``.
        unit: what ``count`` counts (``"cases"``, ``"images"``).
        scale, digits: each cell is ``scale * value`` with ``digits`` decimals (``100, 2`` for a Dice in %).
        largest_first: columns from the largest fraction down, as a reduction study reads.
    """
    methods = list(dict.fromkeys(row["method"] for row in rows))
    fractions = sorted({row["fraction"] for row in rows}, reverse=largest_first)
    cell = {(row["method"], row["fraction"]): row for row in rows}
    sizes = {row["fraction"]: row[count] for row in rows}
    best = {f: max(cell[method, f][metric] for method in methods) for f in fractions}
    header = ["method"] + [f"{100 * f:g} % ({sizes[f]} {unit})" for f in fractions]
    lines = [
        [method]
        + [metric_cell(cell[method, f], metric, scale, digits, cell[method, f][metric] == best[f]) for f in fractions]
        for method in methods
    ]
    return markdown_table(header, lines)


def plot_against_fraction(
    rows: Sequence[Mapping],
    panels: Mapping[str, str],
    path: Path,
    title: str,
    xlabel: str,
    scale: float = 1.0,
    band: bool = False,
) -> None:
    """Each metric against the training fraction (%), one panel per metric and one line per method, with
    the std over seeds (where every point has several seeds) as error bars or, with ``band``, a shaded band.

    Error bars of different methods are drawn a few points apart horizontally (the data stay where they
    are) so that they do not hide each other.

    Args:
        rows: :func:`aggregate` rows.
        panels: ``{metric: y-axis label}``, one panel each, side by side.
        path: the PNG to write.
        title: the figure's title.
        xlabel: the x-axis label.
        scale: the factor of every value (100 for a Dice in %).
        band: a shaded ± std band instead of error bars.
    """
    figure, axes_row = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.4), squeeze=False)
    methods = list(dict.fromkeys(row["method"] for row in rows))
    for axes, (metric, ylabel) in zip(axes_row[0], panels.items()):
        for index, method in enumerate(methods):
            points = sorted((row for row in rows if row["method"] == method), key=lambda row: row["fraction"])
            x = np.array([100 * row["fraction"] for row in points])
            y = np.array([scale * row[metric] for row in points])
            std = np.array([scale * row[f"{metric}_std"] for row in points])
            several = all(row["seeds"] > 1 for row in points)
            if band:
                (line,) = axes.plot(x, y, marker="o", label=method)
                if several:
                    axes.fill_between(x, y - std, y + std, color=line.get_color(), alpha=0.2, linewidth=0)
                continue
            bars = axes.errorbar(x, y, yerr=std if several else None, marker="o", capsize=3, label=method)
            dodge = ScaledTranslation((index - (len(methods) - 1) / 2) * 4 / 72, 0, figure.dpi_scale_trans)
            for artist in bars.get_children():  # after autoscaling, which an offset transform would defeat
                artist.set_transform(artist.get_transform() + dodge)
        axes.set_xticks(sorted({100 * row["fraction"] for row in rows}))
        axes.set_xlim(0, 105)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)


def plot_bars(rows: Sequence[Mapping], panels: Mapping[str, Mapping[str, str]], path: Path, title: str) -> None:
    """Grouped bars of the rows' metrics, one panel per entry of ``panels`` (stacked), one bar per row (method) in
    each group, and the std as an error bar where there is one.

    Args:
        rows: :func:`aggregate` rows, each with a ``method``.
        panels: ``{y-axis label: {group label: metric}}``, e.g. ``{"Dice": {"spleen": "val_dice_spleen", ...}}``.
        path: the PNG to write.
        title: the figure's title.
    """
    widest = max(len(groups) for groups in panels.values())
    figure, axes_column = plt.subplots(
        len(panels), 1, figsize=(max(6.4, 0.45 * widest * len(rows) + 2), 3.6 * len(panels)), squeeze=False
    )
    width = 0.8 / len(rows)
    for axes, (panel, groups) in zip(axes_column[:, 0], panels.items()):
        x = np.arange(len(groups))
        for index, row in enumerate(rows):
            means = np.array([row[metric] for metric in groups.values()])
            stds = np.array([row[f"{metric}_std"] for metric in groups.values()])
            axes.bar(x + (index - (len(rows) - 1) / 2) * width, means, width, label=row["method"],
                     yerr=None if np.isnan(stds).all() else stds, capsize=3)
        crowded = len(groups) > 6
        axes.set_xticks(x, list(groups), rotation=30 if crowded else 0, ha="right" if crowded else "center")
        axes.set_ylabel(panel)
        axes.grid(True, axis="y", alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)
