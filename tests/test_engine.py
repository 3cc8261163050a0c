"""common.engine (checkpoint folder policy, tracking URI, run parameters) and common.paths."""

import os
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from common.engine import RunParameters, latest_checkpoint, prepare_checkpoint_dir, tracking_uri
from common.paths import bundle_root

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_fresh_run_archives_earlier_files_moving_states_and_copying_weights(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"best")
    (tmp_path / "checkpoint_epoch=3.pt").write_bytes(b"state")
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "checkpoint_epoch=2.pt").write_bytes(b"weights at 2")
    assert prepare_checkpoint_dir(tmp_path, resume=False) is None
    assert [p.name for p in tmp_path.glob("*.pt")] == ["model.pt"]  # a fresh run may start from it
    assert latest_checkpoint(tmp_path) is None and not (tmp_path / "series").exists()  # a new series starts empty
    (archive,) = (tmp_path / "previous").iterdir()
    assert (archive / "model.pt").read_bytes() == b"best"
    assert (archive / "checkpoint_epoch=3.pt").read_bytes() == b"state"
    assert (archive / "series" / "checkpoint_epoch=2.pt").read_bytes() == b"weights at 2"


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


def test_run_parameters_are_the_resolved_plain_settings_read_when_logged():
    parser = ConfigParser(
        {
            "imports": ["$import torch", "$import common", "$import common.engine"],
            "mask_ratio": 0.75,
            "roi_size": "$[@crop] * 3",
            "crop": 32,
            "amp": "false",
            "flags": {"amp": "$@amp == 'true'"},
            "datalist": [{"image": "a.nii.gz"}, {"image": "b.nii.gz"}],
            "network": "$torch.nn.Linear(2, 2)",
            "never_used": 1,
            "later": "$@mask_ratio * 2",
            "hyper_parameters": {"method": "SparK3D", "num_images": "$len(@datalist)"},
            "experiment_param": "$common.engine.RunParameters(__local_refs, @hyper_parameters)",
            "run": ["$@network", "$@roi_size", "$@flags"],
        }
    )
    parameters = parser.get_parsed_content("experiment_param")
    parser.get_parsed_content("run")
    parser.get_parsed_content("later")  # resolved after the mapping was built: still logged
    assert dict(parameters) == {
        "mask_ratio": 0.75,
        "crop": 32,
        "roi_size": [32, 32, 32],
        "amp": False,
        "later": 1.5,
        "method": "SparK3D",
        "num_images": 2,
    }


def test_run_parameters_leave_out_objects_nested_ids_long_values_and_invocation_settings():
    resolved = {"path": "x" * 6001, "sizes": {"a": 1}, "pairs": [[1, 2]], "train::lr": 0.1, "device": object()}
    # settings a resumed run, logged into the same MLflow run, may change
    resolved |= {"resume": "true", "flags": {"resume": True}, "run_name": None}
    assert dict(RunParameters(resolved)) == {"sizes": {"a": 1}}


def test_bundle_root_is_independent_of_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Path(bundle_root("btcv_segmentation")) == REPO_ROOT / "bundles" / "btcv_segmentation"
    with pytest.raises(FileNotFoundError, match="--bundle_root"):
        bundle_root("no_such_bundle")
