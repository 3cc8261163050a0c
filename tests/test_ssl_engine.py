"""common.engine's self-supervised trainer, schedules, momentum teacher and reconstruction snapshots (CPU, tiny)."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
from ignite.engine import Events
from mlflow.tracking import MlflowClient
from monai.handlers import CheckpointLoader, CheckpointSaver, MLFlowHandler
from PIL import Image, ImageFont
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.utils.data import DataLoader

from common.engine import (
    MomentumTeacher,
    OptimizerEvents,
    ReconstructionSnapshots,
    SelfSupervisedTrainer,
    latest_checkpoint,
    logged_scalars,
    lr_schedule,
    param_groups,
    warmup_cosine,
    weight_decay_schedule,
)
from common.previews import HEADER_HEIGHT, column_label_lines, orthogonal_slices_png
from toy_methods import ToyAutoencoder

SHAPE = (1, 8, 8, 8)


class ToyTeacherStudent(nn.Module):
    """A linear student and its EMA teacher; it has no images to show, even when asked."""

    def __init__(self):
        super().__init__()
        self.student = nn.Linear(8, 2)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)

    def forward(self, batch: dict, images: bool = False) -> dict:
        features = batch["image"].flatten(1)[:, :8]
        loss = (self.student(features) - self.teacher(features)).pow(2).mean() + self.student(features).mean()
        return {"loss": loss, "loss/distill": loss.detach()}

    def update_teacher(self, momentum: float) -> None:
        for teacher, student in zip(self.teacher.parameters(), self.student.parameters()):
            teacher.mul_(momentum).add_(student.detach(), alpha=1 - momentum)


class BrokenMethod(nn.Module):
    def __init__(self, result: dict):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))
        self.result = result

    def forward(self, batch: dict) -> dict:
        return {key: value * self.weight if key == "loss" else value for key, value in self.result.items()}


def loader(num_samples: int = 2, batch_size: int = 2, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    data = [{"image": torch.rand(SHAPE, generator=generator), "name": f"case{i}"} for i in range(num_samples)]
    return DataLoader(data, batch_size=batch_size, shuffle=False)


def make_trainer(method, data, *, max_epochs=1, optimizer=None, **kwargs) -> SelfSupervisedTrainer:
    optimizer = optimizer or torch.optim.SGD(method.parameters(), lr=0.1)
    return SelfSupervisedTrainer(
        device="cpu", max_epochs=max_epochs, train_data_loader=data, method=method, optimizer=optimizer, **kwargs
    )


def record(trainer, event, read):
    values = []
    trainer.add_event_handler(event, lambda engine: values.append(read(engine)))
    return values


def flat_parameters(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def test_loss_decreases_and_the_output_holds_float_terms_and_first_sample_images_when_requested():
    torch.manual_seed(0)
    method = ToyAutoencoder()
    trainer = make_trainer(method, loader(), max_epochs=20, optimizer=torch.optim.Adam(method.parameters(), lr=1e-2))
    trainer.add_event_handler(Events.ITERATION_STARTED(once=20), lambda e: setattr(e, "images_requested", True))
    losses = record(trainer, Events.ITERATION_COMPLETED, lambda e: e.state.output["loss"])
    with_images = record(trainer, Events.ITERATION_COMPLETED, lambda e: "images" in e.state.output)
    trainer.run()
    assert len(losses) == 20 and losses[-1] < 0.5 * losses[0]
    assert with_images == [False] * 19 + [True] and not trainer.images_requested  # built only when requested
    output = trainer.state.output
    assert type(output["loss"]) is float and type(output["loss/recon"]) is float
    assert output["loss"] == pytest.approx(output["loss/recon"])
    assert logged_scalars(output) == {"loss": output["loss"], "loss/recon": output["loss/recon"]}
    assert list(output["images"]) == ["input", "reconstruction"]
    assert logged_scalars({"loss": 1.0, "stat/std": 0.5, "images": {}, "lossy": 2.0}) == {"loss": 1.0, "stat/std": 0.5}
    assert all(image.shape == SHAPE and not image.requires_grad for image in output["images"].values())
    assert method.batch_keys == {"image", "name"}
    assert trainer.state.optimizer_steps == 20


def test_amp_on_cpu_is_bfloat16_autocast_without_scaler():
    trainer = make_trainer(ToyAutoencoder(), loader(), amp=True)
    trainer.run()
    assert trainer.amp_dtype == torch.bfloat16 and trainer.scaler is None
    assert math.isfinite(trainer.state.output["loss"])


def test_gradient_accumulation_matches_one_step_on_the_larger_batch():
    torch.manual_seed(0)
    accumulated, large_batch = ToyAutoencoder(), ToyAutoencoder()
    large_batch.load_state_dict(accumulated.state_dict())
    before = flat_parameters(accumulated)
    two_small = make_trainer(accumulated, loader(2, batch_size=1), accumulation_steps=2)
    one_large = make_trainer(large_batch, loader(2, batch_size=2))
    two_small.run()
    one_large.run()
    assert two_small.state.optimizer_steps == one_large.state.optimizer_steps == 1
    assert not torch.allclose(flat_parameters(accumulated), before)
    torch.testing.assert_close(flat_parameters(accumulated), flat_parameters(large_batch), rtol=1e-5, atol=1e-7)

    # a shorter last window is stepped at the end of the epoch: 3 iterations -> steps after 2 and 3
    three = make_trainer(ToyAutoencoder(), loader(3, batch_size=1), max_epochs=2, accumulation_steps=2)
    steps = record(three, Events.ITERATION_COMPLETED, lambda e: e.state.optimizer_steps)
    three.run()
    assert steps == [0, 1, 2, 2, 3, 4]


def test_a_short_last_window_steps_with_the_mean_gradient_of_its_batches():
    torch.manual_seed(0)
    method = ToyAutoencoder()
    data = loader(5, batch_size=1)
    trainer = make_trainer(method, data, accumulation_steps=3)  # windows: iterations 1-3, then 4-5 of 5
    starts, gradients = [], []
    trainer.add_event_handler(Events.ITERATION_STARTED(once=4), lambda e: starts.append(copy.deepcopy(method)))
    trainer.add_event_handler(OptimizerEvents.STEP_COMPLETED,
                              lambda e: gradients.append([p.grad.clone() for p in method.parameters()]))
    trainer.run()
    assert trainer.state.optimizer_steps == 2
    window = starts[0]  # the weights the last window's gradients were taken at
    for batch in list(data)[3:]:
        (window(batch)["loss"] / 2).backward()  # the mean over the window's two batches
    for expected, taken in zip(window.parameters(), gradients[1]):
        torch.testing.assert_close(taken, expected.grad)


@pytest.fixture
def single_process_group():
    """A one-process gloo group: enough for DistributedDataParallel's gradient all-reduce and its hooks."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_distributed_accumulation_all_reduces_once_per_optimizer_step(single_process_group):
    torch.manual_seed(0)
    plain, wrapped = ToyAutoencoder(), ToyAutoencoder()
    wrapped.load_state_dict(plain.state_dict())
    distributed = nn.parallel.DistributedDataParallel(wrapped)
    reduced_buckets = []

    def counting_allreduce(process_group, bucket):
        reduced_buckets.append(bucket.index())
        return allreduce_hook(process_group, bucket)

    distributed.register_comm_hook(None, counting_allreduce)
    # 3 iterations per epoch in windows of 2: optimizer steps after iterations 2, 3, 5 and 6
    trainers = [
        make_trainer(method, loader(3, batch_size=1), max_epochs=2, accumulation_steps=2)
        for method in (plain, distributed)
    ]
    for trainer in trainers:
        trainer.run()
    assert trainers[1].state.optimizer_steps == 4
    assert len(reduced_buckets) == 4 * len(set(reduced_buckets))
    torch.testing.assert_close(flat_parameters(wrapped), flat_parameters(plain))


