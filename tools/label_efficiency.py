"""Label-efficiency study: fine-tune ``btcv_segmentation`` on growing fractions of the labelled cases, from
pre-trained checkpoints and from scratch, and compare the validation Dice (GL-MAE, Table 1 / Fig. 4).

::

    # MiM against training from scratch, 25 / 50 / 100 % of the training cases, three seeds
    python -m tools.label_efficiency --checkpoints mim_pretrain=bundles/mim_pretrain/models/model.pt \\
        --seeds 0,1,2 --dataset_dir /data/btcv/dataset_0.json --max_epochs 1250 --val_interval 20 \\
        --output_dir studies/mim_btcv

    # several checkpoints (names are pre-training bundles: common.networks.PRETRAINING_ARCHS), one scratch arch
    python -m tools.label_efficiency \\
        --checkpoints mim_pretrain=bundles/mim_pretrain/models/model.pt,hyspark_pretrain=bundles/hyspark_pretrain/models/model.pt \\
        --scratch_archs swin_unetr --fractions 0.1,0.25,0.5,1.0

    # a quick look on the demo phantoms (extra config files merge over train.json, then --key value overrides)
    python -m tools.label_efficiency --scratch_archs mim --configs smoke.json --roi_size "[32,32,32]" \
        --output_dir /tmp/label_efficiency_demo

    # an interrupted study: runs FINISHED in its MLflow store are skipped, the others trained (again)
    python -m tools.label_efficiency --checkpoints mim_pretrain=bundles/mim_pretrain/models/model.pt --resume

Every method is trained on the same training subsets: for one seed, ``common.data.training_split`` draws
the same nested subsets (the 25 % subset is inside the 50 % one) whatever the network. Each fine-tuning
runs in this process, with its checkpoints in ``<output_dir>/runs/<method>_<fraction>_seed<seed>/`` and
its MLflow run in the study's one store (``<output_dir>/mlruns.db``, or ``$MLFLOW_TRACKING_URI``); its
params carry ``method``, ``study`` (the output folder) and ``train_cases`` besides the bundle's own.
The results are read back from MLflow: the last logged ``val_mean_dice`` and ``val_dice_<organ>`` of
every run, averaged over seeds (std with ``ddof=1``), and written to the output folder:

- ``label_efficiency.csv``: one row per method and fraction, every metric's mean and std, the seed count;
- ``label_efficiency.md``: Markdown tables of the average Dice (%) per method and fraction, and per organ
  at the largest fraction;
- ``label_efficiency.png``: the average Dice against the fraction of training cases, one line per method.

Every other ``--key value`` is a bundle override for all runs, so help is ``python -m tools.label_efficiency
-- --help`` (a bare ``--help`` would be taken for one). The output folder is
``bundles/btcv_segmentation/eval/label_efficiency`` unless ``--output_dir`` names
another; an existing, non-empty one is never written into unless ``--resume`` is given.
"""

from __future__ import annotations

import csv
import logging
import logging.config
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import fire
import matplotlib
import numpy as np
from mlflow import MlflowClient
from monai.bundle import ConfigParser, ConfigWorkflow

from common.engine import tracking_uri
from common.networks import PRETRAINING_ARCHS, SEGMENTATION_ARCHS

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless back-end)
from matplotlib.transforms import ScaledTranslation  # noqa: E402

logger = logging.getLogger(__name__)

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "btcv_segmentation"
CONFIGS = BUNDLE / "configs"
EXPERIMENT = "btcv_segmentation"  # the bundle's ``bundle_name``: its MLflow experiment
AVERAGE = "val_mean_dice"
# Set by the study for every run; not accepted as ``--key value`` overrides.
MANAGED_KEYS = ("arch", "pretrained", "train_fraction", "seed", "ckpt_dir", "output_dir", "run_name")


