"""Small layers MONAI does not have."""

from __future__ import annotations

import torch
from torch import nn


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of a ``(B, C, *spatial)`` map (ConvNeXt's ``channels_first`` LayerNorm).

    Args:
        num_channels: ``C``.
        eps: added to the variance.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)