@pytest.mark.parametrize("clip", [None, 1.0])
def test_grad_clipping_bounds_the_update(clip):
    torch.manual_seed(0)
    method = ToyAutoencoder(loss_scale=1e6)
    before = flat_parameters(method)
    make_trainer(method, loader(), optimizer=torch.optim.SGD(method.parameters(), lr=1.0), grad_clip_norm=clip).run()
    update = (flat_parameters(method) - before).norm().item()  # SGD, lr 1: the update is the clipped gradient
    if clip is None:
        assert update > 1e3
    else:
        assert update == pytest.approx(clip, rel=1e-4)


def test_non_finite_or_missing_loss_raises_a_clear_error():
    nan = BrokenMethod({"loss": torch.tensor(float("nan")), "loss/recon": torch.tensor(0.5)})
    with pytest.raises(FloatingPointError, match=r"non-finite loss at iteration 1 .*loss=nan, loss/recon=0\.5"):
        make_trainer(nan, loader()).run()
    with pytest.raises(ValueError, match="must return a dict with 'loss'.*'loss/recon'"):
        make_trainer(BrokenMethod({"loss/recon": torch.tensor(0.5)}), loader()).run()


def test_param_groups_exempt_biases_norms_tokens_and_skip_frozen_parameters():
    module = nn.Module()
    module.conv = nn.Conv3d(1, 4, 3)
    module.norm = nn.LayerNorm(4)
    module.mask_token = nn.Parameter(torch.zeros(1, 4, 1, 1, 1))
    module.pos_embed = nn.Parameter(torch.zeros(1, 8, 4))
    module.teacher = nn.Linear(4, 4).requires_grad_(False)
    decay, no_decay = param_groups(module, weight_decay=0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [p is module.conv.weight for p in decay["params"]] == [True]
    expected = [module.conv.bias, module.norm.weight, module.norm.bias, module.mask_token, module.pos_embed]
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in expected}


