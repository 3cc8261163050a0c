"""MONAI's bundle property checks, as the model zoo's tests call them (``create_workflow`` then
``check_properties``): every ``train.json`` has MONAI's training properties (``train#inferer`` among them), and every
``inference.json`` that runs an evaluator (the downstream bundles' and the masked reconstructions of the pre-training
ones) its inference properties (``dataset_dir``, ``network_def`` among them), given weights that carry their network.
The 2D contrastive bundles' ``inference.json`` export embeddings without an evaluator: not checked."""

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from common.networks.spec import SPEC_KEY

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES = sorted(path.parent.parent.name for path in (REPO_ROOT / "bundles").glob("*/configs/train.json"))
DOWNSTREAM = ("btcv_segmentation", "ct_classification3d", "ct_slice_classification")
RECONSTRUCTION = ("glmae_pretrain", "hyspark_pretrain", "mae3d_pretrain", "mim_pretrain", "spark2d_pretrain",
                  "spark3d_pretrain")
pytestmark = pytest.mark.slow


def configs(bundle: str, *names: str) -> list[str]:
    return [str(REPO_ROOT / "bundles" / bundle / "configs" / name) for name in names]


def workflow(bundle: str, workflow_type: str, names: tuple[str, ...], **overrides) -> ConfigWorkflow:
    """The bundle's workflow as ``monai.bundle.create_workflow`` makes it: built and initialised."""
    created = ConfigWorkflow(
        config_file=configs(bundle, *names),
        meta_file=configs(bundle, "metadata.json")[0],
        workflow_type=workflow_type,
        logging_file=False,
        **overrides,
    )
    created.initialize()
    return created


@pytest.mark.parametrize("bundle", BUNDLES)
def test_train_workflow_has_monai_properties(bundle, tmp_path):
    train = workflow(bundle, "train", ("train.json", "smoke.json"), ckpt_dir=str(tmp_path / "models"),
                     output_dir=str(tmp_path / "eval"))
    assert train.check_properties() == []


@pytest.mark.parametrize("bundle", DOWNSTREAM + RECONSTRUCTION)
def test_inference_workflow_has_monai_properties(bundle, tmp_path):
    parser = ConfigParser()
    parser.read_meta(configs(bundle, "metadata.json")[0])
    parser.read_config(configs(bundle, "train.json", "smoke.json"))
    spec = parser.get_parsed_content("network_spec")
    torch.save({"model": spec.build().state_dict(), SPEC_KEY: spec.state_dict()}, tmp_path / "model.pt")
    weights = {"ckpt_path" if bundle in DOWNSTREAM else "pretrained": str(tmp_path / "model.pt")}
    inference = workflow(bundle, "inference", ("inference.json",), output_dir=str(tmp_path / "out"), **weights)
    assert inference.check_properties() == []
