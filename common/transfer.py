"""Pre-trained weights -> downstream networks.

:func:`load_pretrained` reads a checkpoint, finds its state dict, matches tensors to the network by
name and shape, loads what matches and reports the rest. An encoder pre-trained on 1-channel CT fine-tunes on a
C-channel task (BraTS' 4 MRI modalities): its first convolution's kernel is repeated over the C input channels and
divided by C (:func:`expand_input_channels`). Later sources (self-supervised encoders,
the papers' official checkpoints) plug in as key-renaming rules, not as new loaders.
:func:`pretrained_encoder_setting` sizes the downstream encoder as a pre-training checkpoint's network spec says.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.methods.spec import FACTORY as METHOD_SPEC_FACTORY
from common.methods.spec import METHODS
from common.networks.spec import saved_spec_state, spec_from_state
from common.networks.vit import interpolate_position_embedding

logger = logging.getLogger(__name__)

# Keys under which training frameworks nest the weights; tried in this order.
STATE_DICT_KEYS = ("model", "state_dict", "network", "net", "method")
# Prefixes added by wrappers (DistributedDataParallel, torch.compile); stripped before matching.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Name ending of ViT position embeddings, interpolated when the token grids differ (MONAI's PatchEmbeddingBlock).
POSITION_EMBEDDING = "position_embeddings"
# Downstream architecture -> the pre-training methods whose ``encoder`` setting sizes its encoder.
SEGMENTATION_PRETRAINING = {
    "hyspark": ("HySparK",), "mednext": ("SparK3D",), "mim": ("MiM",), "mim_official": ("MiM",),
    "unetr": ("GLMAE", "MAE3D"),
}
CLASSIFICATION_PRETRAINING = {"hyspark": ("HySparK",), "mim": ("MiM",), "vit": ("GLMAE", "MAE3D")}
SLICE_PRETRAINING = ("SparK2D", "MoCoV2", "BYOL", "SwAV")


@dataclass
class TransferReport:
    """What :func:`load_pretrained` did: tensor names in each category."""

    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    expanded: list[str] = field(default_factory=list)

    def summary(self) -> str:
        expanded = (
            f", {len(self.expanded)} 1-channel kernels repeated over the input channels and divided by their number "
            f"({', '.join(self.expanded)})" if self.expanded else ""
        )
        return (
            f"{len(self.matched)} tensors matched ({len(self.resized)} position embeddings interpolated{expanded}), "
            f"{len(self.missing)} missing in the checkpoint, {len(self.unexpected)} unexpected, "
            f"{len(self.shape_mismatch)} with a different shape"
        )


def _cube_side(cells: int) -> int | None:
    side = round(cells ** (1 / 3))
    return side if side**3 == cells else None


def resize_position_embedding(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """A ViT position embedding ``(1, L, W)`` of a cubic token grid interpolated to ``shape`` ``(1, L', W)``
    (:func:`common.networks.vit.interpolate_position_embedding`), or ``None`` when the two are not both cubic
    grids of the same width (the grid of a flat embedding is only known for cubes)."""
    if tensor.dim() != 3 or len(shape) != 3 or tensor.shape[::2] != shape[::2]:
        return None
    side, new_side = _cube_side(tensor.shape[1]), _cube_side(shape[1])
    if side is None or new_side is None:
        return None
    return interpolate_position_embedding(tensor, (side,) * 3, (new_side,) * 3)


def expand_input_channels(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """A convolution kernel of one input channel ``(O, 1, *k)`` for ``C`` input channels ``(O, C, *k)``: repeated
    over them and divided by ``C``, so that a C-channel copy of a 1-channel image gives the activations the 1-channel
    kernel gave, ``sum_c (w / C) * x = w * x``; ``None`` unless the shapes differ in the input channels only and the
    kernel has one (a convolution: 3 dimensions or more)."""
    if tensor.dim() < 3 or len(shape) != tensor.dim() or tensor.shape[1] != 1 or shape[1] == 1:
        return None
    if tensor.shape[:1] + tensor.shape[2:] != shape[:1] + shape[2:]:
        return None
    return tensor.repeat(1, shape[1], *[1] * (tensor.dim() - 2)) / shape[1]


def extract_state_dict(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """Return the tensor dict inside ``checkpoint``: itself, or the first of :data:`STATE_DICT_KEYS` it holds.

    Wrapper prefixes (:data:`WRAPPER_PREFIXES`) are stripped from the names.
    """
    for key in STATE_DICT_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    state = {}
    for name, value in checkpoint.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
        state[name] = value
    return state


def _renamed(source: Mapping[str, torch.Tensor], rename: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """The tensors under a prefix of ``rename``, each renamed by the longest prefix it has."""
    renamed = {}
    for name, tensor in source.items():
        old = max((prefix for prefix in rename if name.startswith(prefix)), key=len, default=None)
        if old is not None:
            renamed[rename[old] + name[len(old) :]] = tensor
    return renamed


def load_pretrained(
    network: nn.Module,
    path: str | Path,
    *,
    exclude: Sequence[str] = (),
    rename: Mapping[str, str] | None = None,
    map_location: str | torch.device = "cpu",
) -> TransferReport:
    """Load the tensors of a checkpoint into ``network`` where names and shapes match, and report the rest.

    A ViT position embedding (``*position_embeddings``) learnt on another cubic token grid is interpolated to the
    network's (:func:`resize_position_embedding`), e.g. a 96^3 pre-training into a 64^3 UNETR. A convolution kernel
    of one input channel loads into one of C (a 1-channel CT encoder fine-tuned on C MRI modalities) repeated over
    them and divided by C (:func:`expand_input_channels`); the log line counts and names them.

    Args:
        network: the network to initialise (modified in place).
        path: a ``.pt`` checkpoint: a plain state dict, or a dict holding one under a key of
            :data:`STATE_DICT_KEYS` (as the bundles' ``CheckpointSaver`` writes full training states).
        exclude: name prefixes never loaded (e.g. ``("out.",)`` to re-initialise a segmentation head).
        rename: checkpoint name prefix -> network name prefix, e.g. ``{"encoder.": ""}`` to load the
            encoder of a pre-training method into a network whose encoder sits at the top level. When
            given, only checkpoint tensors under one of its prefixes are considered, each renamed by the
            longest prefix it has (``{"encoder.": "encoder.", "encoder.vit.": "encoder."}`` maps
            ``encoder.vit.x`` to ``encoder.x`` only).
        map_location: where to load the tensors.

    Returns:
        A :class:`TransferReport`; its summary is also logged.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the checkpoint holds no tensors, or none of them matches the network.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pre-trained checkpoint {path} does not exist")
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    source = extract_state_dict(checkpoint)
    if not source:
        raise ValueError(f"{path} holds no tensors (looked at the top level and under {STATE_DICT_KEYS})")
    if rename:
        source = _renamed(source, rename)

    target = network.state_dict()
    report = TransferReport()
    loadable = {}
    for name, tensor in source.items():
        if name.startswith(tuple(exclude)) or name not in target:
            report.unexpected.append(name)
        elif target[name].shape != tensor.shape and name.endswith(POSITION_EMBEDDING) and (
            resized := resize_position_embedding(tensor, target[name].shape)
        ) is not None:
            loadable[name] = resized
            report.matched.append(name)
            report.resized.append(name)
        elif target[name].shape != tensor.shape and (
            expanded := expand_input_channels(tensor, target[name].shape)
        ) is not None:
            loadable[name] = expanded
            report.matched.append(name)
            report.expanded.append(name)
        elif target[name].shape != tensor.shape:
            report.shape_mismatch.append(f"{name}: checkpoint {tuple(tensor.shape)} vs network {tuple(target[name].shape)}")
        else:
            loadable[name] = tensor
            report.matched.append(name)
    report.missing = [name for name in target if name not in loadable]
    if not loadable:
        raise ValueError(
            f"no tensor of {path} matches {type(network).__name__}: {report.summary()}; "
            f"first checkpoint names: {list(source)[:5]}, first network names: {list(target)[:5]}"
        )
    network.load_state_dict(loadable, strict=False)
    logger.info("loaded %s into %s: %s", path, type(network).__name__, report.summary())
    return report


def pretrained_encoder_setting(
    path: str | Path | None, default: Any, methods: Sequence[str], setting: str = "encoder"
) -> Any:
    """The encoder's size to fine-tune with: the setting a pre-training checkpoint's method was saved with (its
    ``encoder`` sizes in 3D, the ResNet ``depth`` in 2D), so the encoder is built at the size it was pre-trained at
    whatever the machine (a CPU demo checkpoint on a GPU, a paper-size one on a CPU); else ``default``, the
    fine-tuning bundle's.

    Args:
        path: the pre-training checkpoint (``--pretrained``), or None.
        default: the value the fine-tuning bundle chooses without a pre-trained spec.
        methods: the methods (:data:`common.methods.METHODS`) whose encoder the fine-tuned architecture takes
            (:data:`SEGMENTATION_PRETRAINING`, :data:`CLASSIFICATION_PRETRAINING`, :data:`SLICE_PRETRAINING`);
            empty: ``default``.
        setting: the method's setting that sizes its encoder.

    Returns:
        The saved setting, or the method's default where it was not given (the paper's sizes); ``default`` without
        ``path``, without ``methods``, for a checkpoint without a method spec (a plain state dict, a fine-tuned
        network), or for a method without that setting (SparK-3D's MedNeXt has none: its ``variant`` sizes it).

    Raises:
        ValueError: the checkpoint was pre-trained by a method none of ``methods``, naming both.
    """
    state = saved_spec_state(path) if path and methods else None
    if state is None or state.get("factory") != METHOD_SPEC_FACTORY:
        return default
    arguments = spec_from_state(state, str(path)).arguments
    if arguments["method"] not in methods:
        raise ValueError(
            f"--pretrained {path} was pre-trained by {arguments['method']}; this architecture fine-tunes the encoder"
            f" of {' or '.join(methods)}"
        )
    if setting in arguments["settings"]:
        return arguments["settings"][setting]
    parameter = inspect.signature(METHODS[arguments["method"]]).parameters.get(setting)
    return parameter.default if parameter is not None else default
