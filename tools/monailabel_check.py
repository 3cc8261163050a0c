"""MONAI Label serves a packaged bundle: the real server, the real client, a real CT.

::

    python -m tools.package bundles/btcv_segmentation --weights bundles/btcv_segmentation/models/model.pt
    python -m tools.monailabel_check dist/btcv_segmentation_v0.5.1.zip

Steps:

1. An environment with ``monailabel``, the artifact's torch and MONAI versions and its other required packages
   (``metadata.json``), made once and cached like :mod:`tools.check_artifact`'s, under
   ``<repository>/.cache/monailabel_venvs/``. MONAI Label imports torchvision, whose wheels are built against the
   registry's torch (the CUDA build): torch is pinned with ``===``, which a local CPU build (``+cpu``) does not
   satisfy. The other packages' versions are left to the resolver: MONAI Label 0.8.5 requires numpy < 2 (through
   ``numpymaxflow`` and ``pydicom-seg``), which rules out the bundles' numpy 2.x and ``pylibjpeg-libjpeg`` 2.5, and
   pydicom 2 (``pydicom-seg``), where the bundles pin pydicom 3.
2. ``monailabel apps --download --name monaibundle``: MONAI Label's ``monaibundle`` sample app, copied out of the
   installed package; the artifact is unpacked into the app's ``model/`` folder.
3. A studies folder holding a link to the CT (default ``../shared/data/totalsegmentator/example_ct_sm.nii.gz``;
   the data is linked, never copied).
4. ``monailabel start_server`` on ``127.0.0.1`` and a free port, with the bundle as the only model, no zoo
   download (``zoo_source github``: local bundles only) and no SAM2 (it would download weights).
5. :mod:`tools.monailabel_client` in that environment: ``/info/`` lists the model, ``/infer/<model>`` returns a
   label volume for the CT; with ``train_epochs`` (default 2) the client submits that volume as the CT's final label
   and ``/train/<model>`` runs MONAI Label's bundle trainer (``BundleTrainTask``: the bundle's ``train.json``, its
   ``run`` section only, on the server's device, CPU here) for that many epochs.
6. The label volume has the CT's shape and only labels of the bundle's ``channel_def``; after training, the bundle's
   final training state (``models/checkpoint_final.pt``) has run ``train_epochs`` epochs. (``models/model.pt``, the
   weights the server serves, is replaced when a validation improves the key metric, every ``val_interval`` epochs,
   on the validation split MONAI Label makes of the labelled studies; the check trains on its one study.)
7. The server is stopped (SIGINT to its process group, SIGKILL after a grace period) whatever happened.

The server's log is ``<work_dir>/server.log``; a failing step names it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fire
import nibabel as nib
import numpy as np
import torch

from tools.check_artifact import (
    ArtifactCheckError,
    artifact_metadata,
    isolated_env,
    prepared_venv,
    run_step,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV_ROOT = REPO_ROOT / ".cache" / "monailabel_venvs"
DEFAULT_IMAGE = REPO_ROOT.parent / "shared" / "data" / "totalsegmentator" / "example_ct_sm.nii.gz"
MONAILABEL_VERSION = "0.8.5"
# MONAI Label 0.8.5 imports pydicom-seg 0.4, which needs pydicom 2 (pydicom 3 removed pydicom._storage_sopclass_uids).
MONAILABEL_REQUIREMENTS = (f"monailabel=={MONAILABEL_VERSION}", "pydicom<3")
APP = "monaibundle"
SERVER_START_TIMEOUT = 300
SERVER_STOP_GRACE = 30
LOG_TAIL = 4000


def monailabel_requirements(metadata: dict) -> list[str]:
    """The environment's requirements for an artifact of ``metadata`` (step 1 of the module docstring), sorted."""
    return sorted([*MONAILABEL_REQUIREMENTS, f"torch==={metadata['pytorch_version']}",
                   f"monai=={metadata['monai_version']}", *metadata.get("required_packages_version", {})])