def test_lr_warmup_cosine_and_weight_decay_schedules_per_iteration():
    method = ToyAutoencoder()
    optimizer = torch.optim.AdamW(param_groups(method, weight_decay=0.04), lr=123.0)
    schedules = [
        lr_schedule(optimizer, lr=1.0, min_lr=0.01, warmup_steps=3),
        weight_decay_schedule(optimizer, weight_decay=0.04, final_weight_decay=0.2),
    ]
    trainer = make_trainer(method, loader(5, batch_size=1), max_epochs=2, optimizer=optimizer, train_handlers=schedules)
    groups = record(trainer, Events.ITERATION_STARTED, lambda e: copy.deepcopy(optimizer.param_groups))
    trainer.run()
    lrs = [g[0]["lr"] for g in groups]
    assert all(g[0]["lr"] == g[1]["lr"] for g in groups)
    assert len(lrs) == 10 and lrs[:4] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert lrs[-1] == pytest.approx(0.01) and all(a > b for a, b in zip(lrs[3:], lrs[4:]))
    decays = [g[0]["weight_decay"] for g in groups]
    assert decays[0] == pytest.approx(0.04) and decays[-1] == pytest.approx(0.2)
    assert all(a < b for a, b in zip(decays, decays[1:]))
    assert all(g[1]["weight_decay"] == 0.0 for g in groups)


def test_schedules_count_optimizer_steps_when_gradients_accumulate():
    method = ToyAutoencoder()
    optimizer = torch.optim.SGD(method.parameters(), lr=123.0)
    schedule = lr_schedule(optimizer, lr=1.0, min_lr=0.01, warmup_epochs=1)
    # 5 iterations per epoch in windows of 2: windows 1-2, 3-4, 5 (short), 3 optimizer steps per epoch, 6 in all
    trainer = make_trainer(method, loader(5, batch_size=1), max_epochs=2, optimizer=optimizer, accumulation_steps=2,
                           train_handlers=[schedule])
    lrs = record(trainer, Events.ITERATION_STARTED, lambda e: optimizer.param_groups[0]["lr"])
    trainer.run()
    assert (schedule.warmup_steps, schedule.total_steps, trainer.state.optimizer_steps) == (3, 6, 6)
    per_step = [warmup_cosine(step, peak_value=1.0, end_value=0.01, total_steps=6, warmup_steps=3) for step in range(6)]
    windows = [0, 0, 1, 1, 2, 3, 3, 4, 4, 5]  # the step each iteration's window ends with
    assert lrs == pytest.approx([per_step[step] for step in windows])
    assert per_step[:4] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0]) and per_step[-1] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="not both"):
        lr_schedule(optimizer, lr=1.0, min_lr=0.01, warmup_steps=2, warmup_epochs=1)


