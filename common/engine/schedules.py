"""Per-optimizer-step schedules of self-supervised pre-training and the parameter groups they act on.

* learning rate: linear warm-up from 0, then cosine decay to ``min_lr`` (MAE, SparK, DINO);
* weight decay: cosine from ``weight_decay`` to ``final_weight_decay``, e.g. 0.04 -> 0.4 in DINO, 0.04 -> 0.2 in
  SparK, applied only to the decaying parameter group of :func:`param_groups`.

A schedule's clock is the optimizer step, not the iteration: with gradient accumulation every iteration of a window
sees the value of the step the window ends with, a shorter last window of an epoch is one step like the others,
and the length of the warm-up and of the whole schedule are counted in the steps the run really makes
(:func:`common.engine.accumulation.optimizer_steps_per_epoch`), whatever the world size and accumulation.

The schedules are stateless: each value is a function of the trainer's step count (``engine.state.optimizer_steps``,
checkpointed with the trainer), so a resumed run continues the schedule where it stopped without extra checkpoint
entries. ignite's ``CosineAnnealingScheduler`` / ``create_lr_scheduler_with_warmup`` were not used for that reason
(their progress is an internal counter that restarts at 0 unless the scheduler itself is checkpointed, and it
counts iterations), and because a ``CyclicalScheduler`` restarts its cycle instead of reaching and holding its end
value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ignite.engine import Engine, Events
from torch import nn
from torch.optim import Optimizer

from common.engine.accumulation import optimizer_step_index, optimizer_steps_per_epoch

# Parameters never decayed whatever their shape (SparK / MAE convention), besides biases and 1-D tensors.
NO_DECAY_NAMES = ("mask_token", "pos_embed", "position_embeddings", "cls_token")


def warmup_cosine(
    step: int,
    *,
    peak_value: float,
    end_value: float,
    total_steps: int,
    warmup_steps: int = 0,
    warmup_start_value: float = 0.0,
) -> float:
    """Linear warm-up then half-cosine: the value at 0-based ``step``.

    ``warmup_start_value`` at step 0, linear to ``peak_value`` at step ``warmup_steps``, then
    ``end_value + (peak_value - end_value) * (1 + cos(pi * progress)) / 2`` with progress going from 0 there to 1
    at step ``total_steps - 1``; ``end_value`` after that. ``end_value`` may exceed ``peak_value`` (an increasing
    schedule, e.g. weight decay or teacher momentum).
    """
    if step < warmup_steps:
        return warmup_start_value + (peak_value - warmup_start_value) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - 1 - warmup_steps))
    return end_value + (peak_value - end_value) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups ``[decay, no_decay]`` of the trainable parameters of ``module``.

    The no-decay group (``weight_decay`` 0) holds biases, norm weights and any other parameter with at most one
    dimension, and every parameter whose name contains one of :data:`NO_DECAY_NAMES`. Frozen parameters
    (``requires_grad=False``, e.g. a momentum teacher) are left out. Either group may be empty.

    Args:
        module: the method (student, heads, mask token, ...).
        weight_decay: weight decay of the decay group.
    """
    decay, no_decay = [], []
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        exempt = parameter.ndim <= 1 or name.endswith(".bias") or any(key in name for key in NO_DECAY_NAMES)
        (no_decay if exempt else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class CosineSchedule:
    """Sets an optimizer hyper-parameter at every iteration start to :func:`warmup_cosine` of the optimizer step that
    the iteration's accumulation window ends with (:func:`common.engine.accumulation.optimizer_step_index`).

    Args:
        optimizer: the optimizer whose ``param_groups`` are updated.
        param_name: the group entry to set, e.g. ``"lr"`` or ``"weight_decay"``.
        peak_value: value at the end of the warm-up (at the start when there is none).
        end_value: value at the last optimizer step and after.
        warmup_steps: optimizer steps of the linear warm-up from ``warmup_start_value``.
        warmup_epochs: the warm-up in epochs instead (``warmup_steps`` must then be 0): that many epochs' optimizer
            steps, rounded, when attached.
        warmup_start_value: value at the first step when warming up.
        total_steps: optimizer steps of the whole run; ``None``: ``max_epochs`` times the engine's optimizer steps
            per epoch when attached.
        param_group_indices: the groups to set; ``None``: all.

    Raises:
        ValueError: both ``warmup_steps`` and ``warmup_epochs`` are given.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        param_name: str,
        *,
        peak_value: float,
        end_value: float,
        warmup_steps: int = 0,
        warmup_epochs: float = 0.0,
        warmup_start_value: float = 0.0,
        total_steps: int | None = None,
        param_group_indices: Sequence[int] | None = None,
    ) -> None:
        if warmup_steps and warmup_epochs:
            raise ValueError(f"{param_name} schedule: give warmup_steps or warmup_epochs, not both")
        self.optimizer = optimizer
        self.param_name = param_name
        self.peak_value = peak_value
        self.end_value = end_value
        self.warmup_steps = warmup_steps
        self.warmup_epochs = warmup_epochs
        self.warmup_start_value = warmup_start_value
        self.total_steps = total_steps
        indices = range(len(optimizer.param_groups)) if param_group_indices is None else param_group_indices
        self.param_group_indices = list(indices)

    def attach(self, engine: Engine) -> None:
        """Count the warm-up and the run in optimizer steps when ``engine`` starts (a trainer's accumulation is known
        only after its handlers are attached: MONAI's ``SupervisedTrainer`` sets it last), then set the value at every
        ``ITERATION_STARTED``."""
        engine.add_event_handler(Events.STARTED, self.count_steps)
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def count_steps(self, engine: Engine) -> None:
        """``warmup_steps`` from ``warmup_epochs``, and ``total_steps`` when not given.

        Raises:
            ValueError: the length of the run or of the warm-up needs the engine's epoch length, which is unknown.
        """
        if self.warmup_epochs:
            self.warmup_steps = round(self.warmup_epochs * optimizer_steps_per_epoch(engine))
        if self.total_steps is None:
            self.total_steps = engine.state.max_epochs * optimizer_steps_per_epoch(engine)

    def __call__(self, engine: Engine) -> None:
        value = warmup_cosine(
            optimizer_step_index(engine),
            peak_value=self.peak_value,
            end_value=self.end_value,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
            warmup_start_value=self.warmup_start_value,
        )
        for index in self.param_group_indices:
            self.optimizer.param_groups[index][self.param_name] = value


def lr_schedule(
    optimizer: Optimizer,
    *,
    lr: float,
    min_lr: float,
    warmup_steps: int = 0,
    warmup_epochs: float = 0.0,
    warmup_start_lr: float = 0.0,
    total_steps: int | None = None,
) -> CosineSchedule:
    """Learning rate of all groups: linear warm-up from ``warmup_start_lr`` to ``lr``, then cosine to ``min_lr``, per
    optimizer step.

    See :class:`CosineSchedule` for the arguments; the handler goes into ``train_handlers``.
    """
    return CosineSchedule(
        optimizer,
        "lr",
        peak_value=lr,
        end_value=min_lr,
        warmup_steps=warmup_steps,
        warmup_epochs=warmup_epochs,
        warmup_start_value=warmup_start_lr,
        total_steps=total_steps,
    )


def weight_decay_schedule(
    optimizer: Optimizer,
    *,
    weight_decay: float,
    final_weight_decay: float,
    total_steps: int | None = None,
) -> CosineSchedule:
    """Weight decay: cosine from ``weight_decay`` to ``final_weight_decay``, per optimizer step.

    Only groups whose weight decay is non-zero when this is called are scheduled, so the no-decay group of
    :func:`param_groups` stays at 0. See :class:`CosineSchedule` for the arguments.
    """
    decaying = [index for index, group in enumerate(optimizer.param_groups) if group.get("weight_decay", 0.0) > 0]
    return CosineSchedule(
        optimizer,
        "weight_decay",
        peak_value=weight_decay,
        end_value=final_weight_decay,
        total_steps=total_steps,
        param_group_indices=decaying,
    )
