"""End to end: ``multi_gpu_train.json`` under ``torchrun --standalone --nproc_per_node=2`` on CPU (gloo backend).

One pre-training bundle with a momentum teacher and a queue of keys (moco2d_pretrain) and one downstream bundle
with a partly frozen network (ct_slice_classification: head-first fine-tuning, then the test set and Grad-CAM), both
with ``smoke.json`` (two iterations). Every rank saves its weights when its trainer completes: the two ranks must
hold identical parameters, teachers and queues. A test-only config gives each rank its own checkpoint and output
folder, so that the test sees that only rank 0 wrote checkpoints and an MLflow run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# smoke.json and multi_gpu_train.json set different keys; smoke.json comes last, as in the other bundle tests
CONFIGS = ("train.json", "multi_gpu_train.json", "smoke.json")
pytestmark = pytest.mark.slow


def torchrun_bundle(bundle: str, root: Path, network: str, **test_overrides) -> Path:
    """Train ``bundle`` with ``torchrun --standalone --nproc_per_node=2 -m monai.bundle run``; fail with its output.

    A test-only config, written to ``root / "test.json"`` and merged last, sends rank ``r``'s checkpoints to
    ``root / f"models_rank{r}"`` and its outputs to ``root / f"eval_rank{r}"``, and has every rank save
    ``@<network>.module.state_dict()`` (without the ``DistributedDataParallel`` wrapper) to ``root / f"rank{r}.pt"``
    when its trainer completes.

    Args:
        bundle: folder name under ``bundles/``.
        root: an empty folder for everything the run writes.
        network: config id of the ``DistributedDataParallel`` network (``"method"`` or ``"network"``).
        test_overrides: more config ids and values for the test-only config.

    Returns:
        ``root``.
    """
    rank = "os.environ['RANK']"
    save = f"torch.save(@{network}.module.state_dict(), '{root}/rank' + {rank} + '.pt')"
    test_config = {
        "ckpt_dir": f"$'{root}/models_rank' + {rank}",
        "output_dir": f"$'{root}/eval_rank' + {rank}",
        "+initialize": [
            "$from ignite.engine import Events",
            f"$@train#trainer.add_event_handler(Events.COMPLETED, lambda engine: {save})",
        ],
        **test_overrides,
    }
    (root / "test.json").write_text(json.dumps(test_config, indent=4))
    configs = [str(REPO_ROOT / "bundles" / bundle / "configs" / name) for name in CONFIGS] + [str(root / "test.json")]
    # python -m torch.distributed.run is torchrun, here of this interpreter's torch
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "monai.bundle", "run", "--config_file", str(configs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-8000:]}"
    return root


def rank_weights(root: Path) -> tuple[dict[str, torch.Tensor], set[str], set[str]]:
    """Compare the weights the two ranks saved.

    ``DistributedDataParallel`` broadcasts rank 0's buffers before each training forward, and each rank then updates
    its BatchNorm running statistics with its own samples: these may differ after the last step, nothing else may.

    Returns:
        rank 0's state dict, the names of the tensors that differ between the ranks (BatchNorm running statistics
        excepted), and the names of the BatchNorm running statistics that differ.
    """
    weights = [torch.load(root / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert set(weights[0]) == set(weights[1])
    differing = {name for name in weights[0] if not torch.equal(weights[0][name], weights[1][name])}
    statistics = {name for name in differing if name.endswith(("running_mean", "running_var"))}
    return weights[0], differing - statistics, statistics


def assert_only_rank0_wrote(root: Path, bundle: str, epochs: int) -> None:
    """The checkpoints of a run of ``epochs`` epochs and one finished MLflow run in rank 0's folders; nothing in
    rank 1's."""
    checkpoints = {f"checkpoint_epoch={epochs}.pt", "checkpoint_final.pt", "model.pt"}
    assert {path.name for path in (root / "models_rank0").glob("*.pt")} == checkpoints
    assert not list((root / "models_rank1").glob("*.pt"))
    assert not (root / "eval_rank1").exists() or not any((root / "eval_rank1").iterdir())
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'eval_rank0' / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name(bundle).experiment_id])
    assert [run.info.status for run in runs] == ["FINISHED"]


def test_moco_ranks_share_weights_teacher_and_queue(tmp_path):
    root = torchrun_bundle("moco2d_pretrain", tmp_path, "method", queue_size=16)
    weights, out_of_sync, statistics = rank_weights(root)
    assert {"queue.keys", "key_encoder.conv1.weight"} <= set(weights)
    assert not out_of_sync, f"the ranks' parameters, teachers or queues differ: {sorted(out_of_sync)}"
    assert statistics, "the ranks have the same BatchNorm statistics: did they train on the same samples?"
    assert int(weights["queue.pointer"]) == 2 * 2 * 2  # 2 steps x 2 keys x 2 ranks: both ranks' keys were enqueued

    assert_only_rank0_wrote(root, "moco2d_pretrain", epochs=1)
    state = torch.load(root / "models_rank0" / "checkpoint_final.pt", weights_only=False)
    assert state["trainer"]["iteration"] == 2 and state["trainer"]["optimizer_steps"] == 2
    assert set(state["method"]) == set(weights)  # saved without DistributedDataParallel's "module." prefix
    assert all(torch.equal(state["method"][name], value) for name, value in weights.items())


def test_slice_classification_ranks_share_weights(tmp_path):
    # epoch 1 trains the head only (smoke.json: linear_epochs 1), epoch 2 the whole network; the test evaluator of
    # every rank loads the best model, which rank 0 saved
    root = torchrun_bundle("ct_slice_classification", tmp_path, "network", max_epochs=2,
                           ckpt_path=f"{tmp_path}/models_rank0/model.pt")
    weights, out_of_sync, _ = rank_weights(root)
    assert not out_of_sync, f"the ranks' weights differ: {sorted(out_of_sync)}"

    assert_only_rank0_wrote(root, "ct_slice_classification", epochs=2)
    state = torch.load(root / "models_rank0" / "checkpoint_final.pt", weights_only=False)
    assert state["trainer"]["iteration"] == 4
    assert all(torch.equal(state["model"][name], value) for name, value in weights.items())
    # the test set, split between the ranks, evaluated once; Grad-CAM overlays from rank 0 only
    metrics = json.loads((root / "eval_rank0" / "test_metrics.json").read_text())
    assert set(metrics) == {"test_accuracy", "test_auc", "test_f1"} and 0 <= metrics["test_accuracy"] <= 1
    assert list((root / "eval_rank0" / "gradcam").glob("*.png"))
