"""End to end: the 2D contrastive pre-training bundles through ``python -m monai.bundle run`` on the demo slices
(``smoke.json``: ResNet-18, 64 x 64 views, batch 2, two iterations): checkpoints whose ``encoder.*`` load into the
downstream ResNet, the MLflow run with every loss term and collapse statistic, the embedding export of
``inference.json``. Each bundle is trained once per module (fixture ``trained``)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from module_runner import run_bundle
from monai.bundle import ConfigParser
from test_pretrain_bundles import REPO_ROOT, configs, mlflow_runs

from common.data.slices import ensure_slice_demo_data
from common.networks import resnet_classifier

pytestmark = pytest.mark.slow

# bundle -> model.pt top-level modules, logged loss terms and statistics, one hyper-parameter logged to MLflow and
# the momentum copy of the encoder (None: no teacher)
EXPECTED = {
    "moco2d_pretrain": {
        "modules": {"encoder", "projector", "key_encoder", "key_projector", "queue"},
        "logged": {"loss/infonce", "stat/embedding_std", "stat/positive_similarity", "stat/negative_similarity",
                   "stat/key_accuracy"},
        "param": ("temperature", "0.2"),
        "teacher": "key_encoder",
    },
    "byol2d_pretrain": {
        "modules": {"encoder", "projector", "predictor", "target_encoder", "target_projector"},
        "logged": {"loss/regression_12", "loss/regression_21", "stat/embedding_std", "stat/positive_similarity"},
        "param": ("optimizer", "LARS"),
        "teacher": "target_encoder",
    },
    "swav2d_pretrain": {
        "modules": {"encoder", "projector", "prototypes", "iterations"},
        "logged": {"loss/swav", "stat/embedding_std", "stat/prototype_entropy", "stat/prototypes_frozen"},
        "param": ("sinkhorn_iterations", "3"),
        "teacher": None,
    },
}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def trained(request, tmp_path_factory) -> tuple[str, dict[str, Path]]:
    bundle = request.param
    root = tmp_path_factory.mktemp(bundle)
    paths = {"models": root / "models", "eval": root / "eval"}
    run_bundle(configs(bundle, "train.json", "smoke.json"), ckpt_dir=paths["models"], output_dir=paths["eval"])
    return bundle, paths


def test_training_writes_checkpoints_and_every_loss_and_statistic_to_mlflow(trained):
    bundle, paths = trained
    expected = EXPECTED[bundle]
    state = torch.load(paths["models"] / "checkpoint_final.pt", weights_only=False)
    assert state["trainer"]["iteration"] == 2 and state["trainer"]["optimizer_steps"] == 2
    model = torch.load(paths["models"] / "model.pt", weights_only=True)["model"]
    assert {name.split(".")[0] for name in model} == expected["modules"]
    if expected["teacher"]:  # the momentum copy moved towards the online encoder but is not a copy of it
        assert not torch.equal(model[f"{expected['teacher']}.conv1.weight"], model["encoder.conv1.weight"])
    encoder = {name[len("encoder."):]: t for name, t in model.items() if name.startswith("encoder.")}
    missing, unexpected = resnet_classifier(depth=18).load_state_dict(encoder, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected  # the downstream ResNet's encoder
    if bundle == "moco2d_pretrain":
        assert int(model["queue.pointer"]) == 4  # two batches of 2 keys entered the queue of 8
    if bundle == "swav2d_pretrain":  # two training forwards counted; the prototypes back on the unit sphere
        assert int(model["iterations"]) == 2
        torch.testing.assert_close(model["prototypes.weight"].norm(dim=1), torch.ones(6))

    client, runs = mlflow_runs(paths["eval"], bundle)
    (run,) = runs
    assert run.info.status == "FINISHED"
    assert expected["logged"] | {"loss", "lr_group_0"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "stat/embedding_std")) == 2  # one value per iteration
    param, value = expected["param"]
    assert run.data.params[param] == value and run.data.params["num_images"] == "300"
    assert {"model.pt", "train.json", "inference.json", "metadata.json"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)
    }


def test_inference_exports_one_embedding_per_slice(trained, tmp_path):
    bundle, paths = trained
    slices = tmp_path / "slices"
    slices.mkdir()
    for source in sorted(ensure_slice_demo_data().rglob("*.png"))[:3]:
        shutil.copy(source, slices / source.name)
    out = tmp_path / "embeddings"
    run_bundle(configs(bundle, "inference.json", "smoke.json"), input=slices, pretrained=paths["models"] / "model.pt",
               output_dir=out)
    embeddings = np.load(out / "embeddings.npy")
    assert embeddings.shape == (3, 512) and embeddings.dtype == np.float32  # ResNet-18's pooled width
    assert [Path(line).name for line in (out / "images.txt").read_text().splitlines()] == sorted(
        p.name for p in slices.iterdir()
    )
    assert not np.allclose(embeddings[0], embeddings[1])

    # each row is the trained encoder's pooled features of its slice, preprocessed as inference.json does
    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / "bundles" / bundle / "configs" / name)
                        for name in ("inference.json", "smoke.json")])
    parser.update({"input": str(slices), "pretrained": str(paths["models"] / "model.pt"),
                   "output_dir": str(tmp_path / "unused")})
    method = parser.get_parsed_content("method_def")
    method.load_state_dict(torch.load(paths["models"] / "model.pt", weights_only=True)["model"])
    dataset = parser.get_parsed_content("dataset")
    with torch.no_grad():
        expected = torch.cat([method.eval().encoder.pooled(item["image"][None]) for item in dataset])
    np.testing.assert_allclose(embeddings, expected.numpy(), rtol=1e-4, atol=1e-5)
