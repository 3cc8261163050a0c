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

import logging
import logging.config
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import fire
from monai.bundle import ConfigParser

from common.engine import tracking_uri
from common.networks import PRETRAINING_ARCHS, SEGMENTATION_ARCHS
from common.transfer import SEGMENTATION_PRETRAINING
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
    markdown_table,
    metric_cell,
    plan_runs,
    plot_against_fraction,
    prepared_output_dir,
    run_params,
    scratch_method,
    train_runs,
    write_csv,
)

logger = logging.getLogger(__name__)

BUNDLE = Bundle("btcv_segmentation")  # its ``bundle_name``, hence its MLflow experiment
AVERAGE = "val_mean_dice"
# Set by the study for every run; not accepted as ``--key value`` overrides.
MANAGED_KEYS = ("arch", "pretrained", "train_fraction", "seed", "ckpt_dir", "output_dir", "run_name")


# ------------------------------------------------------------------------------------------ inputs


def scratch_methods(scratch_archs, pretrained: Sequence[Method]) -> list[Method]:
    """Methods trained from scratch: ``scratch_archs``, by default the archs of the ``pretrained`` methods. A
    scratch network's encoder has the sizes of the first pre-trained network of its arch whose checkpoint carries
    them (:func:`common.transfer.pretrained_encoder_setting`), so both arms compare the same network.

    Raises:
        ValueError: an arch ``btcv_segmentation`` does not know.
    """
    archs = as_tuple(scratch_archs) if scratch_archs is not None else tuple(method.arch for method in pretrained)
    unknown = [arch for arch in archs if arch not in SEGMENTATION_ARCHS]
    if unknown:
        raise ValueError(f"unknown scratch arch {unknown[0]!r}; choose from {', '.join(SEGMENTATION_ARCHS)}")
    return [
        scratch_method(arch, pretrained, "encoder_config", SEGMENTATION_PRETRAINING.get(arch, ()))
        for arch in dict.fromkeys(archs)
    ]


def study_methods(checkpoints, scratch_archs) -> list[Method]:
    """Scratch methods first, then the pre-trained ones in the order given, each fine-tuning the arch of
    its pre-training bundle (``common.networks.PRETRAINING_ARCHS``).

    Raises:
        ValueError: no method at all, or a bad entry (see :func:`tools.study.checkpoint_paths`,
            :func:`scratch_methods`).
        FileNotFoundError: a checkpoint file does not exist.
    """
    paths = checkpoint_paths(checkpoints, PRETRAINING_ARCHS)
    pretrained = [Method(name, path, PRETRAINING_ARCHS[name]) for name, path in paths.items()]
    methods = scratch_methods(scratch_archs, pretrained) + pretrained
    if not methods:
        raise ValueError("nothing to compare: give --checkpoints name=path and/or --scratch_archs")
    return methods


def bundle_parser(files: Sequence[str], overrides: Mapping) -> ConfigParser:
    """The bundle's configuration as one run will see it, checked before any training.

    Raises:
        ValueError: a bad override (see :meth:`tools.study.Bundle.parser`), or ``max_epochs`` <
            ``val_interval`` (no validation, hence no Dice to report).
    """
    parser = BUNDLE.parser(files, overrides, MANAGED_KEYS)
    max_epochs, val_interval = parser.get_parsed_content("max_epochs"), parser.get_parsed_content("val_interval")
    if max_epochs < val_interval:
        raise ValueError(f"max_epochs {max_epochs} < val_interval {val_interval}: the runs would never validate")
    return parser


# ------------------------------------------------------------------------------------------ training


def fine_tune(run: PlannedRun, files: Sequence[str], output_dir: Path, overrides: Mapping) -> None:
    """Train ``btcv_segmentation`` once, in this process, logging to the study's MLflow store."""
    BUNDLE.fine_tune(
        files,
        {
            **overrides,
            **run_params(run, output_dir),
            "ckpt_dir": str(output_dir / "runs" / run.folder),
            "output_dir": str(output_dir),
            "hyper_parameters#train_cases": "$len(@split[0])",
        },
    )


# ------------------------------------------------------------------------------------------ results


def markdown_report(rows: Sequence[Mapping], organ_metrics: Sequence[str]) -> str:
    """The average Dice per method (rows) and fraction (columns), best of each column in bold; then the
    Dice per organ at the largest fraction."""
    methods = list(dict.fromkeys(row["method"] for row in rows))
    largest = max(row["fraction"] for row in rows)
    cell = {(row["method"], row["fraction"]): row for row in rows}
    seeds = max(row["seeds"] for row in rows)
    organs = [metric.removeprefix("val_dice_").replace("_", " ") for metric in organ_metrics]
    per_organ = [
        [method] + [metric_cell(cell[method, largest], metric, 100, 2) for metric in [*organ_metrics, AVERAGE]]
        for method in methods
    ]
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "one seed"
    return (
        f"Average validation Dice (%) of btcv_segmentation against the fraction of training cases used "
        f"({spread}; best of each column in bold).\n\n"
        f"{fraction_table(rows, AVERAGE, 'train_cases', 'cases', scale=100, digits=2)}\n\n"
        f"Dice (%) per organ at {100 * largest:g} % of the training cases.\n\n"
        f"{markdown_table(['method', *organs, 'average'], per_organ)}\n"
    )


def plot(rows: Sequence[Mapping], path: Path) -> None:
    """Average Dice (%) against the fraction of training cases (%), one line per method, error bars over seeds."""
    plot_against_fraction(
        rows,
        {AVERAGE: "average validation Dice (%)"},
        path,
        title="Label efficiency on btcv_segmentation",
        xlabel="training cases used (%)",
        scale=100,
    )


# ------------------------------------------------------------------------------------------ the tool


def label_efficiency(
    checkpoints=(),
    fractions=(0.25, 0.5, 1.0),
    seeds=(0,),
    scratch_archs=None,
    output_dir: str = str(BUNDLE.root / "eval" / "label_efficiency"),
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
    files = BUNDLE.config_files(configs)
    organ_metrics = bundle_parser(files, overrides).get_parsed_content("organ_dice_names")
    output = prepared_output_dir(output_dir, resume)
    metrics = [AVERAGE, *organ_metrics]
    store = Store(tracking_uri(output), BUNDLE.name, str(output))
    done = store.completed(metrics) if resume else {}
    train_runs(runs, partial(fine_tune, files=files, output_dir=output, overrides=overrides), done)
    rows = aggregate(store.records(runs, metrics, count="train_cases"), metrics)
    paths = {suffix: output / f"label_efficiency.{suffix}" for suffix in ("csv", "md", "png")}
    write_csv(rows, paths["csv"])
    paths["md"].write_text(markdown_report(rows, organ_metrics))
    plot(rows, paths["png"])
    return {suffix: str(path) for suffix, path in paths.items()}


if __name__ == "__main__":
    logging.config.fileConfig(str(BUNDLE.configs / "logging.conf"), disable_existing_loggers=False)
    fire.Fire(label_efficiency)
