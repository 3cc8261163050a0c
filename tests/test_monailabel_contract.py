"""MONAI Label's bundle contract for the downstream bundles, checked without MONAI Label installed.

MONAI Label (0.8.5, the ``monaibundle`` and ``radiology`` apps) serves a bundle through ``BundleInferTask``
(``monailabel/tasks/infer/bundle.py``) on top of ``BasicInferTask`` (``monailabel/tasks/infer/basic_infer.py``).
It reads ``configs/inference.json`` on its own (no ``metadata.json`` as ``_meta_``) with ``bundle_root`` set to
the bundle folder, builds ``network_def`` and loads ``models/model.pt`` into it, takes the labels from the
metadata's ``network_data_format.outputs.pred.channel_def``, shows ``displayable_configs`` as options, then per
request instantiates ``preprocessing``, ``inferer`` and ``postprocessing`` itself and runs them on
``{"image": <file path>, ...}``, writing ``pred``. :func:`infer_like_monai_label` mirrors that order of operations.
"""

import copy
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigItem, ConfigParser
from monai.inferers import SimpleInferer, SlidingWindowInferer
from monai.transforms import Compose, LoadImaged, SaveImaged
from PIL import Image

from common.networks import classification_spec, convvit_config, segmentation_spec, slice_classification_spec
from common.networks.spec import SPEC_KEY

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES = REPO_ROOT / "bundles"
# Each bundle's spec factory and the arguments of the spec saved with the weights (test-sized).
SPEC_SETTINGS = {
    "btcv_segmentation": (segmentation_spec, {"feature_size": 12, "roi_size": [64, 64, 64]}),
    "ct_classification3d": (classification_spec, {"encoder_config": convvit_config(True), "roi_size": [32, 32, 32]}),
    "ct_slice_classification": (slice_classification_spec, {"intensity": [0.2, 0.3], "image_size": 64}),
}
# MONAI Label's own options of an inference task (BasicInferTask / BundleInferTask ``_config``).
MONAI_LABEL_OPTIONS = {"device", "model_filename"}
def monai_label_copy(bundle: str, folder: Path) -> Path:
    """The bundle as a MONAI Label app holds it, ``<app>/model/<bundle>``: its ``configs/`` and a ``models/model.pt``
    of fresh weights as the bundle's training writes it, with the network's spec (:data:`SPEC_SETTINGS`)."""
    copy_root = folder / bundle
    shutil.copytree(BUNDLES / bundle / "configs", copy_root / "configs")
    (copy_root / "models").mkdir()
    torch.manual_seed(0)
    labels = json.loads((copy_root / "configs" / "metadata.json").read_text())["network_data_format"]["outputs"]
    factory, arguments = SPEC_SETTINGS[bundle]
    spec = factory(labels["pred"]["channel_def"], **arguments)
    torch.save({"model": spec.build().state_dict(), SPEC_KEY: spec.state_dict()}, copy_root / "models" / "model.pt")
    return copy_root


def read_like_monai_label(bundle_root: Path, settings: dict | None = None) -> ConfigParser:
    """``BundleInferTask._load_bundle_config``: the inference config alone, ``bundle_root`` set to the folder.

    Args:
        bundle_root: the bundle folder.
        settings: values written into its ``inference.json``, as ``tools.package --settings`` does.
    """
    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / "inference.json"))
    parser.config.update({"bundle_root": str(bundle_root)})
    parser.config["use_click"] = False  # BundleInferTask.__init__, for DeepEdit
    for key, value in (settings or {}).items():
        parser[key] = value
    return parser


def monai_label_labels(bundle_root: Path) -> dict[str, int]:
    """``BundleInferTask.__init__``'s labels: ``channel_def`` of the first output, lower case, no background."""
    metadata = json.loads((bundle_root / "configs" / "metadata.json").read_text())
    _, pred = next(iter(metadata["network_data_format"]["outputs"].items()))
    return {name.lower(): int(index) for index, name in pred.get("channel_def", {}).items() if name.lower() != "background"}


