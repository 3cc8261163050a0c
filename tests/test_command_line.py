"""What a user types and sees: boolean settings from the command line, the root cause of a failure as the last line,
inference that needs weights and never overwrites (``common.cli``, ``common.engine.outputs``), end to end on the
spark3d_pretrain bundle (``smoke.json``: 32^3 crops, two iterations)."""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, Lambdad
from torch.utils.data import DataLoader, Dataset

from common.cli import flag, root_cause_message
from common.engine.outputs import prepare_output_dir, require_weights
from module_runner import run_bundle, run_module

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "spark3d_pretrain"
TRAIN = str([str(BUNDLE / "configs" / name) for name in ("train.json", "smoke.json")])
INFERENCE = str([str(BUNDLE / "configs" / name) for name in ("inference.json", "smoke.json")])
ROOT_MESSAGE = "bad input /data/case_0.nii.gz: 12 NaN values (expected finite HU)"


@pytest.mark.parametrize("value, expected", [
    (True, True), (False, False), (1, True), (0, False),
    ("true", True), ("false", False), ("True", True), ("False", False), ("1", True), ("0", False), (" FALSE ", False),
])
def test_flag_reads_every_spelling_of_a_boolean(value, expected):
    assert flag(value, "amp") is expected


@pytest.mark.parametrize("value", ["yes", "off", "", 2, -1, None, 0.0, [True]])
def test_flag_refuses_anything_else_naming_the_setting(value):
    with pytest.raises(ValueError, match=r"--resume must be true or false .* got " + repr(value).replace("[", r"\[")):
        flag(value, "resume")


class _BadItems(Dataset):
    """Items whose MONAI transform fails the way a check of bad input does."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> dict:
        def fail(value):
            raise ValueError(ROOT_MESSAGE)

        return Compose([Lambdad("image", fail)])({"image": index})


@pytest.mark.parametrize("num_workers", [0, 1])
def test_root_cause_of_a_transform_error_in_the_main_process_and_in_a_worker(num_workers):
    with pytest.raises(RuntimeError) as caught:  # MONAI wraps it in "applying transform ...", a worker in text
        list(DataLoader(_BadItems(), num_workers=num_workers))
    assert "applying transform" in str(caught.value) or "DataLoader worker" in str(caught.value)
    assert root_cause_message(caught.value) == f"ValueError: {ROOT_MESSAGE}"


def test_require_weights_says_how_to_get_them(tmp_path):
    weights = tmp_path / "models" / "model.pt"
    with pytest.raises(FileNotFoundError, match=r"no weights at .*model\.pt: train this bundle first .*train\.json"):
        require_weights(weights, tmp_path)
    weights.parent.mkdir()
    weights.write_bytes(b"")
    assert require_weights(weights, tmp_path) == str(weights)


def test_prepare_output_dir_refuses_earlier_outputs_unless_overwrite(tmp_path):
    out = tmp_path / "predictions"
    assert prepare_output_dir(out) == str(out) and out.is_dir()
    assert prepare_output_dir(out) == str(out)  # empty: fine
    (out / "case_seg.nii.gz").write_bytes(b"x")
    with pytest.raises(FileExistsError, match=r"already holds 1 file.*case_seg\.nii\.gz.*--overwrite true"):
        prepare_output_dir(out)
    assert prepare_output_dir(out, overwrite=True) == str(out)
    assert (out / "case_seg.nii.gz").read_bytes() == b"x"  # nothing is removed up front


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def _mlflow_runs(eval_dir: Path):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{eval_dir / 'mlruns.db'}")
    return client.search_runs([client.get_experiment_by_name("spark3d_pretrain").experiment_id])


@pytest.mark.slow
def test_false_on_the_command_line_turns_amp_and_resume_off(tmp_path):
    """python-fire hands ``--resume false`` to the config as the string "false", which used to read as true: here a
    resumable checkpoint exists, and the run must start afresh (iteration 2, not 4) without autocast."""
    paths = {"ckpt_dir": tmp_path / "models", "output_dir": tmp_path / "eval"}
    run_bundle(TRAIN, **paths)
    run_bundle(TRAIN, amp="false", resume="false", **paths)
    state = torch.load(paths["ckpt_dir"] / "checkpoint_final.pt", weights_only=False)
    assert state["trainer"]["iteration"] == 2  # a fresh run, not a resumed one
    assert len(list((paths["ckpt_dir"] / "previous").glob("*/checkpoint_final.pt"))) == 1  # the first run archived
    runs = _mlflow_runs(paths["output_dir"])
    assert len(runs) == 2 and {run.data.params["amp"] for run in runs} == {"False"}


@pytest.mark.slow
def test_tracking_gives_one_run_whichever_way_it_is_asked_for_and_turns_off(tmp_path):
    """MONAI's ``--tracking mlflow`` appends its own MLflow handler: the run is still the bundle's one run, each loss
    logged once per step (MONAI's handler would add ``train_loss``); ``--experiment_tracking false`` logs nothing."""
    paths = {"ckpt_dir": tmp_path / "models", "output_dir": tmp_path / "eval"}
    run_bundle(TRAIN, tracking="mlflow", **paths)
    (run,) = _mlflow_runs(paths["output_dir"])
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{paths['output_dir'] / 'mlruns.db'}")
    assert "train_loss" not in run.data.metrics and "roi_size" in run.data.params
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert client.get_experiment_by_name("monai_experiment") is None
    run_bundle(TRAIN, experiment_tracking="false", **paths)
    assert len(_mlflow_runs(paths["output_dir"])) == 1


@pytest.mark.slow
def test_a_bad_boolean_fails_naming_the_setting_on_the_last_line(tmp_path):
    """In a process of its own, as a user starts it: the interpreter itself calls the installed excepthook."""
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", TRAIN, "--amp", "nope",
                             "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval")],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    expected = "error: ValueError: --amp must be true or false (or True / False / 1 / 0), got 'nope'"
    assert _last_line(result.stderr) == expected


