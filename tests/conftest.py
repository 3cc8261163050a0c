"""Shared pytest fixtures: the repository root and the real CT in ``../shared/data``."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (read only, never copied); the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real CT folder {SHARED_DATA} is absent")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    """Tests marked ``integration`` take minutes each (virtual environments installed from the package registries,
    a MONAI Label server, full-size exports): they run only when ``CT_SSL_INTEGRATION=1``."""
    if os.environ.get("CT_SSL_INTEGRATION") == "1":
        return
    skip = pytest.mark.skip(reason="integration test (minutes): set CT_SSL_INTEGRATION=1 to run it")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)
