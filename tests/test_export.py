"""``python -m monai.bundle ckpt_export`` (TorchScript) and ``onnx_export`` of the downstream bundles' ``network_def``.

Each case writes a checkpoint of fresh weights, exports it through the command line as a user runs it (inside the
bundle folder, as in its README), and compares the exported network with the eager one on another random input.
``ckpt_export`` scripts by default; the networks ``torch.jit.script`` rejects are traced (``--use_trace True
--input_shape``), which fixes the input shape to the traced one: the sliding-window ``roi_size`` (segmentation) or
the resized volume / slice (classification), the only shapes inference feeds them.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import load_net_with_metadata

from common.networks import (
    classification_encoder_config,
    classification_spec,
    segmentation_encoder_config,
    segmentation_spec,
    slice_classification_spec,
)
from common.networks.spec import SPEC_KEY
from module_runner import monai_bundle

REPO_ROOT = Path(__file__).resolve().parents[1]
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")

# Each downstream bundle's spec factory: the settings below are the arguments of the spec saved with the weights.
SPEC_FACTORIES = {
    "btcv_segmentation": segmentation_spec,
    "ct_classification3d": classification_spec,
    "ct_slice_classification": slice_classification_spec,
}


def demo_classifier(arch: str) -> dict:
    """A classifier ``arch`` of the CPU demo's encoder sizes on 32^3 crops."""
    return {"arch": arch, "roi_size": [32, 32, 32], "encoder_config": classification_encoder_config(arch, True)}


def demo_encoder(arch: str) -> dict:
    """The ``encoder_config`` of segmentation ``arch`` at the CPU demo's sizes (as ``btcv_segmentation`` trains it)."""
    return {"encoder_config": segmentation_encoder_config(arch, True)}


# (bundle, the saved spec's arguments (tiny shapes), input shape, extra ckpt_export arguments)
SCRIPTED = {
    "unetr": ("btcv_segmentation", {"arch": "unetr", "roi_size": [32, 32, 32], **demo_encoder("unetr")},
              (1, 1, 32, 32, 32), []),
    "resnet50": ("ct_slice_classification", {"image_size": 64, "intensity": [0.5, 0.25]}, (1, 1, 64, 64), []),
}
# not scriptable: MONAI's SwinUNETR / SwinTransformer (torch.utils.checkpoint under torch 2.13), MONAI's MedNeXt
# block (global_resp_gamma only exists with global_resp_norm), common's ChannelsFirstLayerNorm (super().forward,
# hyspark / mim) and EncoderClassifier.features (list or tuple encoder output, vit)
TRACED = {
    "cls_mim": ("ct_classification3d", demo_classifier("mim"), (1, 1, 32, 32, 32), []),
    "cls_vit": ("ct_classification3d", demo_classifier("vit"), (1, 1, 32, 32, 32), []),
    "cls_swin": ("ct_classification3d", demo_classifier("swin"), (1, 1, 32, 32, 32), []),
    "cls_hyspark": ("ct_classification3d", demo_classifier("hyspark"), (1, 1, 32, 32, 32), []),
    "seg_swin_unetr": ("btcv_segmentation", {"arch": "swin_unetr", "feature_size": 12, "roi_size": [64] * 3},
                       (1, 1, 64, 64, 64), []),
    "seg_mednext": ("btcv_segmentation", {"arch": "mednext", "roi_size": [32, 32, 32]}, (1, 1, 32, 32, 32), []),
    "seg_mim": ("btcv_segmentation", {"arch": "mim", "feature_size": 12, "roi_size": [64] * 3, **demo_encoder("mim")},
                (1, 1, 64, 64, 64), []),
    "seg_hyspark": ("btcv_segmentation", {"arch": "hyspark", "roi_size": [64] * 3, **demo_encoder("hyspark")},
                    (1, 1, 64, 64, 64), []),
}
FAST = {"unetr", "cls_mim"}  # one scripted, one traced: the two ckpt_export paths


