"""The run guards of common.engine: non-finite values stop training before the optimizer step, the GradScaler's
state is checkpointed, Ctrl-C / SIGTERM checkpoint and resume exactly, validation at the last epoch, the loss in the
progress bar (CPU, toy networks, a few iterations each)."""

import io
import logging
import os
import signal
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from ignite.engine import Events
from monai.data import DataLoader, MetaTensor, list_data_collate
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import CheckpointLoader, CheckpointSaver, MeanSquaredError, from_engine
from torch import nn

from common.engine import (
    GracefulInterrupt,
    MidEpochResume,
    NonFiniteGuard,
    PeriodicValidation,
    ProgressBar,
    SelfSupervisedTrainer,
    TrainerState,
    batch_files,
    exit_if_interrupted,
    logged_scalars,
    lr_schedule,
)
from common.engine.batches import describe_files

SHAPE = (1, 2, 2)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE over the finite target voxels: NaN there gives a finite loss but NaN gradients (0 * NaN)."""
    valid = torch.isfinite(target)
    return torch.where(valid, (prediction - target) ** 2, 0.0).sum() / valid.sum()


def mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((prediction - target) ** 2).mean()


class Scale(nn.Module):
    """A weight per voxel: deterministic, and a NaN voxel stays in its own weight's gradient."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(SHAPE))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.weight * image


class ToyMethod(nn.Module):
    """A self-supervised method: learn to halve the image."""

    def __init__(self, loss=mse):
        super().__init__()
        self.net = Scale()
        self.loss = loss

    def forward(self, batch: dict) -> dict:
        image = batch["image"]
        loss = self.loss(self.net(image), 0.5 * image)
        return {"loss": loss, "loss/recon": loss.detach()}


def cases(count: int, nan_image=(), nan_label=()) -> list[dict]:
    """``case<i>.nii.gz`` items (MetaTensors with their file name), a NaN voxel in the images / labels listed."""
    items = []
    for i in range(count):
        image, label = torch.full(SHAPE, 1.0 + i), torch.full(SHAPE, 0.5 + 0.5 * i)
        if i in nan_image:
            image[0, 0, 0] = float("nan")
        if i in nan_label:
            label[0, 0, 0] = float("nan")
        meta = {"filename_or_obj": f"case{i}.nii.gz"}
        items.append({"image": MetaTensor(image, meta=dict(meta)), "label": MetaTensor(label, meta=dict(meta))})
    return items


def loader(items: list[dict], batch_size: int = 1) -> DataLoader:
    return DataLoader(items, batch_size=batch_size, shuffle=False, num_workers=0)


def ssl_trainer(items, method=None, max_epochs=1, batch_size=1, **kwargs) -> SelfSupervisedTrainer:
    method = method or ToyMethod()
    optimizer = torch.optim.Adam(method.parameters(), lr=0.1)
    return SelfSupervisedTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=loader(items, batch_size),
        method=method,
        optimizer=optimizer,
        **kwargs,
    )


def supervised_trainer(items, max_epochs=1, amp=False, handlers=()) -> SupervisedTrainer:
    network = Scale()
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=loader(items, batch_size=2),
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
        loss_function=masked_mse,
        amp=amp,
        train_handlers=list(handlers),
    )