@dataclass(frozen=True)
class Method:
    """One row of the study: a network, initialised from ``pretrained`` or (``None``) at random."""

    label: str
    arch: str
    pretrained: str | None = None


@dataclass(frozen=True)
class PlannedRun:
    """One fine-tuning of the study."""

    method: Method
    fraction: float
    seed: int

    @property
    def key(self) -> tuple[str, float, int]:
        return self.method.label, self.fraction, self.seed

    @property
    def name(self) -> str:
        """The MLflow run name."""
        return f"{self.method.label} | {100 * self.fraction:g} % | seed {self.seed}"

    @property
    def folder(self) -> str:
        """The run's sub-folder of ``<output_dir>/runs``."""
        return re.sub(r"[^A-Za-z0-9.]+", "_", f"{self.method.label} {self.fraction:g} seed{self.seed}").strip("_")


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


def checkpoint_methods(checkpoints) -> list[Method]:
    """Methods of ``name=path`` entries, ``name`` a pre-training bundle (a key of ``PRETRAINING_ARCHS``).

    Raises:
        ValueError: an entry without ``=``, an unknown name, or a name given twice.
        FileNotFoundError: a checkpoint file does not exist.
    """
    methods = []
    for entry in as_tuple(checkpoints):
        name, separator, path = str(entry).partition("=")
        if not separator or not path:
            raise ValueError(f"checkpoint {entry!r} is not name=path, e.g. mim_pretrain=path/to/model.pt")
        if name not in PRETRAINING_ARCHS:
            known = ", ".join(sorted(PRETRAINING_ARCHS))
            raise ValueError(f"unknown pre-training method {name!r} in {entry!r}; known: {known}")
        if any(method.label == name for method in methods):
            raise ValueError(f"checkpoint {name!r} is given twice")
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint {path} of {name!r} does not exist")
        methods.append(Method(name, PRETRAINING_ARCHS[name], str(Path(path).resolve())))
    return methods


def scratch_methods(scratch_archs, pretrained: Sequence[Method]) -> list[Method]:
    """Methods trained from scratch: ``scratch_archs``, by default the archs of the ``pretrained`` methods.

    Raises:
        ValueError: an arch ``btcv_segmentation`` does not know.
    """
    archs = as_tuple(scratch_archs) if scratch_archs is not None else tuple(method.arch for method in pretrained)
    unknown = [arch for arch in archs if arch not in SEGMENTATION_ARCHS]
    if unknown:
        raise ValueError(f"unknown scratch arch {unknown[0]!r}; choose from {', '.join(SEGMENTATION_ARCHS)}")
    return [Method(f"scratch ({arch})", arch) for arch in dict.fromkeys(archs)]


def study_methods(checkpoints, scratch_archs) -> list[Method]:
    """Scratch methods first, then the pre-trained ones in the order given.

    Raises:
        ValueError: no method at all, or a bad entry (see :func:`checkpoint_methods`, :func:`scratch_methods`).
    """
    pretrained = checkpoint_methods(checkpoints)
    methods = scratch_methods(scratch_archs, pretrained) + pretrained
    if not methods:
        raise ValueError("nothing to compare: give --checkpoints name=path and/or --scratch_archs")
    return methods


