"""End to end: the hyspark_pretrain and spark3d_pretrain bundles through ``python -m monai.bundle run`` on the
demo phantoms (``smoke.json``: tiny network, 32^3 crops at 4 mm, two iterations), resuming and the reconstruction
export of ``inference.json``.

Each bundle is trained once per module (fixture ``trained``); the other tests reuse its folders or copies of them.
"""

import shutil
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from common.data import image_loader
from common.networks.spec import SpecMismatchError, load_network_spec, spec_from_state
from common.previews import HEADER_HEIGHT
from module_runner import run_bundle

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ("hyspark_pretrain", "spark3d_pretrain")
EXPORTS = ("input", "masked", "reconstruction")
pytestmark = pytest.mark.slow


def configs(bundle: str, *names: str) -> str:
    return str([str(REPO_ROOT / "bundles" / bundle / "configs" / name) for name in names])


def train(bundle: str, root: Path, **overrides) -> dict[str, Path]:
    paths = {"models": root / "models", "eval": root / "eval"}
    run_bundle(configs(bundle, "train.json", "smoke.json"), ckpt_dir=paths["models"], output_dir=paths["eval"], **overrides)
    return paths


@pytest.fixture(scope="module", params=BUNDLES)
def trained(request, tmp_path_factory) -> tuple[str, dict[str, Path]]:
    """One smoke training run per bundle; its folders are shared by the tests of this module."""
    bundle = request.param
    return bundle, train(bundle, tmp_path_factory.mktemp(bundle))


def mlflow_runs(eval_dir: Path, bundle: str):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{eval_dir / 'mlruns.db'}")
    experiment = client.get_experiment_by_name(bundle)
    return client, client.search_runs([experiment.experiment_id])


def test_training_writes_checkpoint_model_snapshots_and_mlflow_run(trained):
    bundle, paths = trained
    state = torch.load(paths["models"] / "checkpoint_final.pt", weights_only=False)
    assert {"network_spec", "method", "optimizer", "trainer"} <= set(state)
    assert state["trainer"]["iteration"] == 2 and state["trainer"]["optimizer_steps"] == 2

    saved = torch.load(paths["models"] / "model.pt", weights_only=True)  # plain values only: no code unpickled
    assert saved["network_spec"] == state["network_spec"]
    assert saved["network_spec"]["factory"] == "common.methods.method_spec"
    model = saved["model"]
    spec_from_state(saved["network_spec"], "model.pt").build().load_state_dict(model)  # rebuilds the trained method
    assert any(name.startswith("encoder.") for name in model) and any(name.startswith("decoder.") for name in model)
    assert set(model) == set(state["method"])

    pngs = sorted((paths["eval"] / "reconstructions").glob("iteration_*.png"))
    assert [p.name for p in pngs] == ["iteration_000001.png", "iteration_000002.png"]  # snapshot_interval 1
    png = Image.open(pngs[-1])
    assert png.text["columns"] == "input, masked, reconstruction, target"
    assert png.size == (4 * 32 * 2, HEADER_HEIGHT + 3 * 32 * 2)
    assert (np.asarray(png)[:HEADER_HEIGHT] == 255).any()  # the column names drawn above the grid

    client, runs = mlflow_runs(paths["eval"], bundle)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert {"loss", "loss/recon", "lr_group_0", "weight_decay_group_0"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "loss/recon")) == 2  # one value per iteration
    assert run.data.metrics["weight_decay_group_0"] == pytest.approx(0.2)  # cosine 0.04 -> 0.2 reached its end
    assert run.data.metrics["weight_decay_group_1"] == 0.0  # biases, norms and mask tokens are not decayed
    assert run.data.params["roi_size"] == "[32, 32, 32]" and run.data.params["mask_ratio"] == "0.75"
    assert run.data.params["num_images"] == "8"  # the 6 training and 2 validation phantoms, labels unused
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.pt", "train.json", "inference.json", "metadata.json"} <= artifacts
    snapshots = {a.path for a in client.list_artifacts(run.info.run_id, "reconstructions")}
    assert snapshots == {f"reconstructions/{p.name}" for p in pngs}


def test_resume_continues_the_training_state(trained, tmp_path):
    bundle, paths = trained
    models = tmp_path / "models"
    shutil.copytree(paths["models"], models)
    run_bundle(
        configs(bundle, "train.json", "smoke.json"),
        resume="true", max_epochs=2, ckpt_dir=models, output_dir=tmp_path / "eval",
    )
    state = torch.load(models / "checkpoint_final.pt", weights_only=False)
    assert state["trainer"]["max_epochs"] == 2 and state["trainer"]["iteration"] == 4
    assert state["trainer"]["optimizer_steps"] == 4
    resumed, original = state["method"], torch.load(paths["models"] / "checkpoint_final.pt", weights_only=False)["method"]
    assert not torch.equal(resumed["decoder.head.conv.weight"], original["decoder.head.conv.weight"])


def test_inference_exports_input_masked_and_reconstruction_on_the_input_grid(trained, tmp_path):
    """Plain ``inference.json``, no size setting: the method and its spacing come from the checkpoint (the smoke
    run's, which no default of ``inference.json`` describes)."""
    bundle, paths = trained
    source = sorted((REPO_ROOT / ".cache" / "demo_ct" / "imagesTr").glob("*.nii.gz"))[-1]
    out = tmp_path / "reconstructions"
    run_bundle(configs(bundle, "inference.json"), input=source, pretrained=paths["models"] / "model.pt", output_dir=out)
    case = source.name[: -len(".nii.gz")]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{case}_{name}.nii.gz" for name in EXPORTS)
    reference = image_loader("image", ensure_channel_first=False)({"image": str(source)})["image"]
    volumes = {}
    for name in EXPORTS:
        written = nib.load(out / f"{case}_{name}.nii.gz")
        assert written.shape == tuple(reference.shape)
        assert np.allclose(written.affine, reference.affine.numpy(), atol=1e-3)
        volumes[name] = np.asarray(written.dataobj)
    assert volumes["input"].min() >= 0.0 and volumes["input"].max() <= 1.0  # windowed intensities
    hidden = volumes["masked"] == 0
    assert 0.5 < hidden.mean() < 1.0  # mask ratio 0.75 of the patches (plus the zero background)
    assert not np.allclose(volumes["reconstruction"], volumes["input"])  # masked patches are predicted


def test_a_setting_that_contradicts_the_checkpoint_is_refused(trained):
    _, paths = trained
    with pytest.raises(SpecMismatchError, match=r"--pixdim \[2.0, 2.0, 2.0\] \(the checkpoint has \[4.0, 4.0, 4.0\]\)"):
        load_network_spec(paths["models"] / "model.pt", "common.methods.method_spec", {"pixdim": [2.0, 2.0, 2.0]})
