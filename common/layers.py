"""Small layers MONAI does not have, used by the networks and by their sparse-aware versions (``common.sparse``)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding
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


def depthwise_conv_input(x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    """``x`` made channels-last when ``conv`` is a 3D depth-wise convolution running on the CPU, else ``x``.

    oneDNN's backward pass of a channels-first 3D depth-wise convolution is about 15x slower than with a
    channels-last input (torch 2.13, 16 x 16 x 32^3, kernel 5: 20.9 s against 1.33 s; docs/benchmarks.md). The
    output then comes out channels-last too; every following operation accepts either layout.
    """
    depthwise = isinstance(conv, nn.Conv3d) and conv.groups > 1 and conv.groups == conv.in_channels
    if depthwise and x.device.type == "cpu":
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


@functools.lru_cache(maxsize=32)
def _sincos(grid: tuple[int, ...], width: int, device: torch.device) -> torch.Tensor:
    return build_sincos_position_embedding(list(grid), width, spatial_dims=len(grid)).detach()[0].to(device)


def sincos_position_embedding(grid: Sequence[int], width: int, device: torch.device | str) -> torch.Tensor:
    """Fixed 2D / 3D sin-cos position embedding (MAE), ``(L, width)`` for the ``L`` cells of ``grid`` in raster
    order, on ``device``; computed once per grid, width and device, so a forward pass copies nothing to the
    device (MONAI's ``build_sincos_position_embedding``).

    ``width`` must be divisible by 4 (2D) or 6 (3D). While tracing or exporting, it is computed afresh, so that
    the graph holds the computation rather than a cached tensor of another trace.
    """
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return _sincos.__wrapped__(tuple(int(g) for g in grid), width, torch.device(device))
    return _sincos(tuple(int(g) for g in grid), width, torch.device(device))
