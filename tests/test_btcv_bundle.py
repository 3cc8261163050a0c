"""End to end: the btcv_segmentation bundle through ``python -m monai.bundle run`` on the demo phantoms
(``smoke.json``: tiny shapes, two iterations), then evaluation and sliding-window inference, also on real CT."""

import csv
import shutil
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
import torch

from common.data import image_loader
from common.methods import GLMAE, MiM, SparK3D, method_spec
from common.networks import convvit_config, segmentation_network, vit_config
from common.transfer import SEGMENTATION_PRETRAINING, pretrained_encoder_setting
from module_runner import run_bundle, run_module

REPO_ROOT = Path(__file__).resolve().parents[1]

BUNDLE = REPO_ROOT / "bundles" / "btcv_segmentation"
TRAIN = str(BUNDLE / "configs" / "train.json")
SMOKE = str(BUNDLE / "configs" / "smoke.json")
INFERENCE = str(BUNDLE / "configs" / "inference.json")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """One smoke training run (one epoch, ``val_interval`` 14: validated only because it is the last epoch); its
    folders and its output (``"log"``) are shared by the tests of this module."""
    root = tmp_path_factory.mktemp("btcv")
    paths = {"models": root / "models", "eval": root / "eval"}
    result = run_bundle([TRAIN, SMOKE], ckpt_dir=paths["models"], output_dir=paths["eval"], val_interval=14)
    (root / "log.txt").write_text(result.stdout + result.stderr)
    return {**paths, "log": root / "log.txt"}


def _mlflow_runs(eval_dir: Path):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{eval_dir / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("btcv_segmentation")
    return client, client.search_runs([experiment.experiment_id])


def test_training_writes_best_model_training_state_and_mlflow_run(trained):
    saved = torch.load(trained["models"] / "model.pt", weights_only=True)["network_spec"]["arguments"]
    assert saved["feature_size"] == 12 and saved["pixdim"] == [4, 4, 4]  # the network rebuilds on any machine
    log = trained["log"].read_text()
    assert f"best model: {trained['models'] / 'model.pt'} (val_mean_dice " in log  # the last epoch was validated
    assert "loss=" in log  # in the progress bar
    state = torch.load(trained["models"] / "checkpoint_final.pt", weights_only=False)
    assert {"network_spec", "model", "optimizer", "trainer"} <= set(state) and state["trainer"]["iteration"] == 2
    client, runs = _mlflow_runs(trained["eval"])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert {"val_mean_dice", "val_dice_liver", "train_loss"} <= set(run.data.metrics)
    assert 0.0 <= run.data.metrics["val_mean_dice"] <= 1.0
    assert run.data.params["arch"] == "swin_unetr" and run.data.params["roi_size"] == "[64, 64, 64]"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.pt", "train.json", "metadata.json"} <= artifacts


def test_resume_continues_and_fresh_run_keeps_earlier_files(trained, tmp_path):
    """Resumes a copy of the module's training run (without validation, to stay quick), then starts afresh."""
    models = tmp_path / "models"
    shutil.copytree(trained["models"], models)
    overrides = {"ckpt_dir": models, "output_dir": tmp_path / "eval"}
    run_bundle([TRAIN, SMOKE], resume="true", max_epochs=2, val_interval=10, **overrides)
    state = torch.load(models / "checkpoint_final.pt", weights_only=False)
    assert state["trainer"]["max_epochs"] == 2 and state["trainer"]["iteration"] == 4

    run_bundle([TRAIN, SMOKE], **overrides)  # fresh run: earlier files are archived, not overwritten
    archived = list((models / "previous").glob("*/model.pt"))
    assert len(archived) == 1 and (models / "model.pt").is_file()


def test_resume_without_checkpoint_fails_clearly(tmp_path):
    result = run_module("monai.bundle", "run", "--config_file", str([TRAIN, SMOKE]), "--resume", "true",
                        "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"))
    assert result.returncode != 0 and "holds no checkpoint_*.pt to resume from" in result.stderr


def test_evaluate_writes_per_case_metrics(trained):
    evaluate = str(BUNDLE / "configs" / "evaluate.json")
    run_bundle([TRAIN, SMOKE, evaluate], ckpt_dir=trained["models"], output_dir=trained["eval"])
    with open(trained["eval"] / "metrics" / "val_mean_dice_raw.csv") as stream:
        rows = list(csv.reader(stream))
    assert len(rows) == 1 + 2, "a header and one row per validation case"
    assert Path(rows[1][0]).name.startswith("case_")
    assert (trained["eval"] / "metrics" / "val_mean_nsd_raw.csv").is_file()