def test_momentum_teacher_follows_the_cosine_from_base_to_one():
    torch.manual_seed(0)
    method = ToyTeacherStudent()
    trainer = make_trainer(method, loader(4, batch_size=1), train_handlers=[MomentumTeacher(base_momentum=0.9)])
    teacher_before = record(trainer, Events.ITERATION_STARTED, lambda e: flat_parameters(method.teacher))
    after = record(
        trainer,
        Events.ITERATION_COMPLETED,
        lambda e: (e.state.teacher_momentum, flat_parameters(method.student), flat_parameters(method.teacher)),
    )
    trainer.run()
    momentum, student, teacher = after[0]
    assert momentum == pytest.approx(0.9)
    assert not torch.allclose(teacher, teacher_before[0])
    torch.testing.assert_close(teacher, momentum * teacher_before[0] + (1 - momentum) * student)
    momenta = [m for m, _, _ in after]
    assert momenta[-1] == 1.0 and all(a < b for a, b in zip(momenta, momenta[1:]))
    assert momenta[1] == pytest.approx(warmup_cosine(1, peak_value=0.9, end_value=1.0, total_steps=4))


def test_momentum_teacher_counts_optimizer_steps_and_needs_update_teacher():
    method = ToyTeacherStudent()
    teacher = MomentumTeacher()
    data = loader(5, batch_size=1)
    trainer = make_trainer(method, data, max_epochs=2, accumulation_steps=2, train_handlers=[teacher])
    assert teacher.total_steps == 6  # 2 epochs x ceil(5 / 2)
    trainer.run()
    assert trainer.state.optimizer_steps == 6 and trainer.state.teacher_momentum == 1.0
    with pytest.raises(TypeError, match="update_teacher"):
        make_trainer(ToyAutoencoder(), loader(), train_handlers=[MomentumTeacher()])


def test_orthogonal_slices_png_3d_grid_size_views_and_column_names(tmp_path):
    volume = torch.zeros(1, 6, 8, 10)  # (C, x, y, z)
    volume[..., 5] = 1.0  # the central axial plane (z = 10 // 2)
    path = orthogonal_slices_png({"input": volume, "target": 2.0 * volume}, tmp_path / "grid.png", upscale=3)
    image = Image.open(path)
    # tiles: axial (y, x) = 8 x 6, coronal (z, x) = 10 x 6, sagittal (z, y) = 10 x 8 -> 10 x 8 tiles, under the header
    assert image.mode == "L" and image.size == (2 * 8 * 3, HEADER_HEIGHT + 3 * 10 * 3)
    assert image.text == {"columns": "input, target", "rows": "axial, coronal, sagittal"}
    header = np.asarray(image)[:HEADER_HEIGHT]
    assert all((column == 255).any() for column in np.split(header, 2, axis=1))  # each column's name, in white
    pixels = np.asarray(image)[HEADER_HEIGHT::3, ::3]
    axial, coronal = pixels[0:10, 0:8], pixels[10:20, 0:8]
    assert (axial[1:9, 1:7] == 255).all() and (axial[0] == 0).all()  # 8 x 6 slice centred in the tile
    assert coronal[:, 1:7].tolist() == [[255 if row == 10 - 1 - 5 else 0] * 6 for row in range(10)]
    np.testing.assert_array_equal(pixels[:, 8:], pixels[:, :8])  # values clipped to [0, 1]


def test_column_names_wrap_at_underscores_and_are_cut_short_to_fit_their_column():
    font = ImageFont.load_default_imagefont()  # 6 pixels a character
    assert column_label_lines("level1_reconstruction", 3 * 64, font) == ["level1 reconstruction"]
    assert column_label_lines("level1_reconstruction", 64, font) == ["level1", "reconstru."]  # 10 characters
    assert column_label_lines("one_two_three", 30, font) == ["one", "two."]  # the last line takes the rest


def test_orthogonal_slices_png_2d_is_a_single_row(tmp_path):
    images = {name: torch.rand(1, 12, 16) for name in ("input", "masked", "reconstruction")}
    image = Image.open(orthogonal_slices_png(images, tmp_path / "2d.png", upscale=2))
    assert image.size == (3 * 16 * 2, HEADER_HEIGHT + 12 * 2)
    with pytest.raises(ValueError, match="all \\(C, H, W\\) or all"):
        orthogonal_slices_png({"a": torch.rand(1, 4, 4), "b": torch.rand(1, 4, 4, 4)}, tmp_path / "mixed.png")