def checked_fractions(fractions) -> tuple[float, ...]:
    """The training fractions, sorted and deduplicated.

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


def plan_runs(methods: Sequence[Method], fractions: Sequence[float], seeds: Sequence[int]) -> list[PlannedRun]:
    """Every method at every fraction with every seed, method by method."""
    return [PlannedRun(method, fraction, seed) for method in methods for fraction in fractions for seed in seeds]


def config_files(configs) -> list[str]:
    """The bundle's ``train.json`` then the extra config files, each a path or a file of the bundle's ``configs/``.

    Raises:
        FileNotFoundError: a config file is neither.
    """
    files = [CONFIGS / "train.json"]
    for config in as_tuple(configs):
        candidates = [Path(config), CONFIGS / str(config)]
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"config file {config} does not exist (nor in {CONFIGS})")
        files.append(found)
    return [str(path.resolve()) for path in files]


def bundle_parser(files: Sequence[str], overrides: Mapping) -> ConfigParser:
    """The bundle's configuration as one run will see it, checked before any training.

    Raises:
        ValueError: an override the study sets itself, an override naming no key of the configuration
            (a ``#`` id may add a key to an existing section), or ``max_epochs`` < ``val_interval``
            (no validation, hence no Dice to report).
    """
    managed = sorted(set(overrides) & set(MANAGED_KEYS))
    if managed:
        raise ValueError(f"--{managed[0]} is set by the study for every run (as are {', '.join(MANAGED_KEYS)})")
    parser = ConfigParser()
    parser.read_config(list(files))
    parser.read_meta(str(CONFIGS / "metadata.json"))
    for key in overrides:
        parent, _, _ = key.rpartition("#")
        if key not in parser and not (parent and parent in parser):
            raise ValueError(f"--{key} is no key of the btcv_segmentation configuration {list(files)}")
    parser.update(dict(overrides))
    max_epochs, val_interval = parser.get_parsed_content("max_epochs"), parser.get_parsed_content("val_interval")
    if max_epochs < val_interval:
        raise ValueError(f"max_epochs {max_epochs} < val_interval {val_interval}: the runs would never validate")
    return parser


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


# ------------------------------------------------------------------------------------------ training


def fine_tune(run: PlannedRun, files: Sequence[str], output_dir: Path, overrides: Mapping) -> None:
    """Train ``btcv_segmentation`` once, in this process, logging to the study's MLflow store."""
    workflow = ConfigWorkflow(
        config_file=list(files),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,  # the command line configures logging once, not once per run
        workflow_type="train",
        **overrides,
        arch=run.method.arch,
        pretrained=run.method.pretrained,
        train_fraction=run.fraction,
        seed=run.seed,
        ckpt_dir=str(output_dir / "runs" / run.folder),
        output_dir=str(output_dir),
        run_name=run.name,
        **{
            "hyper_parameters#method": run.method.label,
            "hyper_parameters#study": str(output_dir),
            "hyper_parameters#train_cases": "$len(@split[0])",
        },
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def finished_runs(uri: str, study: str) -> dict[tuple[str, float, int], object]:
    """The study's FINISHED MLflow runs by ``(method, fraction, seed)``, the newest where there are several."""
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return {}
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
        max_results=50_000,
    )
    return {
        (run.data.params["method"], float(run.data.params["train_fraction"]), int(run.data.params["seed"])): run
        for run in runs
        if run.data.params.get("study") == study
    }


def run_study(
    runs: Sequence[PlannedRun], files: Sequence[str], output_dir: Path, overrides: Mapping, resume: bool
) -> None:
    """Fine-tune every planned run in turn; with ``resume``, skip those already FINISHED in the store."""
    done = finished_runs(tracking_uri(output_dir), str(output_dir)) if resume else {}
    for index, run in enumerate(runs, 1):
        if run.key in done:
            logger.info("[%d/%d] %s: finished earlier, skipped", index, len(runs), run.name)
            continue
        logger.info("[%d/%d] %s: fine-tuning %s", index, len(runs), run.name, run.method.arch)
        fine_tune(run, files, output_dir, overrides)


# ------------------------------------------------------------------------------------------ results


def read_records(uri: str, study: str, runs: Sequence[PlannedRun], metrics: Sequence[str]) -> list[dict]:
    """One record per planned run from its FINISHED MLflow run: method, arch, fraction, seed, ``train_cases``
    and the last logged value of each metric.

    Raises:
        LookupError: a planned run has no FINISHED MLflow run, or it logged no value of a metric.
    """
    found = finished_runs(uri, study)
    records = []
    for run in runs:
        if run.key not in found:
            raise LookupError(f"{run.name}: no FINISHED run of study {study} in the MLflow store {uri}")
        logged = found[run.key].data
        missing = [metric for metric in metrics if metric not in logged.metrics]
        if missing:
            raise LookupError(f"{run.name}: MLflow run logged no {missing[0]} (did it validate?)")
        record = {"method": run.method.label, "arch": run.method.arch, "fraction": run.fraction, "seed": run.seed}
        record["train_cases"] = int(logged.params["train_cases"])
        records.append(record | {metric: logged.metrics[metric] for metric in metrics})
    return records


def aggregate(records: Sequence[Mapping], metrics: Sequence[str]) -> list[dict]:
    """Mean and std (``ddof=1``; NaN for one seed) over seeds of each metric, per method and fraction.

    Args:
        records: ``{"method", "arch", "fraction", "seed", "train_cases", <metric>: value}`` per run;
            the rows keep the order in which their method and fraction first appear.
        metrics: the metric keys to average.

    Returns:
        ``{"method", "arch", "fraction", "train_cases", "seeds", <metric>, <metric>_std ...}`` per
        method and fraction (``train_cases`` depends on the fraction only, not on the seed).
    """
    groups: dict[tuple[str, float], list[Mapping]] = {}
    for record in records:
        groups.setdefault((record["method"], record["fraction"]), []).append(record)
    rows = []
    for (method, fraction), group in groups.items():
        row = {"method": method, "arch": group[0]["arch"], "fraction": fraction}
        row |= {"train_cases": group[0]["train_cases"], "seeds": len(group)}
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


def dice_cell(row: Mapping, metric: str, bold: bool = False) -> str:
    """``mean ± std`` of a Dice in %, the mean only for one seed."""
    text = f"{100 * row[metric]:.2f}"
    if row["seeds"] > 1:
        text += f" ± {100 * row[f'{metric}_std']:.2f}"
    return f"**{text}**" if bold else text


def markdown_table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """A Markdown table, the first column left-aligned and the others right-aligned."""
    rule = [":---"] + ["---:"] * (len(header) - 1)
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, rule, *lines])


