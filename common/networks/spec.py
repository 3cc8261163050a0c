"""What a checkpoint needs to rebuild its network on any machine, saved next to the weights.

Every bundle's ``model.pt`` and training checkpoints hold, besides ``"model"`` (the state dict),
``"network_spec"``: the name of a spec factory (e.g. :func:`common.networks.segmentation_spec`) and the keyword
arguments it was called with, all plain values::

    {"format": 1, "factory": "common.networks.segmentation_spec",
     "arguments": {"arch": "swin_unetr", "feature_size": 48, "roi_size": [96, 96, 96], "lora_rank": 0,
                   "channel_def": {"0": "background", ...}, "pixdim": [1.5, 1.5, 1.5], ...}}

Calling the factory again gives the same :class:`NetworkSpec`: the network (architecture, sizes, adapters), its
input channels and output labels, and the preprocessing inference must apply. A task with other labels or input
channels (any MSD task) only passes other arguments; the format stays. Inference builds its network from the
checkpoint (:func:`load_network_spec`), whatever the machine; a setting given there that contradicts the
checkpoint is an error naming both values. A pre-training bundle saves its method the same way
(:func:`common.methods.method_spec`).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from pydoc import locate
from typing import Any

import torch
from torch import nn

SPEC_KEY = "network_spec"
FORMAT_VERSION = 1


class SpecMismatchError(ValueError):
    """A setting contradicts the network a checkpoint was saved with."""


@dataclass
class NetworkSpec:
    """A network and what inference needs around it, made by a factory from plain arguments.

    Args:
        factory: dotted name of the function that made this spec from ``arguments``.
        arguments: the factory's keyword arguments, plain values (what a checkpoint saves); among them
            ``channel_def`` (output channel index as a string -> label, as ``metadata.json``'s) and ``in_channels``.
        network: builds the network without adapters (pre-trained weights load into it).
        adapters: adds the adapters (LoRA) the saved network has; identity without.
        preprocessing: the settings the inference transforms apply (e.g. ``pixdim``).
        settings: the arguments and preprocessing by the top-level config ids a bundle gives them (``arch``,
            ``roi_size``, ``pixdim`` ...): what a command-line setting is checked against. Default: ``arguments``.
        input_shape: the spatial shape of the inputs inference gives the network (the sliding window's ``roi_size``,
            a classifier's crop, a slice's size); None where training fixed none.
    """

    factory: str
    arguments: dict[str, Any]
    network: Callable[[], nn.Module]
    adapters: Callable[[nn.Module], nn.Module] = lambda network: network
    preprocessing: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] | None = None
    input_shape: list[int] | None = None

    def __post_init__(self) -> None:
        if self.settings is None:
            self.settings = self.arguments

    @property
    def channel_def(self) -> dict[str, str]:
        """Output channel index (as a string) -> label."""
        return self.arguments["channel_def"]

    @property
    def in_channels(self) -> int:
        """Image channels the network reads."""
        return self.arguments["in_channels"]

    def build(self) -> nn.Module:
        """The network as saved: built, then adapted."""
        return self.adapters(self.network())

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint saves under :data:`SPEC_KEY`."""
        return {"format": FORMAT_VERSION, "factory": self.factory, "arguments": self.arguments}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Check that a checkpoint's spec is this one (a resumed run must train the network it saved).

        Raises:
            SpecMismatchError: an argument differs, naming both values.
        """
        _check_format(state, "the checkpoint")
        mine = {"factory": self.factory, **self.arguments}
        differences = [
            f"{key} {here!r} here, {saved!r} in the checkpoint"
            for key, here, saved in _differences(mine, {"factory": state["factory"], **state["arguments"]})
        ]
        if differences:
            raise SpecMismatchError(
                f"the settings contradict the network the checkpoint was saved with: {'; '.join(differences)}"
            )

    def network_data_format(self, declared: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What this spec decides of the ``network_data_format`` of ``metadata.json``, by section (the first entry's
        fields): the input's channels (with their names, modality and format where the spec records a ``modality``
        table) and, where fixed, spatial shape; the output's labels where the network has them.

        Args:
            declared: the ``network_data_format`` the bundle's ``metadata.json`` declares, which the spec's values
                replace (a pre-training method's features depend on its declared input shape,
                :class:`common.methods.spec.MethodSpec`).
        """
        entries = {"inputs": {"num_channels": self.in_channels}}
        if self.arguments.get("modality"):
            modality = self.arguments["modality"]
            ct = all(name.casefold() == "ct" for name in modality.values())
            entries["inputs"].update(
                channel_def=dict(modality), modality="CT" if ct else "MR", format="hounsfield" if ct else "magnitude"
            )
        if self.input_shape is not None:
            entries["inputs"]["spatial_shape"] = list(self.input_shape)
        if "channel_def" in self.arguments:
            entries["outputs"] = {"num_channels": len(self.channel_def), "channel_def": dict(self.channel_def)}
        return entries


def spec_from_state(state: Mapping[str, Any], source: str) -> NetworkSpec:
    """The :class:`NetworkSpec` a checkpoint's :data:`SPEC_KEY` entry describes.

    Raises:
        ValueError: an unknown format or a factory that is not a function of ``common``.
    """
    _check_format(state, source)
    return locate(state["factory"])(**state["arguments"])


def _check_format(state: Mapping[str, Any], source: str) -> None:
    """``state`` is a :data:`SPEC_KEY` entry this code reads, naming a factory of ``common``."""
    if state.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{source} holds network_spec format {state.get('format')!r}; this code reads {FORMAT_VERSION}"
        )
    if not str(state.get("factory", "")).startswith("common."):
        raise ValueError(f"{source} names network factory {state.get('factory')!r}, not a factory of common")


