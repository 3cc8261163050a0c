"""MONAI's inference property checks, as the model zoo's tests call them (``create_workflow`` then
``check_properties``): every ``inference.json`` has MONAI's inference properties (``dataset_dir``, ``network_def``,
``evaluator``, ``inferer`` among them) given weights that carry their network, which the repository does not ship.
``train.json``'s properties need no weights: ``tools.verify`` checks them (``tests/test_verify.py``)."""

from pathlib import Path

import pytest
from bundle_weights import SMOKE_SETTINGS, network_weights
from monai.bundle import ConfigWorkflow

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES = sorted(path.parent.parent.name for path in (REPO_ROOT / "bundles").glob("*/configs/train.json"))
DOWNSTREAM = ("btcv_segmentation", "ct_classification3d", "ct_slice_classification")
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("bundle", BUNDLES)
def test_inference_workflow_has_monai_properties(bundle, tmp_path):
    configs = REPO_ROOT / "bundles" / bundle / "configs"
    network_weights(configs.parent, tmp_path / "model.pt", SMOKE_SETTINGS, "smoke.json")
    inference = ConfigWorkflow(
        config_file=str(configs / "inference.json"),
        meta_file=str(configs / "metadata.json"),
        workflow_type="inference",
        logging_file=False,
        output_dir=str(tmp_path / "out"),
        **{"ckpt_path" if bundle in DOWNSTREAM else "pretrained": str(tmp_path / "model.pt")},
    )
    inference.initialize()
    assert inference.check_properties() == []