def markdown_report(rows: Sequence[Mapping], organ_metrics: Sequence[str]) -> str:
    """The average Dice per method (rows) and fraction (columns), best of each column in bold; then the
    Dice per organ at the largest fraction."""
    methods = list(dict.fromkeys(row["method"] for row in rows))
    fractions = sorted({row["fraction"] for row in rows})
    cell = {(row["method"], row["fraction"]): row for row in rows}
    best = {fraction: max(cell[method, fraction][AVERAGE] for method in methods) for fraction in fractions}
    seeds = max(row["seeds"] for row in rows)
    header = ["method"] + [f"{100 * f:g} % ({cell[methods[0], f]['train_cases']} cases)" for f in fractions]
    average = [
        [method] + [dice_cell(cell[method, f], AVERAGE, cell[method, f][AVERAGE] == best[f]) for f in fractions]
        for method in methods
    ]
    largest = fractions[-1]
    organs = [metric.removeprefix("val_dice_").replace("_", " ") for metric in organ_metrics]
    per_organ = [
        [method] + [dice_cell(cell[method, largest], metric) for metric in [*organ_metrics, AVERAGE]]
        for method in methods
    ]
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "one seed"
    return (
        f"Average validation Dice (%) of btcv_segmentation against the fraction of training cases used "
        f"({spread}; best of each column in bold).\n\n"
        f"{markdown_table(header, average)}\n\n"
        f"Dice (%) per organ at {100 * largest:g} % of the training cases.\n\n"
        f"{markdown_table(['method', *organs, 'average'], per_organ)}\n"
    )


