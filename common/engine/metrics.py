"""Segmentation metrics as the papers report them, per case and per class, in millimetres, under regular names.

The papers report the Dice similarity coefficient (HySparK Sec. 3.2; MiM Sec. IV-A "Evaluation metrics"), the
normalised surface distance / surface Dice (NSD: MiM Sec. IV-A; GL-MAE Table 2) and the 95th percentile Hausdorff
distance (HD95: GL-MAE Table 2, "Hausdorff Distance-95 calculates 95th percentile of surface distances between
ground truth and prediction point sets"). MONAI computes all three (``DiceMetric``, ``SurfaceDiceMetric``,
``HausdorffDistanceMetric(percentile=95)``); its handlers call a metric with ``(y_pred, y)`` only, so distances
would be in voxels. :class:`SurfaceDiceMM` and :class:`HausdorffDistanceMM` pass the voxel spacing of the evaluated
volumes (the ``pixdim`` they were resampled to), so tolerances and distances are in mm on any grid.

Names, for a class whose ``channel_def`` name is ``n`` (:func:`class_metric_names`; characters other than letters,
digits, ``_``, ``-`` and ``.`` become ``_``): ``val_dice_<n>``, ``val_nsd_<n>``, ``val_hd95_<n>``, and over the
classes (background excluded) ``val_mean_dice``, ``val_mean_nsd``, ``val_mean_hd95``. :class:`PerCaseMetrics` writes
them per case into one CSV and adds the per-class means over the cases to the engine's metrics, which MLflow logs.
"""

from __future__ import annotations

import csv
import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric

from common.transforms.checks import input_name

logger = logging.getLogger(__name__)

# short name -> the name of the metric whose per-case, per-class values the engine keeps (metric_details)
REPORTED = {"dice": "val_mean_dice", "nsd": "val_mean_nsd", "hd95": "val_mean_hd95"}


def class_metric_names(channel_def: Mapping[str, str], metric: str) -> list[str]:
    """``val_<metric>_<class name>`` of each class of ``channel_def`` but the background (index 0), in index order."""
    return [f"val_{metric}_{re.sub(r'[^0-9A-Za-z_.-]+', '_', name)}"
            for index, name in sorted(channel_def.items(), key=lambda item: int(item[0])) if int(index) != 0]


class _InMillimetres:
    """A MONAI distance metric computed with the voxel spacing ``spacing`` (mm), which MONAI's handlers cannot pass.

    Args:
        spacing: the voxel spacing of the evaluated volumes, one value per spatial axis.
        args, kwargs: the metric's.
    """

    def __init__(self, *args: Any, spacing: Sequence[float], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spacing = [float(value) for value in spacing]

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return super()._compute_tensor(y_pred, y, **{**kwargs, "spacing": self.spacing})


class SurfaceDiceMM(_InMillimetres, SurfaceDiceMetric):
    """MONAI's ``SurfaceDiceMetric`` (NSD; Nikolov et al. 2021) with ``class_thresholds`` in mm: the share of both
    surfaces within the tolerance of the other, ``(|S_p within tau of S_y| + |S_y within tau of S_p|) / (|S_p| +
    |S_y|)``, per case and class ``(B, C)``; ``spacing`` in mm, see :class:`_InMillimetres`."""


class HausdorffDistanceMM(_InMillimetres, HausdorffDistanceMetric):
    """MONAI's ``HausdorffDistanceMetric`` in mm: with ``percentile=95`` the HD95 of GL-MAE Table 2, the 95th
    percentile of the distances between the two surfaces, per case and class ``(B, C)``; NaN where the reference
    lacks the class, inf where only the prediction does; ``spacing`` in mm, see :class:`_InMillimetres`."""


class PerCaseMetrics:
    """After an evaluation: every case's metrics per class and their mean into one CSV, and each class's mean over
    the cases into ``engine.state.metrics`` (where MLflow and the log find them).

    The CSV ``<save_dir>/<filename>`` has a header ``case, val_dice_<n> ..., val_mean_dice, val_nsd_<n> ...,
    val_mean_nsd, val_hd95_<n> ..., val_mean_hd95`` (one group per metric of ``metrics``, the classes in index
    order, the mean over the classes last, NaN classes left out of it) and one row per case, named by its image file
    (a DICOM series by its UID and folder). The metrics must keep their per-case values (MONAI's metric handlers do:
    ``save_details``, ``engine.state.metric_details``).

    Args:
        save_dir: the folder of the CSV (created).
        channel_def: the task's labels, output index -> name.
        metrics: short name -> the engine's metric holding the per-case values, e.g. :data:`REPORTED`.
        class_means: the short names whose per-class means go into ``engine.state.metrics`` as scalars
            ``val_<short name>_<n>`` (so MLflow and a caller reading the state see the same names); Dice's are
            already there when the evaluator computes MONAI's ``MeanDice(reduction="mean_batch",
            return_with_label=...)``.
        filename: the CSV's name.
    """

    def __init__(
        self,
        save_dir: str | Path,
        channel_def: Mapping[str, str],
        metrics: Mapping[str, str] = REPORTED,
        class_means: Sequence[str] = ("nsd", "hd95"),
        filename: str = "per_case.csv",
    ) -> None:
        self.path = Path(save_dir) / filename
        self.channel_def = dict(channel_def)
        self.metrics = dict(metrics)
        self.class_means = list(class_means)
        self.cases: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _start(self, engine: Engine) -> None:
        self.cases = []

    def _collect(self, engine: Engine) -> None:
        self.cases.extend(input_name(item["image"], "image") for item in engine.state.batch)

    def __call__(self, engine: Engine) -> None:
        columns, values = [], []
        for short, metric in self.metrics.items():
            per_case = np.asarray(torch.as_tensor(engine.state.metric_details[metric]).float().cpu(), dtype=float)
            names = class_metric_names(self.channel_def, short)
            with warnings.catch_warnings():  # a class absent from every case has a NaN mean, as it should
                warnings.simplefilter("ignore", RuntimeWarning)
                means = np.nanmean(per_case, axis=1, keepdims=True)
                if short in self.class_means:
                    engine.state.metrics.update(zip(names, np.nanmean(per_case, 0).tolist()))
            columns += [*names, metric]
            values.append(np.concatenate([per_case, means], axis=1))
        cases = self.cases
        if idist.get_world_size() > 1:  # MONAI gathers the per-case values rank by rank: the names likewise
            cases = [name for names in idist.all_gather("\n".join(self.cases)) for name in names.split("\n") if name]
        if len(cases) != len(values[0]):
            raise RuntimeError(f"{len(values[0])} per-case values but {len(cases)} case names; cannot write {self.path}")
        if idist.get_rank() > 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["case", *columns])
            for case, row in zip(cases, np.concatenate(values, axis=1).tolist()):
                writer.writerow([case, *(f"{value:.6g}" for value in row)])
        logger.info("per-case metrics of %d cases: %s", len(cases), self.path)

