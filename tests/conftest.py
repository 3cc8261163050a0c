"""Shared pytest fixtures (the repository root, the real CT in ``../shared/data``) and the suite's scheduling.

pytest-xdist runs the test files in several worker processes (``addopts`` in ``pyproject.toml``). Each worker gets an
equal share of the cores for torch's intra-op threads, its own and those of the processes it starts, set here
before anything imports torch: without it every worker's torch would use all the cores.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))


def pytest_report_header() -> str:
    """Free disk, which the suite needs about 20 GB of (README): a full disk fails many unrelated tests at once."""
    folders = dict.fromkeys([REPO_ROOT, Path(tempfile.gettempdir())])
    return "free disk: " + ", ".join(f"{shutil.disk_usage(f).free / 1e9:.1f} GB under {f}" for f in folders)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (read only, never copied); the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real CT folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture
def spconv_or_skip() -> None:
    """Skips a test of the ``spconv`` sparse back-end where spconv does not import (not installed: README.md)."""
    from common.sparse import spconv_available  # imported here: this module runs before anything imports torch

    if not spconv_available():
        pytest.skip("spconv is not installed: only the masked sparse back-end runs")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files that hold integration or ``long_file`` tests run first: each keeps one worker busy for minutes
    (``--dist=loadfile``), and started late it would leave the other workers idle at the end of the suite."""
    long_files = {item.path for item in items if item.get_closest_marker("integration")
                  or item.get_closest_marker("long_file")}
    items.sort(key=lambda item: item.path not in long_files)
