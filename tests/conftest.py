"""Shared pytest fixtures: the repository root and the real CT in ``../shared/data``.

pytest-xdist runs the test files in several worker processes (``addopts`` in ``pyproject.toml``). Each worker gets an
equal share of the cores for torch's intra-op threads, its own and those of the processes it starts, set here
before anything imports torch: without it every worker's torch would use all the cores.
"""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (read only, never copied); the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real CT folder {SHARED_DATA} is absent")
    return SHARED_DATA

