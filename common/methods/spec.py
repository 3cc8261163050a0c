"""What a pre-training checkpoint needs to rebuild its method on any machine.

A pre-training bundle's ``model.pt`` and training checkpoints hold, besides ``"model"`` (the method's state dict),
``"network_spec"`` (:mod:`common.networks.spec`) made by :func:`method_spec`::

    {"format": 1, "factory": "common.methods.method_spec",
     "arguments": {"method": "MiM", "in_channels": 1,
                   "settings": {"encoder": {"widths": [...], "depths": [...], "num_heads": 12}, ...},
                   "preprocessing": {"pixdim": [1.5, 1.5, 1.5], "window": "wide"}}}

so the reconstruction export (``inference.json``) builds the trained method whatever the machine, and fine-tuning
with ``--pretrained`` builds its encoder at the size it was pre-trained at
(:func:`common.transfer.pretrained_encoder_setting`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from common.methods.byol import BYOL
from common.methods.glmae import GLMAE
from common.methods.hyspark import HySparK
from common.methods.mae import MAE3D
from common.methods.mim import MiM
from common.methods.moco import MoCoV2
from common.methods.spark import SparK2D, SparK3D
from common.methods.swav import SwAV
from common.networks.features import encoder_features
from common.networks.spec import NetworkSpec

FACTORY = "common.methods.method_spec"
# The method classes by name, as :func:`method_spec` takes them.
METHODS: dict[str, type[nn.Module]] = {
    method.__name__: method for method in (BYOL, GLMAE, HySparK, MAE3D, MiM, MoCoV2, SparK2D, SparK3D, SwAV)
}
# Settings that choose how a method computes, not what it is (the same weights, the same numbers): used to build it,
# not saved, so a rebuilt method takes its default (``sparse_backend`` ``auto``: ``spconv`` on CUDA, ``masked`` else).
RUNTIME_SETTINGS = ("sparse_backend",)


@dataclass
class MethodSpec(NetworkSpec):
    """The :class:`~common.networks.spec.NetworkSpec` of a self-supervised method, whose bundle's ``network_def`` is
    its encoder as an image -> features network (:func:`~common.networks.encoder_features`)."""

    def network_data_format(self, declared: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``network_def``'s input and output in ``metadata.json``'s terms: the input's channels and spatial shape
        (:attr:`input_shape` where training fixed it, else the ``declared`` input's), and the channels and grid of
        the encoder's features at that shape.

        Raises:
            ValueError: training fixed no input shape and ``declared`` gives none.
        """
        if self.input_shape is not None:
            shape = list(self.input_shape)
        elif declared and declared.get("inputs"):
            shape = list(next(iter(declared["inputs"].values()))["spatial_shape"])
        else:
            raise ValueError(f"{self.arguments['method']}'s input shape is not fixed by training; declare it")
        features = encoder_features(self.build().encoder)
        return {
            "inputs": {"num_channels": self.in_channels, "spatial_shape": shape},
            "outputs": {
                "num_channels": features.out_channels,
                "spatial_shape": [size // features.downsample_ratio for size in shape],
            },
        }


def method_spec(
    method: str,
    settings: Mapping[str, Any] | None = None,
    in_channels: int = 1,
    preprocessing: Mapping[str, Any] | None = None,
    **preprocessing_settings: Any,
) -> NetworkSpec:
    """The :class:`~common.networks.spec.NetworkSpec` of a self-supervised method: what a pre-training bundle
    saves with its weights and rebuilds for its inference.

    Args:
        method: a method class by name (:data:`METHODS`), e.g. ``"MiM"``.
        settings: its keyword arguments, plain values (``in_channels`` aside), e.g. MiM's ``encoder`` sizes,
            ``decoder_width``, ``mask_ratio``; those of :data:`RUNTIME_SETTINGS` build it but are not saved. None:
            the method's defaults, the paper's sizes (what a pre-training ``inference.json`` builds without a
            checkpoint).
        in_channels: image channels the method reads.
        preprocessing: the settings of the bundle's inference transforms that training fixed, by their config ids
            (e.g. ``pixdim`` and ``window`` in 3D, ``image_size`` for MoCo v2 / BYOL).
        preprocessing_settings: preprocessing settings given one by one (a command-line setting), over
            ``preprocessing``.

    Returns:
        The :class:`MethodSpec`: ``network()`` builds the method; its ``arguments`` (what a checkpoint saves) and ``settings`` (what
        a command-line setting is checked against) leave out :data:`RUNTIME_SETTINGS`.

    Raises:
        ValueError: ``method`` is not one of :data:`METHODS`.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    method_class, built_with = METHODS[method], dict(settings or {})
    saved = {key: value for key, value in built_with.items() if key not in RUNTIME_SETTINGS}
    preprocessing = {**(preprocessing or {}), **preprocessing_settings}
    return MethodSpec(
        factory=FACTORY,
        arguments={"method": method, "in_channels": in_channels, "settings": saved, "preprocessing": preprocessing},
        network=lambda: method_class(in_channels=in_channels, **built_with),
        preprocessing=preprocessing,
        settings={**saved, **preprocessing},
        input_shape=[preprocessing["image_size"]] * 2 if "image_size" in preprocessing else None,
    )