@pytest.mark.slow
def test_inference_without_weights_says_so_on_the_last_line(tmp_path):
    result = run_module("monai.bundle", "run", "--config_file", INFERENCE, "--pretrained", str(tmp_path / "model.pt"),
                        "--output_dir", str(tmp_path / "out"))
    assert result.returncode != 0
    assert _last_line(result.stderr).startswith(f"error: FileNotFoundError: no weights at {tmp_path / 'model.pt'}: ")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_inference_never_overwrites_unless_asked(tmp_path):
    paths = {"ckpt_dir": tmp_path / "models", "output_dir": tmp_path / "eval"}
    run_bundle(TRAIN, **paths)
    source = sorted((REPO_ROOT / ".cache" / "demo_ct" / "imagesTr").glob("*.nii.gz"))[-1]
    out = tmp_path / "reconstructions"
    inference = {"input": source, "pretrained": paths["ckpt_dir"] / "model.pt", "output_dir": out}
    run_bundle(INFERENCE, **inference)
    written = {path: path.stat().st_mtime_ns for path in out.iterdir()}
    result = run_module("monai.bundle", "run", "--config_file", INFERENCE,
                        *[arg for key, value in inference.items() for arg in (f"--{key}", str(value))])
    assert result.returncode != 0 and "--overwrite true" in _last_line(result.stderr)
    assert {path: path.stat().st_mtime_ns for path in out.iterdir()} == written  # untouched
    run_bundle(INFERENCE, overwrite="true", **inference)
    assert all(path.stat().st_mtime_ns > written[path] for path in written)


def _demo_images_with_a_nan_block(folder: Path, count: int = 3) -> Path:
    """``count`` demo phantoms as a folder of NIfTI images, the first with a NaN block of 4 % of its volume."""
    folder.mkdir()
    sources = sorted((REPO_ROOT / ".cache" / "demo_ct" / "imagesTr").glob("*.nii.gz"))[:count]
    for source in sources:
        shutil.copy(source, folder / source.name)
    image = nib.load(sources[0])
    voxels = np.asarray(image.dataobj, dtype=np.float32)
    block = tuple(slice(0, round(n * 0.2 ** (1 / 3) * 0.99)) for n in voxels.shape)  # ~4 % of the voxels
    voxels[block] = np.nan
    nib.save(nib.Nifti1Image(voxels, image.affine), folder / sources[0].name)
    return folder / sources[0].name


