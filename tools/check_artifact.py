"""Check that a packaged bundle works on its own: without this repository, in a virtual environment that holds only
the packages its ``metadata.json`` pins.

::

    python -m tools.package bundles/btcv_segmentation --weights bundles/btcv_segmentation/models/model.pt
    python -m tools.check_artifact dist/btcv_segmentation_v0.5.1.zip

Steps, each a subprocess of the environment's own Python with the bundle folder as working directory:

1. The environment: ``torch==<pytorch_version>``, ``monai==<monai_version>``, ``numpy==<numpy_version>`` and every
   ``required_packages_version`` pin, installed by `uv <https://docs.astral.sh/uv/>`_ (a minute and a half for MONAI
   Label's 7 GB environment on the 2-core CI machine, where pip takes ten) from the package sources of pip's
   configuration (:func:`pip_sources`), choosing the best version across them as pip does: a local CPU build of torch
   in pip's find-links wins where the pins allow it. It is cached under
   ``<repository>/.cache/artifact_venvs/<hash of the pins>`` (``--venv_root`` moves it), so a second check of the
   same pins starts at once.
2. ``python -m monai.bundle download --name <name> --url file://<zip>`` into a fresh folder, as a user fetches a
   published bundle.
3. ``import common`` resolves to the vendored copy inside the unpacked folder.
4. When the artifact ships ``models/model.pt`` and ``configs/inference.json`` names a ``network_def``:
   ``python -m monai.bundle run --config_file "['configs/inference.json','configs/smoke.json']"``, which writes
   predictions under the folder's ``eval/``.
5. ``python -m monai.bundle run --config_file "['configs/train.json','configs/smoke.json']"``: a few training steps.

The run configs are merged with ``configs/smoke.json`` so that the check takes seconds; any step that fails stops
the check with the step's output.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import fire

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV_ROOT = REPO_ROOT / ".cache" / "artifact_venvs"
OUTPUT_TAIL = 4000


class ArtifactCheckError(RuntimeError):
    """A step of the check failed; the message holds the command and the end of its output."""


def artifact_metadata(artifact: Path) -> tuple[str, dict]:
    """The bundle name (the zip's one top-level folder) and its ``configs/metadata.json``.

    Raises:
        ValueError: the zip does not hold exactly one top-level folder with ``configs/metadata.json``.
    """
    with zipfile.ZipFile(artifact) as archive:
        tops = {name.split("/", 1)[0] for name in archive.namelist()}
        if len(tops) != 1:
            raise ValueError(f"{artifact} must hold one top-level folder, found {sorted(tops)}")
        name = tops.pop()
        try:
            metadata = json.loads(archive.read(f"{name}/configs/metadata.json"))
        except KeyError as e:
            raise ValueError(f"{artifact} has no {name}/configs/metadata.json") from e
    return name, metadata


def pinned_requirements(metadata: dict) -> list[str]:
    """``name==version`` of torch, MONAI, numpy and every ``required_packages_version`` entry, sorted."""
    pins = {
        "torch": metadata["pytorch_version"],
        "monai": metadata["monai_version"],
        "numpy": metadata["numpy_version"],
        **metadata.get("required_packages_version", {}),
    }
    return sorted(f"{package}=={version}" for package, version in pins.items())


def run_step(command: Sequence[str], cwd: Path | None = None, env: dict | None = None) -> str:
    """Run ``command`` in ``env`` (default :func:`isolated_env`); its combined output, or :class:`ArtifactCheckError`
    with the output's end when it fails."""
    result = subprocess.run(command, cwd=cwd, env=isolated_env() if env is None else env, capture_output=True,
                            text=True)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise ArtifactCheckError(
            f"{' '.join(command)} (in {cwd or os.getcwd()}) exited with {result.returncode}:\n{output[-OUTPUT_TAIL:]}"
        )
    return output


def isolated_env() -> dict[str, str]:
    """The current environment without what would let the repository leak in (``PYTHONPATH``, a virtualenv)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


# pip configuration key -> the uv option that means the same
UV_OPTION_OF_PIP_KEY = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
}


def pip_sources() -> list[str]:
    """uv options for the package sources of pip's configuration (its files and ``PIP_*`` variables, as
    ``pip config list`` shows them), each value once, e.g. ``["--find-links", "/opt/wheels", ...]``."""
    listing = run_step([sys.executable, "-m", "pip", "config", "list"])
    options: dict[tuple[str, str], None] = {}  # an ordered set
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        option = UV_OPTION_OF_PIP_KEY.get(key.rsplit(".", 1)[-1])
        if option:
            for item in ast.literal_eval(value).split():
                options[(option, item)] = None
    return [part for option in options for part in option]


def prepared_venv(requirements: Sequence[str], venv_root: Path) -> Path:
    """The Python of a virtual environment holding exactly ``requirements``: created with uv under
    ``venv_root/<hash of the requirements>`` on first use, reused afterwards."""
    key = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:16]
    venv = venv_root / key
    python = venv / "bin" / "python"
    if (venv / "requirements.txt").is_file():
        return python
    venv_root.mkdir(parents=True, exist_ok=True)
    uv = [sys.executable, "-m", "uv"]
    run_step([*uv, "venv", "--quiet", "--clear", "--python", sys.executable, str(venv)])
    run_step([*uv, "pip", "install", "--quiet", "--no-cache", "--python", str(python),
              "--index-strategy", "unsafe-best-match", *pip_sources(), *requirements])
    (venv / "requirements.txt").write_text("\n".join(requirements) + "\n")  # written last: marks a complete venv
    return python


def bundle_run(python: Path, bundle: Path, *configs: str) -> str:
    """``python -m monai.bundle run`` of the bundle's ``configs`` merged in order, from inside the bundle folder."""
    config_files = "[" + ",".join(f"'configs/{c}'" for c in configs) + "]"
    return run_step([str(python), "-m", "monai.bundle", "run", "--config_file", config_files], cwd=bundle)


