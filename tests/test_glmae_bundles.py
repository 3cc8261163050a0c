"""End to end: glmae_pretrain and mae3d_pretrain through ``python -m monai.bundle run`` on the demo phantoms
(``smoke.json``: tiny ViT, 4 mm, two iterations): checkpoints, reconstruction PNGs, the MLflow run with every loss
term and the reconstruction export of ``inference.json``."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from module_runner import run_bundle
from test_pretrain_bundles import EXPORTS, REPO_ROOT, configs, mlflow_runs


pytestmark = pytest.mark.slow

# bundle -> (model.pt top-level modules, snapshot columns, loss terms, one hyper-parameter logged to MLflow)
EXPECTED = {
    "glmae_pretrain": (
        {"encoder", "decoder", "head", "teacher_encoder", "teacher_head", "consistency"},
        [f"{kind}_{name}" for kind in ("global", "local") for name in ("input", "masked", "reconstruction")],
        {"loss/recon_local", "loss/recon_global", "loss/consistency_gg", "loss/consistency_gl"},
        ("teacher_temperature", "0.04"),
    ),
    "mae3d_pretrain": ({"encoder", "decoder"}, ["input", "masked", "reconstruction", "target"], {"loss/recon"}, ("mask_ratio", "0.75")),
}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def trained(request, tmp_path_factory) -> tuple[str, dict[str, Path]]:
    bundle = request.param
    root = tmp_path_factory.mktemp(bundle)
    paths = {"models": root / "models", "eval": root / "eval"}
    run_bundle(configs(bundle, "train.json", "smoke.json"), ckpt_dir=paths["models"], output_dir=paths["eval"])
    return bundle, paths


def test_training_writes_checkpoints_snapshots_and_every_loss_to_mlflow(trained):
    bundle, paths = trained
    modules, columns, losses, (param, value) = EXPECTED[bundle]
    state = torch.load(paths["models"] / "checkpoint_final.pt", weights_only=False)
    assert state["trainer"]["iteration"] == 2 and state["trainer"]["optimizer_steps"] == 2
    model = torch.load(paths["models"] / "model.pt", weights_only=True)["model"]
    assert {name.split(".")[0] for name in model} == modules
    if bundle == "glmae_pretrain":  # the teacher moved towards the student, but is not a copy of it
        teacher, student = model["teacher_head.0.weight"], model["head.0.weight"]
        assert not torch.equal(teacher, student)

    png = Image.open(paths["eval"] / "reconstructions" / "iteration_000002.png")
    assert png.text["columns"] == ", ".join(columns)

    client, runs = mlflow_runs(paths["eval"], bundle)
    (run,) = runs
    assert run.info.status == "FINISHED"
    assert losses | {"loss", "lr_group_0"} <= set(run.data.metrics)
    assert run.data.params[param] == value
    assert {a.path for a in client.list_artifacts(run.info.run_id, "reconstructions")} == {
        "reconstructions/iteration_000001.png", "reconstructions/iteration_000002.png"
    }


def test_inference_exports_a_masked_reconstruction_on_the_input_grid(trained, tmp_path):
    bundle, paths = trained
    source = sorted((REPO_ROOT / ".cache" / "demo_ct" / "imagesTr").glob("*.nii.gz"))[-1]
    out = tmp_path / "reconstructions"
    run_bundle(configs(bundle, "inference.json", "smoke.json"), input=source, pretrained=paths["models"] / "model.pt", output_dir=out)
    case = source.name[: -len(".nii.gz")]
    volumes = {name: nib.load(out / f"{case}_{name}.nii.gz") for name in EXPORTS}
    assert len({v.shape for v in volumes.values()}) == 1 and volumes["input"].shape == nib.load(source).shape
    data = {name: np.asarray(v.dataobj) for name, v in volumes.items()}
    assert 0.5 < (data["masked"] == 0).mean() < 1.0
    assert not np.allclose(data["reconstruction"], data["input"])