@pytest.mark.slow
def test_a_nan_block_stops_training_naming_the_file_or_is_skipped_with_a_report(tmp_path):
    bad = _demo_images_with_a_nan_block(tmp_path / "images")
    paths = {"dataset_dir": bad.parent, "ckpt_dir": tmp_path / "models", "output_dir": tmp_path / "eval"}
    result = run_module("monai.bundle", "run", "--config_file", TRAIN,
                        *[arg for key, value in paths.items() for arg in (f"--{key}", str(value))])
    assert result.returncode != 0
    last = _last_line(result.stderr)
    assert last.startswith(f"error: BadInputError: bad input {bad}: ") and "NaN" in last
    assert not list(paths["ckpt_dir"].glob("*.pt"))  # nothing trained, nothing saved

    run_bundle(TRAIN, skip_bad_input="true", **paths)
    report = (paths["output_dir"] / "skipped_inputs.csv").read_text().splitlines()
    assert report[0] == "file,reason" and len(report) == 2 and report[1].startswith(f"{bad},") and "NaN" in report[1]
    weights = torch.load(paths["ckpt_dir"] / "model.pt", weights_only=True)["model"]
    assert all(torch.isfinite(value).all() for value in weights.values() if value.is_floating_point())


def _wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 300.0) -> None:
    """Poll ``condition`` until it holds; fail if ``process`` ends first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended before {what}:\n{process.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.2)


def _checkpoint_epochs(models: Path) -> list[int]:
    """The epochs of the per-epoch training states in ``models`` (``checkpoint_epoch=<n>.pt``)."""
    return [int(path.stem.split("=")[1]) for path in models.glob("checkpoint_epoch=*.pt")]


def _interrupt(command: list[str], signum: int, after_epoch: int) -> tuple[int, str]:
    """Start ``command``, send it ``signum`` once it saved the training state of an epoch after ``after_epoch``
    (polled: no fixed sleep, robust on a loaded machine), and return its status and output (log and errors)."""
    models = Path(command[command.index("--ckpt_dir") + 1])
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: any(epoch > after_epoch for epoch in _checkpoint_epochs(models)), process, "epoch checkpoint")
        process.send_signal(signum)
        output, _ = process.communicate(timeout=300)
    finally:
        process.kill()
    return process.returncode, output


@pytest.mark.slow
def test_ctrl_c_and_sigterm_save_a_checkpoint_that_resume_continues(tmp_path):
    """A real ``python -m monai.bundle run`` stopped by SIGINT, resumed with ``--resume true``, stopped again by
    SIGTERM: each stop saves the current iteration and ends with status 128 + signal, and the resumed run goes on at
    the next iteration, logging on into the same MLflow run (one loss per iteration, no gap, no repeat)."""
    models, eval_dir = tmp_path / "models", tmp_path / "eval"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", TRAIN, "--ckpt_dir", str(models),
               "--output_dir", str(eval_dir), "--max_epochs", "1000"]
    stopped_at = 0
    for signum, resume in ((signal.SIGINT, "false"), (signal.SIGTERM, "true")):
        status, output = _interrupt([*command, "--resume", resume], signum, after_epoch=stopped_at // 2)
        assert status == 128 + signum, output[-3000:]
        assert f"interrupted by {signal.Signals(signum).name} at iteration" in output
        assert "continue it with the same command and --resume true" in output
        state = torch.load(models / "checkpoint_final.pt", weights_only=False)
        assert state["trainer"]["iteration"] > stopped_at
        stopped_at = state["trainer"]["iteration"]
        assert state["trainer"]["optimizer_steps"] == stopped_at
        (run,) = _mlflow_runs(eval_dir)
        assert run.info.status == "KILLED"
        history = mlflow.MlflowClient(f"sqlite:///{eval_dir / 'mlruns.db'}").get_metric_history(run.info.run_id, "loss")
        assert sorted(metric.step for metric in history) == list(range(1, stopped_at + 1))
