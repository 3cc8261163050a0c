"""GL-MAE's global-guided consistency: a student's predictions against a centred, sharpened momentum teacher's."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from common.losses.distributed import all_reduced


class GlobalGuidedConsistencyLoss(nn.Module):
    """GL-MAE's global-guided consistency (Zhuang et al., GL-MAE, eq. 7-10): the student's projected class
    embedding of a masked view must predict the momentum teacher's of a complete global view.

    With teacher logits ``t`` and student logits ``s`` (``K`` = projection width),
    ``P_t = softmax((t - c) / tau_t)``, ``P_s = softmax(s / tau_s)`` and ``H(P_t, P_s) = -sum_k P_t log P_s``,
    averaged over every (student view, teacher view) pair of the same volume: global-to-global when the student
    views are the masked global views, global-to-local when they are the masked local views. The teacher side
    is centred by ``c``, an exponential moving average of the teacher logits (DINO, Caron et al., ICCV 2021,
    Sec. 3.1), and sharpened by ``tau_t < tau_s``; GL-MAE does not give these values, the defaults are DINO's.

    Args:
        num_prototypes: ``K`` (GL-MAE: 512).
        student_temperature: ``tau_s`` (0.1).
        teacher_temperature: ``tau_t`` (0.04).
        center_momentum: momentum of ``c`` (0.9); 1 keeps ``c = 0`` (no centring).
    """

    def __init__(
        self,
        num_prototypes: int = 512,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if student_temperature <= 0 or teacher_temperature <= 0:
            raise ValueError(f"temperatures must be positive, got {student_temperature}, {teacher_temperature}")
        if not 0 <= center_momentum <= 1:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, num_prototypes))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """
        Args:
            student: ``(B, S, K)`` logits of ``S`` masked views of each of ``B`` volumes.
            teacher: ``(B, T, K)`` logits of the ``T`` complete global views of the same volumes (no gradient).

        Returns:
            ``()``, ``H(P_t, P_s)`` (eq. 8-10) averaged over the ``B * S * T`` (student view, teacher view) pairs,
            in float32.
        """
        target = F.softmax((teacher.float() - self.center) / self.teacher_temperature, dim=-1)
        log_prediction = F.log_softmax(student.float() / self.student_temperature, dim=-1)
        return -torch.einsum("btk,bsk->bst", target, log_prediction).mean()

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        """``c <- m c + (1 - m) mean(teacher)`` over the batch and views (DINO eq. 4), the mean taken over every
        process's batch under DDP, as DINO does; call once per step."""
        mean = teacher.float().flatten(0, -2).mean(dim=0, keepdim=True)
        if dist.is_available() and dist.is_initialized():
            mean = all_reduced(mean) / dist.get_world_size()
        self.center.mul_(self.center_momentum).add_(mean, alpha=1 - self.center_momentum)