def write_checkpoint(bundle: str, settings: dict, path: Path) -> torch.nn.Module:
    """A network of fresh seeded weights saved to ``path`` as the bundle's training saves it, with its spec made
    from ``settings`` by the bundle's factory (:data:`SPEC_FACTORIES`); returned in eval mode."""
    torch.manual_seed(0)
    metadata = json.loads((REPO_ROOT / "bundles" / bundle / "configs" / "metadata.json").read_text())
    spec = SPEC_FACTORIES[bundle](metadata["network_data_format"]["outputs"]["pred"]["channel_def"], **settings)
    network = spec.build().eval()
    torch.save({"model": network.state_dict(), SPEC_KEY: spec.state_dict()}, path)
    return network


def export(command: str, bundle: str, checkpoint: Path, *arguments: str) -> None:
    """``python -m monai.bundle <command> --net_id network_def --ckpt_file <checkpoint> --key_in_ckpt model ...
    --config_file configs/inference.json``, started inside the bundle folder; fails the test with the command's
    output. The checkpoint carries its network, so no setting is given: ``--ckpt_path`` names it to
    ``inference.json``, and the weights are its ``"model"`` entry."""
    monai_bundle(command, "--net_id", "network_def", "--config_file", "configs/inference.json",
                 "--ckpt_file", str(checkpoint), "--key_in_ckpt", "model", *arguments,
                 cwd=REPO_ROOT / "bundles" / bundle, ckpt_path=checkpoint)


def assert_same_outputs(exported, network: torch.nn.Module, shape: tuple[int, ...]) -> None:
    """``exported`` (a callable on a float32 tensor) matches ``network`` on a random input of ``shape``."""
    torch.manual_seed(1)
    x = torch.rand(shape)
    with torch.no_grad():
        expected = network(x)
        got = torch.as_tensor(exported(x))
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4), f"max difference {(got - expected).abs().max():.3g}"


def _cases(table: dict) -> list:
    """The names of ``table``; all but :data:`FAST` are integration tests (minutes in all on a 2-core CPU)."""
    return [pytest.param(name, marks=[] if name in FAST else pytest.mark.integration) for name in table]


def _ckpt_export(tmp_path, table, name, *how: str) -> None:
    bundle, settings, shape, extra = table[name]
    network = write_checkpoint(bundle, settings, tmp_path / "model.pt")
    export("ckpt_export", bundle, tmp_path / "model.pt", "--filepath", str(tmp_path / "model.ts"), *how,
           *extra)
    exported, _, extra_files = load_net_with_metadata(str(tmp_path / "model.ts"), more_extra_files=["inference.json"])
    assert "network_def" in json.loads(extra_files["inference.json"]), "the export carries its inference config"
    assert_same_outputs(exported, network, shape)


@pytest.mark.parametrize("name", _cases(SCRIPTED))
def test_ckpt_export_scripts(tmp_path, name):
    _ckpt_export(tmp_path, SCRIPTED, name)


@pytest.mark.parametrize("name", _cases(TRACED))
def test_ckpt_export_traces(tmp_path, name):
    shape = TRACED[name][2]
    _ckpt_export(tmp_path, TRACED, name, "--use_trace", "True", "--input_shape", json.dumps(list(shape)))


# ONNX through torch.onnx's torch.export-based exporter (the default of torch >= 2.9, which needs onnxscript).
ONNX = {
    "seg_mednext": TRACED["seg_mednext"],
    "cls_vit": TRACED["cls_vit"],
    "resnet50": SCRIPTED["resnet50"],
    "cls_mim": TRACED["cls_mim"],
}


@pytest.mark.slow
@pytest.mark.skipif(
    any(importlib.util.find_spec(package) is None for package in ONNX_PACKAGES),
    reason=f"ONNX export needs {', '.join(ONNX_PACKAGES)}",
)
@pytest.mark.parametrize("name", [name if name == "resnet50" else pytest.param(name, marks=pytest.mark.integration)
                                  for name in ONNX])
def test_onnx_export_matches_the_network(tmp_path, name):
    import onnxruntime

    bundle, settings, shape, _ = ONNX[name]
    network = write_checkpoint(bundle, settings, tmp_path / "model.pt")
    export("onnx_export", bundle, tmp_path / "model.pt", "--filepath", str(tmp_path / "model.onnx"),
           "--input_shape", json.dumps(list(shape)))
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    assert_same_outputs(lambda x: session.run(None, {input_name: x.numpy().astype(np.float32)})[0], network, shape)