def infer_like_monai_label(
    bundle_root: Path, request: dict, image_path: bool = True
) -> tuple[dict, ConfigParser]:
    """One inference request through the steps of MONAI Label 0.8.5's ``BundleInferTask`` on the CPU.

    Mirrors ``monailabel/tasks/infer/bundle.py`` (``__init__``, ``pre_transforms``, ``inferer``,
    ``post_transforms``, ``_update_device``) and ``monailabel/tasks/infer/basic_infer.py`` (``__call__``,
    ``run_pre_transforms``, ``run_inferer``, ``_get_network``), in their order. Left out: MONAI Label's own
    ``LoadImageTensord`` wrapper (it calls the bundle's ``LoadImaged`` for a file path), the ``Restored`` it
    appends to the postprocessing (the tests check what it relies on) and the writer.

    Args:
        bundle_root: a bundle folder holding ``configs/`` and ``models/model.pt``.
        request: ``{"image": <file path>}`` and option values (keys of ``displayable_configs``).
        image_path: add ``image_path`` to the data as ``BasicInferTask.__call__`` does.

    Returns:
        the post-processed data dict (``pred`` among it) and the parser, holding the instantiated components.
    """
    parser = read_like_monai_label(bundle_root)
    network = parser.get_parsed_content("network_def", instantiate=True)
    options = parser.get_parsed_content("displayable_configs", instantiate=True) if parser.get("displayable_configs") else {}

    data = {"device": "cpu", "model_filename": "model.pt", **copy.deepcopy(options), **request}
    if image_path:
        data["image_path"] = request["image"]

    # pre_transforms: the user's option values into displayable_configs, the device, then the preprocessing
    if options:
        parser["displayable_configs"].update({key: data[key] for key in options})
        parser.parse()
    parser.config.update({"device": data["device"]})
    if parser.ref_resolver.items.get("device"):
        parser.ref_resolver.items["device"] = ConfigItem(config=data["device"], id="device")
    pre = parser.get_parsed_content("preprocessing", instantiate=True)
    pre = list(pre.transforms) if isinstance(pre, Compose) else pre
    for transform in pre:
        if isinstance(transform, LoadImaged):
            transform._loader.image_only = False
    for transform in pre:  # run_pre_transforms: one by one, no Compose
        data = transform(data)

    # run_inferer: the bundle's inferer, a copy of network_def holding models/model.pt (load_strict False)
    inferer = parser.get_parsed_content("inferer", instantiate=True) if parser.get("inferer") else SimpleInferer()
    network = copy.deepcopy(network).to(data["device"])
    checkpoint = torch.load(bundle_root / "models" / "model.pt", map_location=data["device"])
    network.load_state_dict(checkpoint.get("model", checkpoint), strict=False)
    network.eval()
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None].to(data["device"]), network)[0]

    # post_transforms: the bundle's postprocessing as a list, SaveImaged filtered out (post_filter)
    post = parser.get_parsed_content("postprocessing", instantiate=True)
    post = list(post.transforms) if isinstance(post, Compose) else post
    post = [transform for transform in post if not isinstance(transform, SaveImaged)]
    for transform in post:
        data = transform(data)
    return data, parser


def write_ct(path: Path, shape: tuple[int, int, int] = (24, 22, 20), spacing: float = 3.0) -> Path:
    """A small CT-like NIfTI in HU: air around a soft-tissue box (40 HU) holding a denser box (300 HU)."""
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[4:-4, 4:-4, 3:-3] = 40.0
    hu[8:12, 8:12, 6:10] = 300.0
    nib.save(nib.Nifti1Image(hu, np.diag([spacing, spacing, spacing, 1.0])), path)
    return path