def plot(rows: Sequence[Mapping], path: Path) -> None:
    """Average Dice (%) against the fraction of training cases (%), one line per method, error bars over seeds.

    Methods are drawn a few points apart horizontally (the data stay where they are) so that their error
    bars do not hide each other.
    """
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    methods = list(dict.fromkeys(row["method"] for row in rows))
    for index, method in enumerate(methods):
        points = sorted((row for row in rows if row["method"] == method), key=lambda row: row["fraction"])
        several = all(row["seeds"] > 1 for row in points)
        bars = axes.errorbar(
            [100 * row["fraction"] for row in points],
            [100 * row[AVERAGE] for row in points],
            yerr=[100 * row[f"{AVERAGE}_std"] for row in points] if several else None,
            marker="o",
            capsize=3,
            label=method,
        )
        dodge = ScaledTranslation((index - (len(methods) - 1) / 2) * 4 / 72, 0, figure.dpi_scale_trans)
        for artist in bars.get_children():  # after autoscaling, which an offset transform would defeat
            artist.set_transform(artist.get_transform() + dodge)
    axes.set_xticks(sorted({100 * row["fraction"] for row in rows}))
    axes.set_xlim(0, 105)
    axes.set_xlabel("training cases used (%)")
    axes.set_ylabel("average validation Dice (%)")
    axes.set_title("Label efficiency on btcv_segmentation")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)


# ------------------------------------------------------------------------------------------ the tool


def label_efficiency(
    checkpoints=(),
    fractions=(0.25, 0.5, 1.0),
    seeds=(0,),
    scratch_archs=None,
    output_dir: str = str(BUNDLE / "eval" / "label_efficiency"),
    configs=(),
    resume: bool = False,
    **overrides,
) -> dict[str, str]:
    """Fine-tune ``btcv_segmentation`` per method, training fraction and seed, then tabulate and plot the Dice.

    Args:
        checkpoints: ``name=path`` entries (a list, or one string with commas), ``name`` a pre-training
            bundle of ``common.networks.PRETRAINING_ARCHS``, which also gives the arch to fine-tune.
        fractions: fractions of the training cases to fine-tune on (the bundle's ``train_fraction``), in ``(0, 1]``.
        seeds: seeds of the splits and the runs; every method sees the same splits.
        scratch_archs: archs to also train from scratch; default: the archs of ``checkpoints``; ``()`` for none.
        output_dir: the study's folder: MLflow store, one checkpoint folder per run, tables and plot
            (default: the bundle's git-ignored ``eval/label_efficiency``).
        configs: config files merged over the bundle's ``train.json`` (paths, or names in its ``configs/``).
        resume: continue the study in a non-empty ``output_dir`` (with the same arguments), skipping the runs
            FINISHED in its MLflow store and training the others, an interrupted one from its start.
        overrides: further bundle overrides for every run (``max_epochs``, ``dataset_dir``, ``roi_size`` ...).

    Returns:
        The paths of the CSV, Markdown and PNG files written.

    Raises:
        ValueError, FileNotFoundError, FileExistsError: bad inputs, before any training.
    """
    runs = plan_runs(study_methods(checkpoints, scratch_archs), checked_fractions(fractions), checked_seeds(seeds))
    files = config_files(configs)
    organ_metrics = bundle_parser(files, overrides).get_parsed_content("organ_dice_names")
    output = prepared_output_dir(output_dir, resume)
    run_study(runs, files, output, overrides, resume)
    metrics = [AVERAGE, *organ_metrics]
    rows = aggregate(read_records(tracking_uri(output), str(output), runs, metrics), metrics)
    paths = {suffix: output / f"label_efficiency.{suffix}" for suffix in ("csv", "md", "png")}
    write_csv(rows, paths["csv"])
    paths["md"].write_text(markdown_report(rows, organ_metrics))
    plot(rows, paths["png"])
    return {suffix: str(path) for suffix, path in paths.items()}


if __name__ == "__main__":
    logging.config.fileConfig(str(CONFIGS / "logging.conf"), disable_existing_loggers=False)
    fire.Fire(label_efficiency)