def venv_env(python: Path) -> dict[str, str]:
    """:func:`isolated_env` with the environment of ``python`` activated: the ``monailabel`` script and the server's
    subprocesses run ``python`` from ``PATH`` (or ``$MONAILABEL_PYEXE``)."""
    env = isolated_env()
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(python.parent.parent)
    env["MONAILABEL_PYEXE"] = str(python)
    return env


def monailabel_command(python: Path) -> list[str]:
    """The ``monailabel`` command line of the environment of ``python``: ``python -m monailabel.main``, which is what
    MONAI Label's ``monailabel`` script runs. The script and the sample apps are data files of the wheel, in a folder
    named with the wheel's build tag (``monailabel-0.8.5-<build>.data``), which uv leaves inside ``site-packages``
    instead of installing them."""
    return [str(python), "-m", "monailabel.main"]


def sample_apps_prefix(python: Path) -> list[str]:
    """``--prefix`` for ``monailabel apps`` when the sample apps were left in the wheel's data folder
    (:func:`monailabel_command`); none when they are where pip puts them, under the environment's prefix."""
    data = sorted(python.parent.parent.glob("lib/python*/site-packages/monailabel-*.data/data"))
    return ["--prefix", str(data[0])] if data else []


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepared_app(python: Path, work_dir: Path, artifact: Path, bundle_name: str) -> Path:
    """The ``monaibundle`` sample app in ``work_dir/apps``, with ``artifact`` unpacked in its ``model/`` folder."""
    run_step([*monailabel_command(python), "apps", "--download", "--name", APP, "--output", str(work_dir / "apps"),
              *sample_apps_prefix(python)], env=venv_env(python))
    app = work_dir / "apps" / APP
    with zipfile.ZipFile(artifact) as archive:
        archive.extractall(app / "model")
    if not (app / "model" / bundle_name / "configs" / "inference.json").is_file():
        raise ArtifactCheckError(f"{artifact} did not unpack to {app / 'model' / bundle_name}")
    return app


def studies_with(image: Path, work_dir: Path) -> tuple[Path, str]:
    """A studies folder holding a link to ``image``, and the image's id in MONAI Label's datastore."""
    studies = work_dir / "studies"
    studies.mkdir(parents=True, exist_ok=True)
    (studies / image.name).symlink_to(image.resolve())
    return studies, image.name.split(".")[0]


def log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-LOG_TAIL:] if log.is_file() else "(no log)"