def has_network(bundle: Path) -> bool:
    """The bundle's ``inference.json`` defines a ``network_def`` (a downstream bundle)."""
    return "network_def" in json.loads((bundle / "configs" / "inference.json").read_text())


def check_artifact(artifact: str, venv_root: str | None = None, work_dir: str | None = None) -> list[str]:
    """Run the checks of the module docstring on ``artifact``; returns the steps done, one line each.

    Args:
        artifact: a zip written by ``tools.package``.
        venv_root: where the cached environments live (default ``<repository>/.cache/artifact_venvs``).
        work_dir: where to unpack the bundle (default a new temporary folder, kept for inspection).

    Raises:
        ArtifactCheckError: a step failed.
        ValueError: the zip is not a bundle artifact.
    """
    artifact_path = Path(artifact).resolve()
    name, metadata = artifact_metadata(artifact_path)
    requirements = pinned_requirements(metadata)
    python = prepared_venv(requirements, Path(venv_root) if venv_root else DEFAULT_VENV_ROOT)
    steps = [f"environment {python.parent.parent}: {', '.join(requirements)}"]

    target = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix=f"{name}_artifact_"))
    run_step([str(python), "-m", "monai.bundle", "download", "--name", name, "--url", artifact_path.as_uri(),
              "--bundle_dir", str(target)])
    bundle = target / name
    steps.append(f"monai.bundle download --url {artifact_path.as_uri()} -> {bundle}")

    common_file = run_step([str(python), "-c", "import common; print(common.__file__)"], cwd=bundle).strip()
    if Path(common_file).resolve().parent != (bundle / "common").resolve():
        raise ArtifactCheckError(f"`import common` in {bundle} found {common_file}, not the vendored copy")
    steps.append(f"import common -> {common_file}")

    if (bundle / "models" / "model.pt").is_file() and has_network(bundle):
        bundle_run(python, bundle, "inference.json", "smoke.json")
        steps.append("monai.bundle run inference.json + smoke.json with the shipped models/model.pt")
    bundle_run(python, bundle, "train.json", "smoke.json")
    steps.append("monai.bundle run train.json + smoke.json")
    return steps


def main(artifact: str, venv_root: str | None = None, work_dir: str | None = None) -> None:
    """``python -m tools.check_artifact dist/<name>_v<version>.zip [--venv_root DIR] [--work_dir DIR]``."""
    try:
        steps = check_artifact(artifact, venv_root=venv_root, work_dir=work_dir)
    except (ArtifactCheckError, ValueError) as e:
        sys.exit(f"tools.check_artifact: FAILED: {e}")
    print("\n".join(f"OK  {step}" for step in steps))


if __name__ == "__main__":
    fire.Fire(main)
