"""Shared pytest fixtures: the repository root, the real CT in ``../shared/data``, and the integration tests' virtual
environments, built in the background while the other tests run."""

import json
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tools import check_artifact, monailabel_check

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# the bundles whose artifacts tests/test_package.py checks with each tool
ARTIFACT_CHECKED = ("btcv_segmentation", "mim_pretrain")
MONAILABEL_CHECKED = ("btcv_segmentation",)

_environment_builds: list[Future] = []


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (read only, never copied); the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real CT folder {SHARED_DATA} is absent")
    return SHARED_DATA


def environment_requirements() -> list[tuple[list[str], Path]]:
    """(requirements, root folder) of every virtual environment the artifact checks of the integration tests use."""
    metadata = {name: json.loads((REPO_ROOT / "bundles" / name / "configs" / "metadata.json").read_text())
                for name in {*ARTIFACT_CHECKED, *MONAILABEL_CHECKED}}
    return [(check_artifact.pinned_requirements(metadata[name]), check_artifact.DEFAULT_VENV_ROOT)
            for name in ARTIFACT_CHECKED] + [
        (monailabel_check.monailabel_requirements(metadata[name]), monailabel_check.DEFAULT_VENV_ROOT)
        for name in MONAILABEL_CHECKED
    ]


def pytest_collection_finish(session):
    """When the selected tests include integration tests, start building their environments in a background thread
    (about two minutes of downloads and unpacking on the 2-core CI machine, most of it for MONAI Label's), so that
    the build overlaps the tests before them; :func:`artifact_environments` waits for it."""
    if not any("integration" in item.keywords for item in session.items):
        return
    builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="environments")
    _environment_builds.extend(builder.submit(check_artifact.prepared_venv, requirements, root)
                               for requirements, root in environment_requirements())
    builder.shutdown(wait=False)


@pytest.fixture(scope="session")
def artifact_environments() -> None:
    """Waits until the background builds of :func:`pytest_collection_finish` are done (raises a failed build's
    error), so that a check never starts building an environment that is being built."""
    for build in _environment_builds:
        build.result()