def wait_until_serving(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    """Poll ``url/info/`` until it answers 200; :class:`ArtifactCheckError` if the server dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ArtifactCheckError(f"the server exited with {process.returncode}; {log}:\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(f"{url}/info/", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise ArtifactCheckError(f"the server did not answer {url}/info/ within {timeout:.0f} s; {log}:\n{log_tail(log)}")


def stop(process: subprocess.Popen) -> None:
    """SIGINT to the server's process group (uvicorn shuts down cleanly), SIGKILL after :data:`SERVER_STOP_GRACE`."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(SERVER_STOP_GRACE)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def running_server(python: Path, app: Path, studies: Path, model: str, log: Path) -> Iterator[str]:
    """``monailabel start_server`` serving ``model`` of ``app`` on 127.0.0.1; yields its URL, stops it on exit."""
    port = free_port()
    command = [
        *monailabel_command(python), "start_server", "--app", str(app), "--studies", str(studies),
        "--host", "127.0.0.1", "--port", str(port),
        "--conf", "models", model, "--conf", "zoo_source", "github", "--conf", "sam2", "false",
        "--conf", "preload", "false",
    ]  # fmt: skip
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=venv_env(python),
                                   start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(url, process, log, SERVER_START_TIMEOUT)
        yield url
    finally:
        stop(process)


def label_problems(label: Path, image: Path, channel_def: dict) -> list[str]:
    """Why the returned ``label`` volume is not a label map of ``image`` with the classes of ``channel_def``."""
    values = np.asarray(nib.load(label).dataobj)
    problems = []
    expected = nib.load(image).shape
    if values.shape[:3] != expected[:3] or values.size != np.prod(expected[:3]):
        problems.append(f"label shape {values.shape} is not the image's {expected}")
    unknown = sorted(set(np.unique(values).astype(int).tolist()) - {int(k) for k in channel_def})
    if unknown:
        problems.append(f"labels {unknown} are not in channel_def {sorted(int(k) for k in channel_def)}")
    return problems


def training_problems(state: Path, epochs: int) -> list[str]:
    """Why ``state`` is not the final training state of a run of ``epochs`` epochs."""
    if not state.is_file():
        return [f"training through /train/ wrote no {state}"]
    trainer = torch.load(state, map_location="cpu", weights_only=True)["trainer"]  # ignite's Engine.state_dict()
    done = trainer["iteration"] / trainer["epoch_length"]
    if trainer["max_epochs"] != epochs or done != epochs:
        return [f"{state} ran {done:g} of {trainer['max_epochs']} epochs, not the {epochs} asked for"]
    return []


def check_monailabel(artifact: str, image: str | None = None, work_dir: str | None = None,
                     venv_root: str | None = None, train_epochs: int = 2) -> dict:
    """Serve ``artifact`` with MONAI Label, run one inference through its REST API and, unless ``train_epochs`` is 0,
    train on the returned label; returns the client's report.

    Raises:
        ArtifactCheckError: a step failed (the message holds the output, or the server log's end).
        FileNotFoundError: the image does not exist.
    """
    artifact_path = Path(artifact).resolve()
    image_path = Path(image) if image else DEFAULT_IMAGE
    if not image_path.is_file():
        raise FileNotFoundError(f"CT image {image_path} does not exist")
    name, metadata = artifact_metadata(artifact_path)
    python = prepared_venv(monailabel_requirements(metadata), Path(venv_root) if venv_root else DEFAULT_VENV_ROOT)

    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="monailabel_check_"))
    app = prepared_app(python, work, artifact_path, name)
    studies, image_id = studies_with(image_path, work)
    label = work / "label.nii.gz"
    with running_server(python, app, studies, name, work / "server.log") as url:
        output = run_step([str(python), str(Path(__file__).with_name("monailabel_client.py")), "--url", url,
                           "--model", name, "--image", image_id, "--output", str(label),
                           "--train_epochs", str(train_epochs)], env=venv_env(python))
    report = json.loads(output.strip().splitlines()[-1])
    problems = label_problems(label, image_path, metadata["network_data_format"]["outputs"]["pred"]["channel_def"])
    if train_epochs:
        problems += training_problems(app / "model" / name / "models" / "checkpoint_final.pt", train_epochs)
    if problems:
        raise ArtifactCheckError(f"{label}: " + "; ".join(problems))
    return report


def main(artifact: str, image: str | None = None, work_dir: str | None = None, venv_root: str | None = None,
         train_epochs: int = 2) -> None:
    """``python -m tools.monailabel_check dist/<name>_v<version>.zip [--image CT] [--work_dir DIR]
    [--train_epochs N]``."""
    try:
        report = check_monailabel(artifact, image=image, work_dir=work_dir, venv_root=venv_root,
                                  train_epochs=train_epochs)
    except (ArtifactCheckError, FileNotFoundError, ValueError) as e:
        sys.exit(f"tools.monailabel_check: FAILED: {e}")
    print(f"OK  MONAI Label served {Path(artifact).name}: labels {report['labels']}, inference {report['infer']}")
    if "train" in report:
        print(f"OK  MONAI Label trained it for {train_epochs} epoch(s): {report['train'].get('status')}")


if __name__ == "__main__":
    fire.Fire(main)