def _inference(trained, tmp_path, source: str, cwd: Path = REPO_ROOT) -> list[Path]:
    out = tmp_path / "predictions"
    run_bundle([str(BUNDLE / "configs" / "inference.json")], cwd=cwd, input=source, output_dir=out,
               ckpt_path=trained["models"] / "model.pt")  # the network and spacing come from the checkpoint
    return sorted(out.glob("*_seg.nii.gz"))


def _assert_same_grid(prediction: Path, source: str) -> None:
    reference = image_loader("image", ensure_channel_first=False)({"image": source})["image"]
    written = nib.load(prediction)
    assert written.shape == tuple(reference.shape)
    assert np.allclose(written.affine, reference.affine.numpy(), atol=1e-3)
    assert set(np.unique(np.asarray(written.dataobj))) <= set(range(14))


def test_inference_on_demo_volume_keeps_shape_and_affine(trained, tmp_path):
    source = sorted((REPO_ROOT / ".cache" / "demo_ct" / "imagesTr").glob("*.nii.gz"))[-1]
    predictions = _inference(trained, tmp_path, str(source), cwd=BUNDLE)  # started from inside the bundle
    assert len(predictions) == 1
    _assert_same_grid(predictions[0], str(source))


@pytest.mark.parametrize("name", ["example_ct.nii.gz", "example_ct_dicom"])
def test_inference_on_real_ct(trained, tmp_path, shared_data, name):
    source = shared_data / "totalsegmentator" / name
    predictions = _inference(trained, tmp_path, str(source))
    assert len(predictions) == 1
    _assert_same_grid(predictions[0], str(source))


PRE_TRAINED = {
    "mednext": lambda: SparK3D(decoder_width=32),
    "mim": lambda: MiM(encoder=convvit_config(cpu_demo_scale=True), decoder_width=24, decoder_depth=1, decoder_heads=2, contrast_dim=16),
}
# Pre-training checkpoints as the bundles save them (with their method's spec), their encoders at sizes that no
# setting of btcv_segmentation gives (the pre-training bundles' smoke.json).
PRE_TRAINED_WITH_SPEC = {
    "hyspark": method_spec("HySparK", {"encoder": {"channels": [4, 8, 8, 12, 12], "depths": [1] * 5, "vit_depth": 1,
                                                   "num_heads": 2}, "decoder_width": 16}),
    "mim": method_spec("MiM", {"encoder": {"widths": [6, 6, 12, 12], "depths": [1] * 4, "num_heads": 2},
                               "decoder_width": 12, "decoder_depth": 1, "decoder_heads": 2, "contrast_dim": 16}),
}


@pytest.mark.parametrize("arch", ["hyspark", "mednext", "mim"])
def test_fine_tunes_from_a_pre_training_checkpoint(tmp_path, arch):
    """A pre-training bundle's ``model.pt`` loads into the network of ``arch``, its encoder built at the sizes the
    checkpoint's spec gives (SparK-3D's MedNeXt has one size per variant: a plain state dict), and training runs
    (32^3 crops, no validation, to stay quick)."""
    torch.manual_seed(0)
    pretrained = tmp_path / "pretrained.pt"
    spec = PRE_TRAINED_WITH_SPEC.get(arch)
    if spec:
        torch.save({"model": spec.build().state_dict(), "network_spec": spec.state_dict()}, pretrained)
    else:
        torch.save(PRE_TRAINED[arch]().state_dict(), pretrained)
    models = tmp_path / "models"
    result = run_bundle(
        [TRAIN, SMOKE], arch=arch, pretrained=pretrained, roi_size="[32,32,32]", val_interval=2,
        ckpt_dir=models, output_dir=tmp_path / "eval",
    )
    log = result.stdout + result.stderr
    assert f"loaded {pretrained}" in log and " 0 with a different shape" in log
    state = torch.load(models / "checkpoint_final.pt", weights_only=False)
    assert state["trainer"]["iteration"] == 2
    if spec:
        assert state["network_spec"]["arguments"]["encoder_config"] == spec.arguments["settings"]["encoder"]


