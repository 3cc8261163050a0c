"""The model zoo's checks on every bundle as ``tools.package`` ships it: smoke-size weights with their network spec,
packaged, unpacked into a clean folder and checked there by ``tests/zoo_checks.py`` in a process that imports the
artifact's own ``common`` (``verify_metadata``, the train and inference property checks, ``verify_net_in_out`` at the
declared shapes, ``ckpt_export`` scripted or, where the bundle's README says so, traced). The same checks on the
repository's bundles: ``tools.verify`` (``tests/test_verify.py``), ``tests/test_bundle_properties.py`` and the
export tests."""

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from bundle_weights import SMOKE_SETTINGS, network_weights
from module_runner import run_module

from tools.package import package
from tools.verify import SCHEMA_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES = sorted(path.parent.parent.name for path in (REPO_ROOT / "bundles").glob("*/configs/train.json"))
SCRIPTED = {"ct_slice_classification"}  # the others' networks export traced only (their README's Export section)
pytestmark = [pytest.mark.slow, pytest.mark.long_file]  # 12 artifacts, about 3 minutes on one worker


def unpacked_artifact(bundle: str, root: Path) -> Path:
    """``bundles/<bundle>`` packaged with random weights of its smoke-size network and unpacked under ``root``, the
    metadata schema where ``verify_metadata`` looks for it before downloading (there is no internet here)."""
    source = REPO_ROOT / "bundles" / bundle
    weights = network_weights(source, root / "weights.pt", SMOKE_SETTINGS, "smoke.json")
    artifact = package(str(source), weights=str(weights), dist=str(root / "dist"), releases=root / "releases.json")
    with zipfile.ZipFile(artifact) as archive:
        archive.extractall(root / "unpacked")
    folder = root / "unpacked" / bundle
    schema = json.loads((folder / "configs" / "metadata.json").read_text())["schema"].rsplit("/", 1)[-1]
    (folder / "eval").mkdir()
    shutil.copy(SCHEMA_DIR / schema, folder / "eval" / "schema.json")
    return folder


@pytest.mark.parametrize("bundle", BUNDLES)
def test_zoo_checks_pass_on_the_unpacked_artifact(bundle, tmp_path):
    folder = unpacked_artifact(bundle, tmp_path)
    result = run_module("zoo_checks", str(folder), *([] if bundle in SCRIPTED else ["--trace"]),
                        cwd=Path(__file__).parent)
    assert result.returncode == 0, result.stderr[-5000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert Path(report["common"]) == folder / "common"  # the artifact's code, not the repository's
    assert report["lacking"] == {"train": [], "inference": []}
    declared = json.loads((folder / "configs" / "metadata.json").read_text())["network_data_format"]
    assert report["output"][1] == declared["outputs"]["pred"]["num_channels"]
