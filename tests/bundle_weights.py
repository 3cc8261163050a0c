"""Random weights of a bundle's network, saved as its training saves ``model.pt`` (weights under ``"model"`` with
their ``network_spec``): what the tests of packaging, export and MONAI's checks load instead of trained weights."""

from __future__ import annotations

from pathlib import Path

import torch
from monai.bundle import ConfigParser

from common.networks.spec import SPEC_KEY

# SwAV's prototype freeze counts iterations: with an epoch length given, no data set is read to size the network.
SMOKE_SETTINGS = {"epoch_length": 1}


def saved_network(bundle: Path, path: Path, settings: dict, *overlays: str) -> torch.nn.Module:
    """The network (a pre-training bundle's method) that ``train.json`` merged with the ``overlays`` (e.g.
    ``smoke.json``) under ``settings`` builds, its random weights saved to ``path`` with its spec. The bundle's
    outputs (a 2D bundle caches its slices' intensity statistics) go beside ``path``, not into the repository."""
    parser = ConfigParser()
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser.read_config([str(bundle / "configs" / name) for name in ("train.json", *overlays)])
    parser.update({"bundle_root": str(bundle), "output_dir": str(path.parent / "eval"), **settings})
    spec = parser.get_parsed_content("network_spec")
    network = spec.build()
    torch.save({"model": network.state_dict(), SPEC_KEY: spec.state_dict()}, path)
    return network


def network_weights(bundle: Path, path: Path, settings: dict, *overlays: str) -> Path:
    """:func:`saved_network`'s file."""
    saved_network(bundle, path, settings, *overlays)
    return path
