"""Momentum (EMA) teacher update after every optimizer step, with the BYOL / DINO cosine momentum schedule.

The update itself is the method's ``update_teacher`` (:func:`common.methods.momentum.momentum_update`).
"""

from __future__ import annotations

import torch
from torch.nn.parallel import DistributedDataParallel

from common.engine.accumulation import optimizer_steps_per_epoch
from common.engine.schedules import warmup_cosine
from common.engine.trainer import OptimizerEvents, SelfSupervisedTrainer


def _unwrapped(method: object) -> object:
    """The method inside a ``DistributedDataParallel`` wrapper (``multi_gpu_train.json``), else ``method``."""
    return method.module if isinstance(method, DistributedDataParallel) else method


class MomentumTeacher:
    """Calls ``engine.method.update_teacher(m)`` after every optimizer step of a :class:`SelfSupervisedTrainer`.

    The method (unwrapped from ``DistributedDataParallel``) does ``teacher = m * teacher + (1 - m) * student``.
    ``m`` follows a cosine from ``base_momentum`` at the first step to ``final_momentum`` at the last of
    ``total_steps`` optimizer steps (and stays there), the schedule of BYOL (Grill et al., NeurIPS 2020, Sec. 3.2:
    ``1 - (1 - base) * (cos(pi * k / K) + 1) / 2``) and DINO (Caron et al., ICCV 2021), here indexed so that
    both end points are reached exactly. The current value is kept in ``engine.state.teacher_momentum``.

    Args:
        base_momentum: momentum of the first update (BYOL / DINO: 0.996).
        final_momentum: momentum of the last update.
        total_steps: optimizer steps of the whole run; ``None``:
            ``max_epochs * ceil(epoch_length / accumulation_steps)`` of the trainer when attached.
    """

    def __init__(self, base_momentum: float = 0.996, final_momentum: float = 1.0, total_steps: int | None = None):
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum
        self.total_steps = total_steps

    def attach(self, engine: SelfSupervisedTrainer) -> None:
        """Update the teacher at every :attr:`OptimizerEvents.STEP_COMPLETED` of ``engine``.

        Raises:
            TypeError: the trainer's method has no ``update_teacher``.
            ValueError: ``total_steps`` is not given and the trainer's epoch length is unknown.
        """
        method = _unwrapped(getattr(engine, "method", None))
        if not callable(getattr(method, "update_teacher", None)):
            raise TypeError(
                f"MomentumTeacher needs a SelfSupervisedTrainer whose method defines update_teacher(momentum); "
                f"{type(method).__name__} does not"
            )
        if self.total_steps is None:
            self.total_steps = engine.state.max_epochs * optimizer_steps_per_epoch(engine)
        engine.add_event_handler(OptimizerEvents.STEP_COMPLETED, self)

    def __call__(self, engine: SelfSupervisedTrainer) -> None:
        momentum = warmup_cosine(
            engine.state.optimizer_steps - 1,
            peak_value=self.base_momentum,
            end_value=self.final_momentum,
            total_steps=self.total_steps,
        )
        with torch.no_grad():
            _unwrapped(engine.method).update_teacher(momentum)
        engine.state.teacher_momentum = momentum
