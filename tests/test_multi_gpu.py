"""End to end: ``multi_gpu_train.json`` under ``torchrun`` on CPU (gloo backend).

One pre-training bundle with a momentum teacher and a queue of keys (moco2d_pretrain) and one downstream bundle
with a partly frozen network (ct_slice_classification: head-first fine-tuning, then the test set and Grad-CAM), both
with ``smoke.json`` (two iterations) on two processes. Every rank saves its weights when its trainer completes: the
two ranks must hold identical parameters, teachers and queues. A test-only config gives each rank its own checkpoint
and output folder, so that the test sees that only rank 0 wrote checkpoints and an MLflow run.

The global batch (:mod:`common.engine.global_batch`): spark2d_pretrain with a deterministic method and data (no
random masks, augmentations or batch statistics, so that only the batching can make runs differ) keeps its
``global_batch_size`` on one process (accumulating), on two, and on two "nodes" that meet through torchrun's c10d
rendezvous on this machine; all end with the same weights. (A world size that cannot keep the global batch:
``tests/test_global_batch.py``.)
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
# smoke.json and multi_gpu_train.json set different keys; smoke.json comes last, as in the other bundle tests
CONFIGS = ("train.json", "multi_gpu_train.json", "smoke.json")
pytestmark = pytest.mark.slow


def torchrun_command(bundle: str, root: Path, network: str, torchrun_args: list[str], **test_overrides) -> list[str]:
    """The command training ``bundle`` with ``python -m torch.distributed.run <torchrun_args> -m monai.bundle run``.

    A test-only config, written to ``root / "test.json"`` and merged last, sends rank ``r``'s checkpoints to
    ``root / f"models_rank{r}"`` and its outputs to ``root / f"eval_rank{r}"``, and has every rank save
    ``@<network>.module.state_dict()`` (without the ``DistributedDataParallel`` wrapper) to ``root / f"rank{r}.pt"``
    when its trainer completes (and to ``rank{r}_start.pt`` when it starts).

    Args:
        bundle: folder name under ``bundles/``.
        root: a new or empty folder for everything the run writes.
        network: config id of the ``DistributedDataParallel`` network (``"method"`` or ``"network"``).
        torchrun_args: how torchrun starts the processes (``--standalone --nproc_per_node=2``, a rendezvous, ...).
        test_overrides: more config ids and values for the test-only config.
    """
    rank = "os.environ['RANK']"

    def save(suffix: str) -> str:
        return f"torch.save(@{network}.module.state_dict(), '{root}/rank' + {rank} + '{suffix}.pt')"

    test_config = {
        "ckpt_dir": f"$'{root}/models_rank' + {rank}",
        "output_dir": f"$'{root}/eval_rank' + {rank}",
        "+initialize": [
            "$from ignite.engine import Events",
            f"$@train#trainer.add_event_handler(Events.STARTED, lambda engine: {save('_start')})",
            f"$@train#trainer.add_event_handler(Events.COMPLETED, lambda engine: {save('')})",
        ],
        **test_overrides,
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "test.json").write_text(json.dumps(test_config, indent=4))
    configs = [str(REPO_ROOT / "bundles" / bundle / "configs" / name) for name in CONFIGS] + [str(root / "test.json")]
    # python -m torch.distributed.run is torchrun, here of this interpreter's torch
    return [sys.executable, "-m", "torch.distributed.run", *torchrun_args, "-m", "monai.bundle", "run",
            "--config_file", str(configs)]


# one thread per process; toy_methods (the tests' folder) importable by the test-only configs
TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}


def torchrun_bundle(bundle: str, root: Path, network: str, nproc: int = 2, **test_overrides) -> Path:
    """Train ``bundle`` on ``nproc`` processes of this machine (``torchrun --standalone``); fail with its output.
    See :func:`torchrun_command` for the arguments.

    Returns:
        ``root``.
    """
    command = torchrun_command(bundle, root, network, ["--standalone", f"--nproc_per_node={nproc}"], **test_overrides)
    result = subprocess.run(command, cwd=REPO_ROOT, env=TORCHRUN_ENV, capture_output=True, text=True, timeout=600)
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
    assert set(metrics) == {"test_accuracy", "test_auc", "test_f1", "test_f1_macro"}
    assert 0 <= metrics["test_accuracy"] <= 1
    assert list((root / "eval_rank0" / "gradcam").glob("*.png"))


def deterministic_spark2d(dataset_dir: Path, global_batch_size: int, batch_size: int) -> dict:
    """Test-only settings of spark2d_pretrain that leave batching as the only difference between runs: 8 fixed
    images read in order (no shuffling), without augmentation, and a method without random masks or batch
    statistics (:class:`toy_methods.ToyAutoencoder`); one epoch, all its iterations."""
    return {
        "dataset_dir": str(dataset_dir),
        "global_batch_size": global_batch_size,
        "batch_size": batch_size,
        "epoch_length": "$len(@train#dataloader)",
        "train#preprocessing": "$monai.transforms.Compose(common.transforms.slices.load_slice_transforms(['image']))",
        "train#dataloader#shuffle": False,
        "train#sampler#shuffle": False,
        "method_def": "$__import__('toy_methods').ToyAutoencoder(spatial_dims=2)",
    }


@pytest.fixture
def eight_slices(tmp_path) -> Path:
    folder = tmp_path / "slices"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(8):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(folder / f"slice_{index}.png")
    return folder


def logged_batch(root: Path) -> dict[str, str]:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'eval_rank0' / 'mlruns.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("spark2d_pretrain").experiment_id])
    return {key: run.data.params[key] for key in ("global_batch_size", "world_size", "accumulation_steps")}


def final_state(root: Path) -> dict:
    return torch.load(root / "models_rank0" / "checkpoint_final.pt", weights_only=False)["trainer"]


def test_one_and_two_processes_step_with_the_same_global_batch_to_the_same_weights(tmp_path, eight_slices):
    # global batch 4: one process accumulates 2 iterations of 2 images; two processes take 2 images each
    one = torchrun_bundle("spark2d_pretrain", tmp_path / "one", "method", nproc=1,
                          **deterministic_spark2d(eight_slices, global_batch_size=4, batch_size=2))
    two = torchrun_bundle("spark2d_pretrain", tmp_path / "two", "method", nproc=2,
                          **deterministic_spark2d(eight_slices, global_batch_size=4, batch_size=2))
    assert logged_batch(one) == {"global_batch_size": "4", "world_size": "1", "accumulation_steps": "2"}
    assert logged_batch(two) == {"global_batch_size": "4", "world_size": "2", "accumulation_steps": "1"}
    assert (final_state(one)["iteration"], final_state(one)["optimizer_steps"]) == (4, 2)
    assert (final_state(two)["iteration"], final_state(two)["optimizer_steps"]) == (2, 2)
    start, reference = (torch.load(one / name, weights_only=True) for name in ("rank0_start.pt", "rank0.pt"))
    assert all(torch.equal(value, torch.load(two / "rank0_start.pt")[name]) for name, value in start.items())
    assert all(not torch.allclose(reference[name], value) for name, value in start.items())  # two steps moved them
    weights, out_of_sync, _ = rank_weights(two)
    assert not out_of_sync
    for name, value in reference.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-6)


def test_two_nodes_meet_through_the_c10d_rendezvous_and_finish_with_identical_weights(tmp_path, eight_slices):
    root = tmp_path / "nodes"
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    rendezvous = ["--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=localhost:{port}",
                  "--rdzv_id=global_batch_test"]
    command = torchrun_command("spark2d_pretrain", root, "method", rendezvous,
                               **deterministic_spark2d(eight_slices, global_batch_size=4, batch_size=2))
    nodes = [subprocess.Popen(command, cwd=REPO_ROOT, env=TORCHRUN_ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n\n".join(output[-4000:] for output in outputs)
    weights, out_of_sync, _ = rank_weights(root)
    assert not out_of_sync, f"the nodes' weights differ: {sorted(out_of_sync)}"
    assert logged_batch(root) == {"global_batch_size": "4", "world_size": "2", "accumulation_steps": "1"}
    assert (final_state(root)["iteration"], final_state(root)["optimizer_steps"]) == (2, 2)
