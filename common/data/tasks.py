"""Segmentation tasks: what a data set holds (its labels, its image channels) and how a bundle prepares it (spacing,
crop size, intensity), from the data set's ``dataset.json`` and a named preset.

A segmentation bundle keeps its presets in one ``tasks`` table of its ``train.json`` and resolves the one ``task``
names against the data set (:func:`task_settings`), as it resolves its ``recipe`` (how to train, an independent
setting; :mod:`common.recipes`)::

    "task": "auto",
    "tasks": {"auto": {"labels": null, "modality": null, "window": "abdomen", "pixdim": [1.5, 1.5, 1.5], ...},
              "msd_spleen": {"labels": {"0": "background", "1": "spleen"}, "modality": {"0": "CT"}, ...}, ...},
    "task_settings": "$common.data.task_settings(@tasks, @task, @dataset_dir, <the bundle's declared labels>)",
    "channel_def": "$@task_settings['channel_def']",

Each preset sets ``labels`` (output channel index -> name; ``null``: the data set's; ``"declared"``: the labels the
bundle's ``metadata.json`` declares), ``modality`` (input channel index -> name; ``null``: the data set's),
``window`` (the CT window of CT channels), ``pixdim``, ``roi_size``, ``max_epochs`` (``null``: the recipe's) and
``source`` (where its values come from).

The data set's ``dataset.json`` is read in both formats:

- MSD / nnU-Net v1: ``"labels": {"0": "background", "1": "spleen"}`` (index -> name), ``"modality": {"0": "CT"}``;
- nnU-Net v2: ``"labels": {"background": 0, "spleen": 1}`` (name -> index), ``"channel_names": {"0": "CT"}``.

Labels must number background 0 and the classes 1, 2, ... without gaps (the network has one output per index);
nnU-Net v2 regions (a label naming several indices) are not supported. The intensity follows the channels, as in
nnU-Net v2 (``nnunetv2/preprocessing/normalization/map_channel_name_to_normalization.py``: a channel named ``CT``,
in any case, gets CT normalisation, any other the z-score): CT channels take the preset's HU ``window``, all others
(MRI) the per-channel z-score over the non-zero voxels (``"zscore"``); a data set mixing both is refused.

``auto`` trusts the data set: its labels and channels where its ``dataset.json`` lists them, else the bundle's
declared labels and one CT channel. A named preset is a claim about the data: where the data set lists labels or
channels too, they must be the preset's indices and kinds (CT or not), or the run stops naming both tables; the
preset's label names are used (so BTCV's ``dataset_0.json``, which abbreviates ``rkid``, ``lkid`` ..., reports the
organs' full names under ``btcv``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from common.data.datalist import absolute_path, msd_json_path, read_dataset_json
from common.data.errors import DatalistError
from common.recipes import recipe_settings

logger = logging.getLogger(__name__)

AUTO = "auto"
# A preset's "labels": the labels the bundle's metadata.json declares (its network_data_format channel_def).
DECLARED = "declared"
ZSCORE = "zscore"  # the intensity of channels that are not CT (common.transforms.ct.intensity_transform)
PRESET_KEYS = ("labels", "modality", "window", "pixdim", "roi_size", "max_epochs", "source")
DEFAULT_MODALITY = {"0": "CT"}
MAX_LOGGED_LABELS = 16


def task_settings(
    tasks: Mapping[str, Mapping[str, Any]],
    task: str,
    source: str | os.PathLike,
    declared_labels: Mapping,
) -> dict[str, Any]:
    """The settings of segmentation task ``task`` (a preset of ``tasks``) for the data set at ``source``.

    Args:
        tasks: the bundle's presets, each with the keys of :data:`PRESET_KEYS`.
        task: the preset to use; :data:`AUTO` takes what the data set lists.
        source: the data set (``dataset_dir``): a ``dataset.json``, a folder holding one, or another folder
            :func:`common.data.load_datalist` reads (which lists no labels or channels).
        declared_labels: the labels the bundle declares (``metadata.json``'s ``channel_def``): what ``"declared"``
            means, and the labels of a data set without a table under ``auto``.

    Returns:
        ``channel_def`` (output index as a string -> label name), ``modality`` (input channel index -> name),
        ``in_channels``, ``intensity`` (a CT window name or ``"zscore"``), ``pixdim``, ``roi_size``,
        ``max_epochs`` (``None``: the recipe's).

    Raises:
        ValueError: ``task`` is not in ``tasks`` (the message lists them), or the presets set other keys than
            :data:`PRESET_KEYS`.
        DatalistError: the data set's tables are malformed, contradict the named preset, or mix CT and other
            channels.
    """
    preset = _preset(tasks, task)
    json_path = msd_json_path(absolute_path(source))
    description = read_dataset_json(json_path) if json_path is not None else {}
    where = str(json_path)
    data_labels = label_table(description["labels"], where) if "labels" in description else None
    channels = description.get("channel_names", description.get("modality"))
    data_modality = modality_table(channels, where) if channels is not None else None

    labels = preset["labels"]
    if labels is None:
        channel_def = data_labels or label_table(declared_labels, "metadata.json")
    else:
        channel_def = label_table(declared_labels if labels == DECLARED else labels, f"task {task!r}")
        if data_labels is not None and list(data_labels) != list(channel_def):
            raise DatalistError(
                f"{where} lists the labels {data_labels}, task {task!r} the labels {channel_def}: choose the task of "
                f"this data set (--task NAME, one of {sorted(tasks)}), or --task {AUTO} to take the data set's"
            )
    modality = _modality(preset, task, data_modality, where)
    intensity = _intensity(modality, preset["window"], task)
    settings = {
        "channel_def": channel_def,
        "modality": modality,
        "in_channels": len(modality),
        "intensity": intensity,
        "pixdim": list(preset["pixdim"]),
        "roi_size": list(preset["roi_size"]),
        "max_epochs": preset["max_epochs"],
    }
    names = list(channel_def.values())
    listed = ", ".join(names[:MAX_LOGGED_LABELS]) + (", ..." if len(names) > MAX_LOGGED_LABELS else "")
    logger.info(
        "task %s: %d labels (%s), %d input channel(s) (%s), intensity %s",
        task, len(names), listed, len(modality), ", ".join(modality.values()), intensity,
    )
    return settings


def label_table(labels: Mapping, where: str) -> dict[str, str]:
    """A label table as ``{"0": "background", "1": name, ...}``, from MSD's index -> name or nnU-Net v2's name ->
    index.

    Raises:
        DatalistError: neither format; nnU-Net v2 regions (a name with several indices); indices other than
            0, 1, ..., N - 1 (background 0, no gaps). The message names ``where``.
    """
    if not isinstance(labels, Mapping) or not labels:
        raise DatalistError(f"the labels of {where} are {labels!r}; expected a table of index -> name")
    if all(isinstance(value, int) and not isinstance(value, bool) for value in labels.values()):
        pairs = [(value, str(name)) for name, value in labels.items()]  # nnU-Net v2: name -> index
    elif all(isinstance(value, str) for value in labels.values()):
        pairs = [(_index(key, "label", where), value) for key, value in labels.items()]  # MSD: index -> name
    else:
        raise DatalistError(
            f"the labels of {where} are {dict(labels)}: expected index -> name (MSD) or name -> index (nnU-Net v2); "
            "nnU-Net v2 regions (a label naming several indices) are not supported"
        )
    table = dict(sorted(pairs))
    if list(table) != list(range(len(table))) or len(table) != len(pairs):
        raise DatalistError(
            f"the labels of {where} have the indices {sorted(index for index, _ in pairs)}; expected background 0 and "
            f"the classes 1 .. N without gaps (one network output per index)"
        )
    return {str(index): name for index, name in table.items()}


def modality_table(channels: Mapping, where: str) -> dict[str, str]:
    """The image channels of a data set as ``{"0": name, ...}`` (MSD ``modality`` / nnU-Net v2 ``channel_names``).

    Raises:
        DatalistError: not a table of index -> name with the indices 0 .. C - 1; the message names ``where``.
    """
    if not isinstance(channels, Mapping) or not channels or not all(isinstance(v, str) for v in channels.values()):
        raise DatalistError(f"the channels of {where} are {channels!r}; expected a table of index -> name")
    table = dict(sorted((_index(key, "channel", where), name) for key, name in channels.items()))
    if list(table) != list(range(len(table))):
        raise DatalistError(f"the channels of {where} have the indices {list(table)}; expected 0 .. {len(table) - 1}")
    return {str(index): name for index, name in table.items()}


def is_ct(channel: str) -> bool:
    """Whether a channel name is CT (nnU-Net v2's rule: ``"CT"`` in any case)."""
    return channel.casefold() == "ct"


def _preset(tasks: Mapping[str, Mapping[str, Any]], task: str) -> Mapping[str, Any]:
    """The preset ``task`` of ``tasks`` (:func:`common.recipes.recipe_settings`: every preset sets the same keys),
    which must be :data:`PRESET_KEYS`."""
    preset = recipe_settings(tasks, task, kind="task")
    if set(preset) != set(PRESET_KEYS):
        raise ValueError(f"every task must set exactly {list(PRESET_KEYS)}; they set {sorted(preset)}")
    return preset


def _modality(preset: Mapping[str, Any], task: str, data: dict[str, str] | None, where: str) -> dict[str, str]:
    """The input channels: the data set's where it lists them, else the preset's, else one CT channel; a named
    preset's and the data set's must agree in number and kind (CT or not)."""
    if preset["modality"] is None:
        return data or dict(DEFAULT_MODALITY)
    expected = modality_table(preset["modality"], f"task {task!r}")
    if data is not None and [is_ct(name) for name in data.values()] != [is_ct(name) for name in expected.values()]:
        raise DatalistError(
            f"{where} lists the image channels {data}, task {task!r} the channels {expected}: choose the task of this "
            f"data set, or --task {AUTO} to take the data set's"
        )
    return data or expected


def _intensity(modality: Mapping[str, str], window: str | None, task: str) -> str:
    """The window for CT channels, the z-score for all others; a mix is refused."""
    kinds = {is_ct(name) for name in modality.values()}
    if kinds == {False}:
        return ZSCORE
    if kinds == {True} and window is not None:
        return window
    if kinds == {True}:
        raise ValueError(f"task {task!r} sets no CT window (window null), but its channels {dict(modality)} are CT")
    raise DatalistError(
        f"the image channels {dict(modality)} mix CT and other modalities; one intensity normalisation serves all "
        "channels here (CT: an HU window; others: z-score), so such a task is not supported"
    )


def _index(key: Any, what: str, where: str) -> int:
    """A table key as an index."""
    try:
        return int(key)
    except (TypeError, ValueError):
        raise DatalistError(f"{where} names {what} {key!r}: expected an integer index") from None
