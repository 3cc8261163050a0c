"""The momentum (EMA) update of a teacher network from its student, shared by the methods that have one."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


@torch.no_grad()
def momentum_update(teacher: Sequence[nn.Module], student: Sequence[nn.Module], momentum: float) -> None:
    """``teacher <- momentum * teacher + (1 - momentum) * student``, parameter by parameter, in place.

    The ``update_teacher`` of every method with a momentum network calls this (MoCo's key encoder, BYOL's target,
    GL-MAE's teacher), with the momentum :class:`common.engine.MomentumTeacher` schedules; the modules of
    ``teacher`` and ``student`` pair up in order and must hold the same parameters.
    """
    teacher_parameters = [p for module in teacher for p in module.parameters()]
    student_parameters = [p.detach() for module in student for p in module.parameters()]
    torch._foreach_mul_(teacher_parameters, momentum)
    torch._foreach_add_(teacher_parameters, student_parameters, alpha=1 - momentum)
