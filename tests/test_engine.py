"""common.engine (checkpoint folder policy, tracking URI) and common.paths."""

import os
from pathlib import Path

import pytest

from common.engine import latest_checkpoint, prepare_checkpoint_dir, tracking_uri
from common.paths import bundle_root

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_fresh_run_archives_earlier_files_moving_states_and_copying_weights(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"best")
    (tmp_path / "checkpoint_epoch=3.pt").write_bytes(b"state")
    assert prepare_checkpoint_dir(tmp_path, resume=False) is None
    assert [p.name for p in tmp_path.glob("*.pt")] == ["model.pt"]  # a fresh run may start from it
    assert latest_checkpoint(tmp_path) is None
    (archive,) = (tmp_path / "previous").iterdir()
    assert (archive / "model.pt").read_bytes() == b"best"
    assert (archive / "checkpoint_epoch=3.pt").read_bytes() == b"state"


def test_resume_returns_newest_checkpoint(tmp_path):
    older, newer = tmp_path / "checkpoint_epoch=1.pt", tmp_path / "checkpoint_final.pt"
    older.write_bytes(b"1")
    newer.write_bytes(b"2")
    os.utime(older, (1, 1))
    assert latest_checkpoint(tmp_path) == newer
    assert prepare_checkpoint_dir(tmp_path, resume=True) == str(newer)
    assert older.exists() and newer.exists()


def test_resume_without_checkpoint_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        prepare_checkpoint_dir(tmp_path / "models", resume=True)


def test_tracking_uri_default_and_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking_uri(tmp_path / "eval")
    assert uri.startswith("sqlite:///") and uri.endswith("eval/mlruns.db") and (tmp_path / "eval").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(tmp_path / "eval") == "http://127.0.0.1:5000"


def test_bundle_root_is_independent_of_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Path(bundle_root("btcv_segmentation")) == REPO_ROOT / "bundles" / "btcv_segmentation"
    with pytest.raises(FileNotFoundError, match="--bundle_root"):
        bundle_root("no_such_bundle")
