"""End to end: mim_pretrain through ``python -m monai.bundle run`` on the demo phantoms (``smoke.json``: tiny
network, 64^3 level-1 crops at 4 mm, two iterations): checkpoints, reconstruction PNGs of the three levels, the
MLflow run with every loss term and the reconstruction export of ``inference.json``."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from module_runner import run_bundle
from test_pretrain_bundles import EXPORTS, REPO_ROOT, configs, mlflow_runs

from common.previews import HEADER_HEIGHT

BUNDLE = "mim_pretrain"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp(BUNDLE)
    paths = {"models": root / "models", "eval": root / "eval"}
    run_bundle(configs(BUNDLE, "train.json", "smoke.json"), ckpt_dir=paths["models"], output_dir=paths["eval"])
    return paths


def test_training_writes_checkpoints_level_snapshots_and_every_loss_to_mlflow(trained):
    state = torch.load(trained["models"] / "checkpoint_final.pt", weights_only=False)
    assert state["trainer"]["iteration"] == 2 and state["trainer"]["optimizer_steps"] == 2
    model = torch.load(trained["models"] / "model.pt", weights_only=True)["model"]
    assert {name.split(".")[0] for name in model} == {"encoder", "decoder", "context_heads", "region_heads"}

    png = Image.open(trained["eval"] / "reconstructions" / "iteration_000002.png")
    columns = [f"level{i}_{name}" for i in (1, 2, 3) for name in ("input", "masked", "reconstruction")]
    assert png.text["columns"] == ", ".join(columns) and png.size == (9 * 32 * 2, HEADER_HEIGHT + 3 * 32 * 2)
    assert (np.asarray(png)[:HEADER_HEIGHT] == 255).any()  # the column names drawn above the grid

    client, runs = mlflow_runs(trained["eval"], BUNDLE)
    (run,) = runs
    assert run.info.status == "FINISHED"
    losses = {"loss", "loss/recon", "loss/contrast", "loss/contrast_level1_2", "loss/contrast_level2_3"}
    assert losses | {f"loss/recon_level{i}" for i in (1, 2, 3)} | {"lr_group_0"} <= set(run.data.metrics)
    assert run.data.params["level_schedule"] == "simultaneous" and run.data.params["temperature"] == "0.2"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "reconstructions")} == {
        "reconstructions/iteration_000001.png", "reconstructions/iteration_000002.png"
    }


def test_inference_exports_a_masked_reconstruction_on_the_input_grid(trained, tmp_path):
    source = sorted((REPO_ROOT / ".cache" / "demo_ct" / "imagesTr").glob("*.nii.gz"))[-1]
    out = tmp_path / "reconstructions"
    run_bundle(configs(BUNDLE, "inference.json", "smoke.json"), input=source, pretrained=trained["models"] / "model.pt", output_dir=out)
    case = source.name[: -len(".nii.gz")]
    volumes = {name: nib.load(out / f"{case}_{name}.nii.gz") for name in EXPORTS}
    assert len({v.shape for v in volumes.values()}) == 1 and len(volumes["input"].shape) == 3
    data = {name: np.asarray(v.dataobj) for name, v in volumes.items()}
    assert 0.5 < (data["masked"] == 0).mean() < 1.0  # 60 % of the tokens hidden
    assert not np.allclose(data["reconstruction"], data["input"])
