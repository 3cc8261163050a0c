"""BYOL: the symmetrised, normalised regression of the target projections."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BYOLLoss(nn.Module):
    """BYOL's normalised regression, symmetrised (Grill et al., NeurIPS 2020, Eq. 2 and 4).

    ``L(p, z) = ||p / ||p|| - z / ||z|| ||^2 = 2 - 2 cos(p, z)`` between the online prediction ``p`` of one view
    and the target projection ``z`` of the other (no gradient into ``z``), summed over both directions:
    ``L_total = mean_b [L(p1, z2) + L(p2, z1)]``, in [0, 8]. (The study's official code logs
    ``-2 cos(p1, z2) - 2 cos(p2, z1)``: the same gradient, shifted by 4.)
    """

    @staticmethod
    def regression(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``2 - 2 cos(p, z)`` per sample: ``(B, D), (B, D) -> (B,)``."""
        return 2 - 2 * F.cosine_similarity(prediction.float(), target.detach().float(), dim=-1)

    def forward(
        self, predictions: tuple[torch.Tensor, torch.Tensor], targets: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """
        Args:
            predictions: ``(p1, p2)``, the online predictions of view 1 and view 2, each ``(B, D)``.
            targets: ``(z1, z2)``, the target projections of view 1 and view 2, each ``(B, D)``.

        Returns:
            ``()``, ``L_total = mean_b [L(p1, z2) + L(p2, z1)]`` (Eq. 2 and 4), in [0, 8], in float32.
        """
        (p1, p2), (z1, z2) = predictions, targets
        return (self.regression(p1, z2) + self.regression(p2, z1)).mean()
