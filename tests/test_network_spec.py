"""A checkpoint carries its network (common.networks.spec): saved with the weights, rebuilt for inference on any
machine, contradicting settings refused naming both values; plain state dicts load through explicit settings."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from common.networks import (
    SpecMismatchError,
    classification_spec,
    convvit_config,
    load_network_spec,
    saved_network_spec,
    segmentation_spec,
    slice_classification_spec,
)
from common.networks.spec import SPEC_KEY, spec_from_state
from common.transforms import slice_classification_preprocessing
from module_runner import run_bundle, run_module

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "btcv_segmentation"
INFERENCE = str(BUNDLE / "configs" / "inference.json")
TRAIN = str(BUNDLE / "configs" / "train.json")
EVALUATE = str(BUNDLE / "configs" / "evaluate.json")
LABELS = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["network_data_format"]["outputs"]["pred"][
    "channel_def"
]
FACTORY = "common.networks.segmentation_spec"
TINY = {"arch": "swin_unetr", "feature_size": 12, "roi_size": (32, 32, 32), "pixdim": (4.0, 4.0, 4.0)}


def save_checkpoint(path: Path, **arguments) -> dict:
    """``model.pt`` as the bundle saves it: the state dict of a fresh network and its spec; returns the state dict."""
    spec = segmentation_spec(LABELS, **arguments)
    torch.manual_seed(0)
    state = spec.build().state_dict()
    torch.save({"model": state, SPEC_KEY: spec.state_dict()}, path)
    return state


def test_saved_spec_rebuilds_the_same_network_from_plain_values(tmp_path):
    expected = save_checkpoint(tmp_path / "model.pt", **TINY, lora_rank=2)
    checkpoint = torch.load(tmp_path / "model.pt", weights_only=True)  # plain values only: no code unpickled
    spec = spec_from_state(checkpoint[SPEC_KEY], "model.pt")
    network = spec.build()
    network.load_state_dict(checkpoint["model"])  # strict: the same keys and shapes, adapters included
    assert {key for key in expected if "lora_" in key} and network.state_dict().keys() == expected.keys()
    assert spec.channel_def == LABELS and spec.preprocessing == {"pixdim": [4.0, 4.0, 4.0], "intensity": "abdomen"}
    assert spec.network_data_format()["outputs"]["num_channels"] == 14


@pytest.mark.parametrize(
    "factory, arguments",
    [
        (classification_spec, {"encoder_config": convvit_config(True), "roi_size": (32, 32, 32), "lora_rank": 2}),
        (slice_classification_spec, {"depth": 18, "image_size": 64, "intensity": (0.25, 0.5)}),
    ],
)
def test_classifier_specs_rebuild_their_networks_and_preprocessing(factory, arguments):
    labels = {0: "covid", 1: "normal", 2: "pneumonia"}
    saved = factory(labels, **arguments)
    state = saved.build().state_dict()
    rebuilt = spec_from_state(saved.state_dict(), "model.pt")
    rebuilt.build().load_state_dict(state)  # strict, adapters included
    assert rebuilt.channel_def == {"0": "covid", "1": "normal", "2": "pneumonia"}
    assert rebuilt.preprocessing == saved.preprocessing and rebuilt.arguments == saved.arguments


def test_slices_without_intensity_statistics_build_the_network_but_refuse_to_preprocess():
    spec = slice_classification_spec({0: "a", 1: "b"}, depth=18)  # a plain state dict, --intensity not given
    assert spec.build().fc.out_features == 2
    with pytest.raises(ValueError, match=r'pass --intensity "\[mean, std\]"'):
        slice_classification_preprocessing(**spec.preprocessing)


def test_load_network_spec_takes_the_checkpoint_and_refuses_contradicting_settings(tmp_path):
    save_checkpoint(tmp_path / "model.pt", **TINY)
    unset = dict.fromkeys(["arch", "feature_size", "lora_rank", "roi_size"])
    spec = load_network_spec(tmp_path / "model.pt", FACTORY, unset)
    assert spec.arguments["feature_size"] == 12 and spec.arguments["roi_size"] == [32, 32, 32]
    agreeing = {**unset, "arch": "swin_unetr", "roi_size": (32, 32, 32)}  # a tuple equals the saved list
    assert load_network_spec(tmp_path / "model.pt", FACTORY, agreeing).arguments == spec.arguments
    with pytest.raises(SpecMismatchError, match=r"--arch 'mim' \(the checkpoint has 'swin_unetr'\).*--lora_rank 4"):
        load_network_spec(tmp_path / "model.pt", FACTORY, {"arch": "mim", "lora_rank": 4})


def test_a_plain_state_dict_loads_through_explicit_settings(tmp_path):
    spec = segmentation_spec(LABELS, **TINY)
    torch.save(spec.build().state_dict(), tmp_path / "release.pt")  # a paper's release: no spec
    requested = {**TINY, "lora_rank": None}
    loaded = load_network_spec(tmp_path / "release.pt", FACTORY, requested, {"channel_def": LABELS})
    loaded.build().load_state_dict(torch.load(tmp_path / "release.pt", weights_only=True))
    assert loaded.arguments == spec.arguments


def test_evaluation_takes_the_saved_network_on_data_with_its_labels(tmp_path):
    save_checkpoint(tmp_path / "model.pt", **TINY)
    assert saved_network_spec(tmp_path / "model.pt", LABELS).arguments["feature_size"] == 12
    with pytest.raises(SpecMismatchError, match="the data's labels .* are not the network's"):
        saved_network_spec(tmp_path / "model.pt", {0: "background", 1: "spleen"})
    # label maps: the same indices under other names (BTCV's dataset_0.json abbreviates "rkid") evaluate by index
    abbreviated = {index: name[:4] for index, name in LABELS.items()}
    assert saved_network_spec(tmp_path / "model.pt", abbreviated, match="indices").channel_def == LABELS
    with pytest.raises(SpecMismatchError):
        saved_network_spec(tmp_path / "model.pt", {0: "background", 1: "spleen"}, match="indices")
    torch.save(torch.load(tmp_path / "model.pt", weights_only=True)["model"], tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="carries no network_spec"):
        saved_network_spec(tmp_path / "plain.pt")


def test_a_resumed_run_with_other_settings_fails_naming_both_values():
    saved = segmentation_spec(LABELS, **TINY).state_dict()
    current = segmentation_spec(LABELS, **{**TINY, "feature_size": 24})
    with pytest.raises(SpecMismatchError, match="feature_size 24 here, 12 in the checkpoint"):
        current.load_state_dict(saved)


@pytest.mark.slow
@pytest.mark.parametrize("arch, lora_rank", [("swin_unetr", 0), ("mim", 0), ("swin_unetr", 4)])
def test_paper_size_weights_infer_on_the_cpu_through_plain_inference_json(tmp_path, arch, lora_rank):
    """A paper-size network (what ``cpu_demo_scale`` false trains on a GPU) infers here with no override."""
    save_checkpoint(tmp_path / "model.pt", arch=arch, lora_rank=lora_rank)  # 96^3 windows, paper widths
    volume = np.full((40, 40, 30), -1000.0, dtype=np.float32)
    volume[10:30, 10:30, 8:22] = 40.0
    nib.save(nib.Nifti1Image(volume, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "case.nii.gz")
    out = tmp_path / "predictions"
    run_bundle([INFERENCE], input=tmp_path / "case.nii.gz", ckpt_path=tmp_path / "model.pt", output_dir=out)
    (prediction,) = out.glob("*_seg.nii.gz")
    assert nib.load(prediction).shape[:3] == (40, 40, 30)
    if lora_rank:
        args = ["run", "--config_file", INFERENCE, "--input", str(tmp_path / "case.nii.gz"), "--ckpt_path",
                str(tmp_path / "model.pt"), "--output_dir", str(tmp_path / "other"), "--lora_rank", "0"]
        result = run_module("monai.bundle", *args)
        assert result.returncode != 0
        last_line = result.stderr.strip().splitlines()[-1]
        assert "--lora_rank 0 (the checkpoint has 4)" in last_line


@pytest.mark.slow
def test_evaluate_json_takes_the_network_and_spacing_of_the_checkpoint(tmp_path):
    """train.json's defaults are Swin UNETR at 1.5 mm; the checkpoint is a MedNeXt at 4 mm on 32^3 windows."""
    (tmp_path / "models").mkdir()
    save_checkpoint(tmp_path / "models" / "model.pt", arch="mednext", roi_size=(32, 32, 32), pixdim=(4.0, 4.0, 4.0))
    run_bundle([TRAIN, EVALUATE], ckpt_dir=tmp_path / "models", output_dir=tmp_path / "eval", num_workers=0)
    rows = (tmp_path / "eval" / "metrics" / "val_mean_dice_raw.csv").read_text().splitlines()
    assert len(rows) == 1 + 2  # a header and the two validation phantoms