def write_slice(path: Path, size: int = 48) -> Path:
    """A small 8-bit grey PNG slice: a bright disc on black."""
    yy, xx = np.mgrid[:size, :size]
    grey = np.where((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2, 180, 0).astype(np.uint8)
    Image.fromarray(grey).save(path)
    return path


# bundle -> writer of a test input
INPUTS = {"btcv_segmentation": write_ct, "ct_classification3d": write_ct, "ct_slice_classification": write_slice}


@pytest.mark.parametrize(
    "bundle, image_path",
    [
        ("btcv_segmentation", True),
        ("btcv_segmentation", False),
        ("ct_classification3d", True),
        ("ct_classification3d", False),
        ("ct_slice_classification", True),
    ],
)
def test_serves_a_request_as_monai_label_does(tmp_path, bundle, image_path):
    write = INPUTS[bundle]
    bundle_root = monai_label_copy(bundle, tmp_path / "model")
    source = write(tmp_path / ("input.png" if write is write_slice else "input.nii.gz"))
    labels = monai_label_labels(bundle_root)
    channel_def = read_like_monai_label(bundle_root).get_parsed_content("channel_def")
    assert set(labels.values()) <= {int(index) for index in channel_def}

    data, parser = infer_like_monai_label(bundle_root, {"image": str(source)}, image_path=image_path)

    pred = data["pred"]
    if bundle == "btcv_segmentation":
        # Invertd brought the label map back onto the input's grid, so MONAI Label's Restored has nothing to resize
        assert tuple(pred.shape) == (1, *nib.load(source).shape)
        assert set(torch.unique(pred).int().tolist()) <= {int(index) for index in channel_def}
    else:
        # class probabilities; without the image, Restored finds no spatial shape to resize them to
        assert tuple(pred.shape) == (len(channel_def),)
        assert torch.all(pred >= 0) and torch.isclose(pred.sum(), torch.tensor(1.0))
        assert "image" not in data and "image_meta_dict" not in data
    assert not (bundle_root / "eval").exists(), "SaveImaged must be a top-level postprocessing step MONAI Label filters out"


def test_displayable_configs_reach_the_sliding_window(tmp_path):
    """The options MONAI Label shows (scalars: a list would become a drop-down) set the inferer of a request."""
    bundle_root = monai_label_copy("btcv_segmentation", tmp_path / "model")
    options = read_like_monai_label(bundle_root).get_parsed_content("displayable_configs")
    assert set(options) == {"sw_overlap", "sw_batch_size"} and not set(options) & MONAI_LABEL_OPTIONS
    assert all(isinstance(value, (bool, int, float, str)) for value in options.values())

    source = write_ct(tmp_path / "input.nii.gz")
    request = {"image": str(source), "sw_overlap": 0.25, "sw_batch_size": 2}
    _, parser = infer_like_monai_label(bundle_root, request, image_path=False)
    inferer = parser.get_parsed_content("inferer")
    assert isinstance(inferer, SlidingWindowInferer)
    assert (inferer.overlap, inferer.sw_batch_size) == (0.25, 2)


@pytest.mark.parametrize("bundle, arch", [("btcv_segmentation", "mim"), ("ct_classification3d", "mim")])
def test_network_def_holds_the_lora_adapters_of_model_pt(tmp_path, bundle, arch):
    """MONAI Label loads ``model.pt`` into ``network_def`` non-strictly: the adapters of a LoRA fine-tuning must be
    part of ``network_def`` itself, or they would be dropped without a word."""
    folder = tmp_path / bundle
    shutil.copytree(BUNDLES / bundle / "configs", folder / "configs")
    plain = read_like_monai_label(folder, {"arch": arch}).get_parsed_content("network_def")
    adapted = read_like_monai_label(folder, {"arch": arch, "lora_rank": 4}).get_parsed_content("network_def")
    adapters = set(adapted.state_dict()) - set(plain.state_dict())
    assert adapters and all("lora_" in key for key in adapters)
    assert not any("lora_" in key for key in plain.state_dict())
