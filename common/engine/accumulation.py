"""Which iterations end with an optimizer step when gradients are accumulated, and how many steps an epoch makes."""

from __future__ import annotations

import math

from ignite.engine import Engine


def ends_accumulation_window(engine: Engine) -> bool:
    """Whether iteration ``engine.state.iteration`` ends with an optimizer step.

    Windows of ``engine.accumulation_steps`` iterations (1 when the engine has no such attribute) start with each
    epoch, and the last window of an epoch is stepped at the epoch's end, as MONAI's ``SupervisedTrainer`` and
    :class:`common.engine.SelfSupervisedTrainer` do; with an unknown epoch length the windows count from the first
    iteration.

    Args:
        engine: a trainer, during or after an iteration.

    Returns:
        ``True`` when the optimizer steps at the end of this iteration.
    """
    accumulation_steps = getattr(engine, "accumulation_steps", 1)
    iteration, epoch_length = engine.state.iteration, engine.state.epoch_length
    if epoch_length is None:
        return iteration % accumulation_steps == 0
    in_epoch = (iteration - 1) % epoch_length + 1
    return in_epoch % accumulation_steps == 0 or in_epoch == epoch_length


def optimizer_steps_per_epoch(engine: Engine) -> int:
    """Optimizer steps of one epoch: ``ceil(epoch_length / accumulation_steps)`` (the last window may be shorter).

    Raises:
        ValueError: the engine's epoch length is unknown.
    """
    if engine.state.epoch_length is None:
        raise ValueError("the epoch length is unknown: give the schedule its total number of optimizer steps")
    return math.ceil(engine.state.epoch_length / getattr(engine, "accumulation_steps", 1))


def optimizer_step_index(engine: Engine) -> int:
    """The 0-based index of the optimizer step that the current iteration's window ends with.

    A :class:`common.engine.SelfSupervisedTrainer` counts its steps (``engine.state.optimizer_steps``); for MONAI's
    ``SupervisedTrainer`` the index follows from the iteration and its ``accumulation_steps``: the steps of the
    finished epochs, then the windows of this epoch before this one.
    """
    if hasattr(engine.state, "optimizer_steps"):
        return engine.state.optimizer_steps
    accumulation_steps = getattr(engine, "accumulation_steps", 1)
    iteration, epoch_length = engine.state.iteration - 1, engine.state.epoch_length
    if epoch_length is None:
        return iteration // accumulation_steps
    epochs, in_epoch = divmod(iteration, epoch_length)
    return epochs * optimizer_steps_per_epoch(engine) + in_epoch // accumulation_steps