def weights(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def record(engine, event, read) -> list:
    values = []
    engine.add_event_handler(event, lambda e: values.append(read(e)))
    return values


def all_finite(checkpoint: dict) -> bool:
    """Whether every floating tensor in a (nested) checkpoint is finite."""
    if isinstance(checkpoint, dict):
        return all(all_finite(value) for value in checkpoint.values())
    if isinstance(checkpoint, (list, tuple)):
        return all(all_finite(value) for value in checkpoint)
    return not (torch.is_tensor(checkpoint) and checkpoint.is_floating_point()) or bool(checkpoint.isfinite().all())


def test_batch_files_names_each_file_once_in_batch_order():
    crops = [{"image": item["image"]} for item in cases(2) for _ in range(2)]  # two random crops per volume
    assert batch_files(list_data_collate(crops)) == ["case0.nii.gz", "case1.nii.gz"]
    assert batch_files({"image": torch.zeros(2, 1, 4)}) == []
    assert batch_files(MetaTensor(torch.zeros(1), meta={"filename_or_obj": "a.nii.gz"})) == ["a.nii.gz"]
    assert describe_files([]) == "file names unknown"


def test_ssl_trainer_stops_at_a_nan_loss_before_the_step_and_saves_finite_weights(tmp_path):
    method = ToyMethod()
    trainer = ssl_trainer(cases(4, nan_image=[3]), method=method, batch_size=2)
    optimizer = trainer.optimizer
    # first among the exception handlers, so that it saves the training state when the error stops the run
    CheckpointSaver(str(tmp_path), {"method": method, "optimizer": optimizer, "trainer": trainer}, save_final=True,
                    final_filename="checkpoint_final.pt").attach(trainer)
    after_first = record(trainer, Events.ITERATION_COMPLETED, lambda e: weights(method))
    with pytest.raises(FloatingPointError, match=r"non-finite loss at iteration 2 \(epoch 1\): loss=nan.*; "
                       r"batch files: case2\.nii\.gz, case3\.nii\.gz\. Training stopped before the optimizer step"):
        trainer.run()
    torch.testing.assert_close(weights(method), after_first[0])
    assert all_finite(torch.load(tmp_path / "checkpoint_final.pt", weights_only=True))


def test_ssl_trainer_stops_at_non_finite_gradients_of_a_finite_loss_without_scaler():
    method = ToyMethod(loss=masked_mse)  # the NaN voxel is left out of the loss, not out of the gradients
    before = weights(method)
    with pytest.raises(FloatingPointError, match=r"non-finite gradient at iteration 1 \(epoch 1\) \(total norm nan\); "
                       r"batch files: case0\.nii\.gz, case1\.nii\.gz"):
        ssl_trainer(cases(2, nan_image=[1]), method=method, batch_size=2).run()
    torch.testing.assert_close(weights(method), before)


def test_ssl_trainer_scaler_skips_non_finite_steps_counts_them_and_checkpoints_its_state(caplog):
    method = ToyMethod(loss=masked_mse)
    trainer = ssl_trainer(cases(3, nan_image=[0]), method=method)
    trainer.scaler = torch.amp.GradScaler("cpu")  # what float16 amp on CUDA uses, on the CPU
    steps = record(trainer, Events.ITERATION_COMPLETED, lambda e: weights(method))
    with caplog.at_level(logging.WARNING, logger="common.engine.nonfinite"):
        trainer.run()
    assert "non-finite gradients at iteration 1 (epoch 1): the GradScaler skips this optimizer step" in caplog.text
    torch.testing.assert_close(steps[0], torch.ones(4))  # skipped
    assert not torch.equal(steps[1], steps[0]) and bool(steps[-1].isfinite().all())
    assert trainer.state.amp_skipped_steps == 1 and trainer.state.optimizer_steps == 3

    state = trainer.state_dict()
    assert state["scaler"]["scale"] == 32768.0 and state["amp_skipped_steps"] == 1
    resumed = ssl_trainer(cases(3))
    resumed.scaler = torch.amp.GradScaler("cpu")
    resumed.load_state_dict(state)
    assert resumed.scaler.get_scale() == 32768.0 and resumed.state.amp_skipped_steps == 1
    assert resumed.state.iteration == 3 and resumed.state.optimizer_steps == 3
    before_the_scaler = {key: value for key, value in state.items() if key not in ("scaler", "amp_skipped_steps")}
    resumed.load_state_dict(before_the_scaler)  # a checkpoint written before this change
    assert resumed.scaler.get_scale() == 32768.0
    on_cpu = ssl_trainer(cases(3))  # no scaler: the scaler's state is not needed
    on_cpu.load_state_dict(state)
    assert on_cpu.state.iteration == 3


def test_non_finite_guard_stops_supervised_trainer_at_a_nan_loss_naming_the_files(tmp_path):
    trainer = supervised_trainer(cases(4, nan_image=[2]), handlers=[NonFiniteGuard()])
    network, optimizer = trainer.network, trainer.optimizer
    CheckpointSaver(str(tmp_path), {"model": network, "optimizer": optimizer}, save_final=True,
                    final_filename="model.pt").attach(trainer)
    after_first = record(trainer, Events.ITERATION_COMPLETED, lambda e: weights(network))
    with pytest.raises(FloatingPointError, match=r"non-finite loss at iteration 2 \(epoch 1\) \(nan\); "
                       r"batch files: case2\.nii\.gz, case3\.nii\.gz"):
        trainer.run()
    torch.testing.assert_close(weights(network), after_first[0])
    assert all_finite(torch.load(tmp_path / "model.pt", weights_only=True))


@pytest.mark.filterwarnings("ignore:.*CUDA is not available")  # MONAI's amp asks for CUDA autocast and scaler
def test_non_finite_guard_stops_at_nan_gradients_and_lets_an_enabled_scaler_skip_them(caplog):
    plain = supervised_trainer(cases(2, nan_label=[1]), handlers=[NonFiniteGuard()])
    before = weights(plain.network)
    with pytest.raises(FloatingPointError, match=r"non-finite gradient at iteration 1 \(epoch 1\) \(total norm nan\)"):
        plain.run()
    torch.testing.assert_close(weights(plain.network), before)

    amp = supervised_trainer(cases(4, nan_label=[1]), amp=True, handlers=[NonFiniteGuard()])
    # MONAI creates a CUDA GradScaler when run() starts; the CPU one behaves the same here
    amp.add_event_handler(Events.STARTED, lambda e: setattr(e, "scaler", torch.amp.GradScaler("cpu")))
    with caplog.at_level(logging.WARNING, logger="common.engine.nonfinite"):
        amp.run()
    assert "non-finite gradients at iteration 1 (epoch 1)" in caplog.text and amp.state.amp_skipped_steps == 1
    assert bool(weights(amp.network).isfinite().all())

    state = TrainerState(amp).state_dict()
    assert state["iteration"] == 2 and state["scaler"]["scale"] == 32768.0 and state["amp_skipped_steps"] == 1
    resumed = supervised_trainer(cases(4), max_epochs=2, handlers=[NonFiniteGuard()])
    resumed.scaler = torch.amp.GradScaler("cpu")
    TrainerState(resumed).load_state_dict(state)
    assert resumed.scaler.get_scale() == 32768.0 and resumed.state.amp_skipped_steps == 1
    TrainerState(resumed).load_state_dict(amp.state_dict())  # the plain trainer's entry, as written before
    assert resumed.state.iteration == 2


def interruptible_run(tmp_path, signum=None, at_iteration=None, accumulation_steps=1, resume_from=None,
                      mlflow_handler=None):
    """A SelfSupervisedTrainer with a schedule and the bundles' checkpoint handlers, 3 iterations per epoch, 2
    epochs; ``signum`` sent to this process during iteration ``at_iteration``. Returns (trainer, method)."""
    method = ToyMethod()
    trainer = ssl_trainer(cases(3), method=method, max_epochs=2, accumulation_steps=accumulation_steps)
    handlers = [
        GracefulInterrupt(str(tmp_path), mlflow_handler=mlflow_handler),
        MidEpochResume(),
        lr_schedule(trainer.optimizer, lr=0.1, min_lr=0.01, warmup_steps=2),
    ]
    for handler in handlers:
        handler.attach(trainer)
    if signum is not None:
        trainer.add_event_handler(Events.ITERATION_STARTED(once=at_iteration), lambda e: os.kill(os.getpid(), signum))
    save_dict = {"method": method, "optimizer": trainer.optimizer, "trainer": trainer}
    if resume_from is not None:
        CheckpointLoader(str(resume_from), save_dict).attach(trainer)
    CheckpointSaver(str(tmp_path), save_dict, file_prefix="", save_interval=1, n_saved=1, save_final=True,
                    final_filename="checkpoint_final.pt").attach(trainer)
    return trainer, method


@pytest.mark.parametrize(
    "signum, at_iteration, accumulation_steps, stop",
    [
        (signal.SIGINT, 2, 1, 2),  # inside the first epoch
        (signal.SIGTERM, 3, 1, 3),  # at its last iteration: after the epoch's end handlers
        (signal.SIGINT, 4, 2, 5),  # inside an accumulation window (iterations 4-5): at its optimizer step
    ],
)
def test_signal_checkpoints_the_iteration_and_resume_ends_where_an_uninterrupted_run_ends(
    tmp_path, caplog, signum, at_iteration, accumulation_steps, stop
):
    torch.manual_seed(0)
    reference, reference_method = interruptible_run(tmp_path / "reference", accumulation_steps=accumulation_steps)
    reference.run()

    previous_handler = signal.getsignal(signal.SIGINT)
    mlflow = SimpleNamespace(run_finish_status="FINISHED")
    first, _ = interruptible_run(tmp_path, signum, at_iteration, accumulation_steps, mlflow_handler=mlflow)
    epochs_completed = record(first, Events.EPOCH_COMPLETED, lambda e: e.state.epoch)
    with caplog.at_level(logging.WARNING, logger="common.engine.interrupt"):
        first.run()
    assert first.state.iteration == stop and epochs_completed == list(range(1, stop // 3 + 1))
    assert f"training stopped by {signal.Signals(signum).name} at iteration {stop}" in caplog.text
    assert f"saved in {tmp_path}: continue it with the same command and --resume true" in caplog.text
    assert signal.getsignal(signal.SIGINT) is previous_handler and mlflow.run_finish_status == "KILLED"
    with pytest.raises(SystemExit) as stopped:
        exit_if_interrupted(first)
    assert stopped.value.code == 128 + signum
    checkpoint = torch.load(tmp_path / "checkpoint_final.pt", weights_only=True)
    assert checkpoint["trainer"]["iteration"] == stop

    second, method = interruptible_run(
        tmp_path / "resumed", accumulation_steps=accumulation_steps, resume_from=tmp_path / "checkpoint_final.pt"
    )
    started = record(second, Events.ITERATION_STARTED, lambda e: (e.state.iteration, e.state.epoch))
    adam_steps = record(second, Events.ITERATION_STARTED, lambda e: float(e.optimizer.state_dict()["state"][0]["step"]))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        second.run()
    assert started[0] == (stop + 1, 1 if stop < 3 else 2) and len(started) == 6 - stop
    resumed_at = f"training from iteration {stop + 1}, epoch {started[0][1]}, until epoch 2"
    assert f"resuming after iteration {stop}: {resumed_at}" in caplog.text
    assert "Engine run resuming from iteration" not in caplog.text  # ignite's line, written before the loading
    assert adam_steps[0] == float(checkpoint["optimizer"]["state"][0]["step"]) == first.state.optimizer_steps
    torch.testing.assert_close(weights(method), weights(reference_method))
    assert second.state.optimizer_steps == reference.state.optimizer_steps
    exit_if_interrupted(second)  # not interrupted: returns


def test_mid_epoch_resume_skips_nothing_of_a_new_random_order():
    """Shuffled data draws a new order on resume: nothing of the epoch is skipped (that would only cost loading)."""
    shuffled = DataLoader(cases(3), batch_size=1, shuffle=True)
    trainer = ssl_trainer(cases(3))
    trainer.state.dataloader, trainer.state.epoch_length, trainer.state.iteration = shuffled, 3, 1
    MidEpochResume()(trainer)
    assert trainer.state.dataloader is shuffled


def test_second_ctrl_c_aborts_at_once_without_a_checkpoint_and_sigterm_does_not(tmp_path):
    previous_handler = signal.getsignal(signal.SIGINT)

    def send(*signums):
        def handler(engine):
            for signum in signums:
                os.kill(os.getpid(), signum)

        return handler

    trainer, _ = interruptible_run(tmp_path / "twice")
    trainer.add_event_handler(Events.ITERATION_STARTED(once=2), send(signal.SIGINT, signal.SIGINT))
    with pytest.raises(KeyboardInterrupt, match="SIGINT while stopping: training aborted without saving a checkpoint"):
        trainer.run()
    assert trainer.state.iteration == 2 and not (tmp_path / "twice" / "checkpoint_final.pt").exists()
    assert signal.getsignal(signal.SIGINT) is previous_handler

    # torchrun answers a Ctrl-C with a SIGTERM to each worker, which got the SIGINT too
    trainer, _ = interruptible_run(tmp_path / "torchrun")
    trainer.add_event_handler(Events.ITERATION_STARTED(once=2), send(signal.SIGINT, signal.SIGTERM))
    trainer.run()
    assert trainer.state.iteration == 2 and (tmp_path / "torchrun" / "checkpoint_final.pt").exists()


def test_distributed_ranks_agree_on_the_stop(tmp_path):
    trainer = ssl_trainer(cases(3), max_epochs=2)
    GracefulInterrupt(str(tmp_path)).attach(trainer)
    trainer.add_event_handler(Events.ITERATION_STARTED(once=1), lambda e: os.kill(os.getpid(), signal.SIGINT))
    # a one-process gloo group: the stop flag goes through the all-reduce; without checkpoint handlers, whose use
    # of ignite.distributed would outlive the group
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        trainer.run()
    finally:
        dist.destroy_process_group()
    assert trainer.state.iteration == 1


def test_periodic_validation_validates_at_the_last_epoch_once_and_names_the_best_model(tmp_path, caplog):
    def train(max_epochs, interval, stop_after_epoch=None):
        trainer = supervised_trainer(cases(2), max_epochs=max_epochs)
        evaluator = SupervisedEvaluator(
            device=torch.device("cpu"),
            val_data_loader=loader(cases(2)),
            network=trainer.network,
            key_val_metric={"val_mse": MeanSquaredError(output_transform=from_engine(["pred", "label"]))},
        )
        validated = record(evaluator, Events.STARTED, lambda e: e.state.epoch + 1)
        PeriodicValidation(interval, evaluator, str(tmp_path / "model.pt")).attach(trainer)
        if stop_after_epoch is not None:
            trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after_epoch), lambda e: e.terminate())
        trainer.run()
        return validated

    with caplog.at_level(logging.INFO, logger="common.engine.validation"):
        assert train(max_epochs=2, interval=14) == [2]
        assert f"best model: {tmp_path / 'model.pt'} (val_mse " in caplog.text and " at epoch 2)" in caplog.text
        assert train(max_epochs=2, interval=1) == [1, 2]
        assert train(max_epochs=3, interval=14, stop_after_epoch=1) == []
    assert "no validation ran in this run (every 14 epochs and at the last, epoch 3; stopped at epoch 1)" in caplog.text


def test_progress_bar_shows_the_loss():
    bars = {}
    for name, transform in [("ssl", logged_scalars), ("supervised", from_engine(["loss"], first=True))]:
        bars[name] = io.StringIO()
        bar = ProgressBar(desc=name, output_transform=transform, file=bars[name])
        trainer = ssl_trainer(cases(2)) if name == "ssl" else supervised_trainer(cases(2))
        bar.attach(trainer)
        trainer.run()
    assert "loss=" in bars["ssl"].getvalue() and "loss/recon=" in bars["ssl"].getvalue()
    assert "loss=" in bars["supervised"].getvalue()