def test_a_checkpoint_of_another_method_is_refused(tmp_path):
    """A MiM checkpoint given to ``--arch hyspark`` stops before training, naming both."""
    spec = PRE_TRAINED_WITH_SPEC["mim"]
    torch.save({"model": spec.build().state_dict(), "network_spec": spec.state_dict()}, tmp_path / "mim.pt")
    with pytest.raises(ValueError, match="was pre-trained by MiM; this architecture fine-tunes the encoder of HySparK"):
        pretrained_encoder_setting(tmp_path / "mim.pt", None, SEGMENTATION_PRETRAINING["hyspark"])


def test_linear_evaluation_of_a_glmae_encoder_in_unetr_trains_the_decoder_only(tmp_path):
    """``--arch unetr --freeze_encoder true`` on a GL-MAE checkpoint (48^3 position embedding, 32^3 crops here):
    every ViT tensor loads, the position embedding interpolated, the cls token and teacher left out; the ViT
    stays exactly as loaded while the decoder trains."""
    torch.manual_seed(0)
    pretrained = tmp_path / "pretrained.pt"
    method = GLMAE(img_size=(48,) * 3, encoder=vit_config(cpu_demo_scale=True), decoder_width=12, decoder_depth=1,
                   decoder_heads=2, num_prototypes=16, head_hidden=16)
    torch.save(method.state_dict(), pretrained)
    models = tmp_path / "models"
    result = run_bundle(
        [TRAIN, SMOKE], arch="unetr", pretrained=pretrained, freeze_encoder=True, roi_size="[32,32,32]", val_interval=2,
        ckpt_dir=models, output_dir=tmp_path / "eval",
    )
    log = result.stdout + result.stderr
    vit_tensors = len([k for k in method.state_dict() if k.startswith("encoder.vit.")])
    assert f"{vit_tensors} tensors matched (1 position embeddings interpolated)" in log and " 0 unexpected" in log
    state = torch.load(models / "checkpoint_final.pt", weights_only=False)
    before = {k.replace("encoder.vit.", "vit.", 1): v for k, v in method.state_dict().items() if k.startswith("encoder.vit.")}
    assert all(torch.equal(state["model"][k], before[k]) for k in before if "position_embeddings" not in k)
    network = segmentation_network("unetr", out_channels=14, roi_size=(32,) * 3, encoder_config=vit_config(True))
    decoder = [p for name, p in network.named_parameters() if not name.startswith("vit.")]
    moments = [entry["exp_avg"] for entry in state["optimizer"]["state"].values()]  # AdamW knows the decoder only
    assert len(moments) == len(decoder) and all(m.abs().sum() > 0 for m in moments)


def test_lora_fine_tuning_trains_adapters_and_decoder_only(tmp_path):
    """``--lora_rank 4`` on a MiM checkpoint: the encoder's pre-trained weights stay as loaded, its adapters and
    the decoder train, the trainable share is logged, and inference rebuilds the adapted network from its checkpoint."""
    torch.manual_seed(0)
    pretrained = tmp_path / "pretrained.pt"
    torch.save(PRE_TRAINED["mim"]().state_dict(), pretrained)
    models = tmp_path / "models"
    result = run_bundle(
        [TRAIN, SMOKE], arch="mim", pretrained=pretrained, lora_rank=4, roi_size="[32,32,32]", val_interval=2,
        ckpt_dir=models, output_dir=tmp_path / "eval",
    )
    log = result.stdout + result.stderr
    assert f"loaded {pretrained}" in log and "LoRA rank 4" in log
    before = torch.load(pretrained, weights_only=True)
    after = torch.load(models / "checkpoint_final.pt", weights_only=False)["model"]
    frozen = [k for k in after if k.startswith("encoder.") and "lora_" not in k]
    assert frozen and all(torch.equal(after[k], before[k]) for k in frozen)
    adapters = {k for k in after if "lora_" in k}
    plain = segmentation_network("mim", out_channels=14, feature_size=12, encoder_config=convvit_config(True))
    assert adapters and set(after) - set(plain.state_dict()) == adapters
    assert any(after[k].abs().sum() > 0 for k in adapters if k.endswith("lora_B"))  # B starts at 0: it trained
    source = sorted((REPO_ROOT / ".cache" / "demo_ct" / "imagesTr").glob("*.nii.gz"))[-1]
    # the best model carries its network (mim, the CPU demo's ConvViT, LoRA rank 4): no setting to repeat
    run_bundle([INFERENCE], ckpt_path=models / "model.pt", input=source, output_dir=tmp_path / "out")
    assert len(list((tmp_path / "out").glob("*.nii.gz"))) == 1