@pytest.mark.parametrize(("epoch_length", "written"), [(5, [2, 4, 5]), (4, [2, 4])])
def test_snapshots_are_written_at_the_interval_and_at_completion(tmp_path, epoch_length, written):
    """Images are built at those iterations only: the handler requests them at the interval and at the last one."""
    snapshots = ReconstructionSnapshots(tmp_path, interval=2, upscale=2)
    trainer = make_trainer(ToyAutoencoder(), loader(epoch_length, batch_size=1), train_handlers=[snapshots])
    with_images = record(trainer, Events.ITERATION_COMPLETED, lambda e: "images" in e.state.output)
    trainer.run()
    assert [i for i, built in enumerate(with_images, start=1) if built] == written
    expected = [tmp_path / "reconstructions" / f"iteration_{i:06d}.png" for i in written]
    assert snapshots.paths == expected
    assert sorted((tmp_path / "reconstructions").iterdir()) == expected
    assert Image.open(expected[0]).size == (2 * 8 * 2, HEADER_HEIGHT + 3 * 8 * 2)


def test_snapshots_without_images_write_nothing(tmp_path):
    snapshots = ReconstructionSnapshots(tmp_path, interval=1)
    make_trainer(ToyTeacherStudent(), loader(), train_handlers=[snapshots]).run()
    assert snapshots.paths == [] and not (tmp_path / "reconstructions").exists()


def test_mlflow_run_gets_every_named_loss_and_the_final_snapshot(tmp_path):
    mlflow_handler = MLFlowHandler(
        tracking_uri=f"sqlite:///{tmp_path}/mlruns.db",
        experiment_name="ssl",
        run_name="toy",
        output_transform=logged_scalars,
        close_on_complete=True,  # attached first: closes the run before the final snapshot is written
    )
    snapshots = ReconstructionSnapshots(tmp_path / "eval", interval=100, mlflow_handler=mlflow_handler)
    trainer = make_trainer(ToyAutoencoder(), loader(3, batch_size=1), train_handlers=[mlflow_handler, snapshots])
    trainer.run()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns.db")
    (run,) = client.search_runs([client.get_experiment_by_name("ssl").experiment_id])
    assert {"loss", "loss/recon", "lr_group_0"} <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/recon")] == [1, 2, 3]
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "reconstructions")]
    assert artifacts == ["reconstructions/iteration_000003.png"] and snapshots.paths[0].is_file()


def test_checkpoint_and_resume_continue_at_the_right_epoch_and_iteration(tmp_path):
    def setup(max_epochs):
        method = ToyAutoencoder()
        optimizer = torch.optim.Adam(method.parameters(), lr=1e-2)
        schedule = lr_schedule(optimizer, lr=1e-2, min_lr=1e-4, warmup_steps=2, total_steps=4)
        trainer = make_trainer(method, loader(2, batch_size=1), max_epochs=max_epochs, optimizer=optimizer)
        schedule.attach(trainer)
        return method, optimizer, trainer

    torch.manual_seed(0)
    method, optimizer, first = setup(max_epochs=1)
    save_dict = {"method": method, "optimizer": optimizer, "trainer": first}
    CheckpointSaver(str(tmp_path), save_dict, file_prefix="", save_interval=1, n_saved=1).attach(first)
    first.run()
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint is not None and first.state.optimizer_steps == 2

    method2, optimizer2, second = setup(max_epochs=2)
    load_dict = {"method": method2, "optimizer": optimizer2, "trainer": second}
    CheckpointLoader(str(checkpoint), load_dict).attach(second)
    started = record(second, Events.ITERATION_STARTED, lambda e: (e.state.iteration, e.state.epoch))
    lrs = record(second, Events.ITERATION_STARTED, lambda e: optimizer2.param_groups[0]["lr"])
    weights = record(second, Events.ITERATION_STARTED, lambda e: flat_parameters(method2))
    second.run()
    assert started == [(3, 2), (4, 2)]
    expected_lr = warmup_cosine(2, peak_value=1e-2, end_value=1e-4, total_steps=4, warmup_steps=2)
    assert lrs[0] == pytest.approx(expected_lr)  # the schedule continues, it does not restart its warm-up
    torch.testing.assert_close(weights[0], flat_parameters(method))
    assert second.state.epoch == 2 and second.state.iteration == 4 and second.state.optimizer_steps == 4
