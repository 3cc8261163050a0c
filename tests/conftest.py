"""Shared pytest fixtures: the repository root and the real CT in ``../shared/data``."""

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

