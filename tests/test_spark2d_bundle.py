"""End to end: spark2d_pretrain through ``python -m monai.bundle run`` on the demo slices (``smoke.json``: 64 px
crops, a narrow decoder, two iterations): checkpoints with LAMB's state, reconstruction snapshots, the MLflow run,
and the PNG export of ``inference.json``."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from module_runner import run_bundle
from test_pretrain_bundles import EXPORTS, configs, mlflow_runs

from common.previews import HEADER_HEIGHT

BUNDLE = "spark2d_pretrain"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp(BUNDLE)
    paths = {"models": root / "models", "eval": root / "eval"}
    run_bundle(configs(BUNDLE, "train.json", "smoke.json"), ckpt_dir=paths["models"], output_dir=paths["eval"],
               checkpoint_series_interval=1)
    return paths


def test_training_writes_checkpoints_snapshots_and_the_mlflow_run(trained):
    state = torch.load(trained["models"] / "checkpoint_final.pt", weights_only=False)
    assert state["trainer"]["iteration"] == 2 and state["trainer"]["optimizer_steps"] == 2
    assert {"exp_avg", "exp_avg_sq"} <= set(next(iter(state["optimizer"]["state"].values())))  # LAMB's moments
    model = torch.load(trained["models"] / "model.pt", weights_only=True)["model"]
    assert {name.split(".")[0] for name in model} == {"encoder", "mask_tokens", "densify_norms", "densify", "decoder"}
    assert model["encoder.layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)  # ResNet-50
    # the series tools.reduction picks a pre-training epoch from: here one epoch, the weights model.pt holds
    (kept,) = (trained["models"] / "series").iterdir()
    assert kept.name == "checkpoint_epoch=1.pt"
    series = torch.load(kept, weights_only=True)
    assert series["network_spec"] and all(torch.equal(series["model"][name], model[name]) for name in model)

    png = Image.open(trained["eval"] / "reconstructions" / "iteration_000002.png")
    assert png.text["columns"] == "input, masked, reconstruction, target"
    assert png.size == (4 * 64 * 2, HEADER_HEIGHT + 64 * 2)
    assert (np.asarray(png)[:HEADER_HEIGHT] == 255).any()  # the column names drawn above the grid

    _, (run,) = mlflow_runs(trained["eval"], BUNDLE)
    assert run.info.status == "FINISHED"
    assert {"loss", "loss/recon", "lr_group_0"} <= set(run.data.metrics)
    assert run.data.params["mask_ratio"] == "0.6" and run.data.params["optimizer"] == "LAMB"


def test_inference_exports_one_png_per_slice(trained, tmp_path):
    out = tmp_path / "reconstructions"
    run_bundle(configs(BUNDLE, "inference.json"), pretrained=trained["models"] / "model.pt",
               max_slices=2, output_dir=out)
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["case_000_0000.png", "case_000_0001.png"]
    image = Image.open(pngs[0])
    assert image.text["columns"] == ", ".join(EXPORTS)
    assert image.size == (3 * 256, HEADER_HEIGHT + 256)  # demo slices: 256 x 256, under the column names
    input_tile, masked_tile, _ = np.split(np.asarray(image)[HEADER_HEIGHT:], 3, axis=1)
    # 60 % of the patches hidden: zero in the normalised input, shown as the data set's mean grey (as SparK's own
    # visualisation shows them after undoing the normalisation)
    assert (masked_tile != input_tile).mean() > 0.4