def saved_spec_state(path: str | Path) -> Mapping[str, Any] | None:
    """The :data:`SPEC_KEY` entry of the checkpoint at ``path``; None for a plain state dict or a missing file.

    A checkpoint in torch's zip format (every one ``torch.save`` has written since torch 1.6) is memory-mapped: the
    spec is read without reading the weights, which the checkpoint loader reads afterwards (hundreds of MB at the
    papers' sizes)."""
    if not Path(path).is_file():
        return None
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    return checkpoint.get(SPEC_KEY) if isinstance(checkpoint, Mapping) else None


def saved_network_spec(path: str | Path, channel_def: Mapping | None = None, match: str = "names") -> NetworkSpec:
    """The spec saved in the checkpoint at ``path``: evaluation rebuilds the trained network and its preprocessing.

    Args:
        path: the checkpoint.
        channel_def: the labels of the data it is evaluated on, which must be the network's.
        match: what of ``channel_def`` must equal the network's: ``"names"`` (index and name: classes, whose names
            are what the data says) or ``"indices"`` (label maps, whose voxels hold the indices; the names are the
            network's, e.g. a preset's full names for a ``dataset.json`` that abbreviates them).

    Raises:
        ValueError: ``path`` carries no spec (a plain state dict).
        SpecMismatchError: the data's labels are not the network's.
    """
    state = saved_spec_state(path)
    if state is None:
        raise ValueError(
            f"{path} carries no network_spec (a plain state dict): evaluation takes the network, its labels and its"
            " preprocessing from the checkpoint, so evaluate weights that this bundle's training saved"
        )
    spec = spec_from_state(state, str(path))
    data = None if channel_def is None else plain_values(channel_def)
    if data is not None and (sorted(data) != sorted(spec.channel_def) if match == "indices" else data != spec.channel_def):
        raise SpecMismatchError(
            f"the data's labels {plain_values(channel_def)} are not the network's {spec.channel_def} ({path})"
        )
    return spec


def declared_labels(metadata: Mapping[str, Any], bundle_root: str | Path) -> dict[str, Any]:
    """The labels ``metadata.json`` declares, as spec arguments (``{"channel_def": ...}``): what a plain state dict
    is loaded with.

    Args:
        metadata: the bundle's ``metadata.json`` as MONAI read it (``@_meta_``). MONAI Label parses
            ``inference.json`` alone (``monailabel/tasks/infer/bundle.py``, ``_load_bundle_config``), where it is
            empty: then ``<bundle_root>/configs/metadata.json`` is read.
        bundle_root: the bundle folder.

    Returns:
        ``{"channel_def": ...}`` of the first output; empty where the metadata declares no labels.
    """
    if not metadata:
        metadata = json.loads((Path(bundle_root) / "configs" / "metadata.json").read_text())
    outputs = list(metadata.get("network_data_format", {}).get("outputs", {}).values())
    return {"channel_def": outputs[0]["channel_def"]} if outputs and "channel_def" in outputs[0] else {}


def load_network_spec(
    path: str | Path,
    factory: str,
    requested: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
) -> NetworkSpec:
    """The spec of the network to load from ``path``.

    Args:
        path: the checkpoint (``models/model.pt``).
        factory: dotted name of the spec factory for a checkpoint without a spec.
        requested: settings the user set, by config id (``None`` = not set; :attr:`NetworkSpec.settings`). With a
            spec in the checkpoint, each set one must agree with it; without (a plain state dict: a paper's release,
            another tool's weights, or no file yet), they are arguments of ``factory``, its defaults filling the
            others.
        defaults: arguments used only without a spec in the checkpoint (e.g. the labels in ``metadata.json``, a
            pre-training method's name).

    Raises:
        SpecMismatchError: a requested setting contradicts the checkpoint, naming both values.
    """
    given = {key: value for key, value in requested.items() if value is not None}
    state = saved_spec_state(path)
    if state is None:
        return locate(factory)(**{**(defaults or {}), **given})
    spec = spec_from_state(state, str(path))
    contradictions = [
        f"--{key} {value!r} (the checkpoint has {saved!r})" for key, value, saved in _differences(given, spec.settings)
    ]
    if contradictions:
        raise SpecMismatchError(
            f"{path} was saved with other settings: {'; '.join(contradictions)}. Leave these settings out to use the"
            " checkpoint's (it rebuilds its own network on any machine)"
        )
    return spec


def _differences(given: Mapping[str, Any], saved: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, given value, saved value)`` of each key of ``given`` whose value is not the saved one, both as
    :func:`plain_values` values."""
    pairs = ((key, plain_values(value), plain_values(saved.get(key))) for key, value in given.items())
    return [(key, value, saved_value) for key, value, saved_value in pairs if value != saved_value]


def plain_values(value: Any) -> Any:
    """``value`` with tuples as lists and mapping keys as strings, so a saved and a given setting compare equal."""
    if isinstance(value, Mapping):
        return {str(key): plain_values(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_values(item) for item in value]
    return value
