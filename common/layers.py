"""Small layers MONAI does not have, used by the networks and by their sparse-aware versions (``common.sparse``)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

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


SINCOS_TEMPERATURE = 10000.0
SINCOS_AXIS_ORDER = (1, 0, 2)  # MONAI's order of the grid axes' codes: (w, h) in 2D, (w, h, d) in 3D


@functools.lru_cache(maxsize=32)
def _sincos(grid: tuple[int, ...], width: int, device: torch.device) -> torch.Tensor:
    """MONAI's ``build_sincos_position_embedding(grid, width, len(grid))[0]``, the same values, built without its
    ``torch.meshgrid`` call that passes no ``indexing`` (a warning at every run).

    Args:
        grid: the 2 or 3 grid sizes; cells in raster order, the last axis fastest (``indexing="ij"``).
        width: the embedding width, divisible by 2 x ``len(grid)``.
        device: where the embedding is returned.

    Returns:
        ``(L, width)`` for the ``L`` cells: per axis in :data:`SINCOS_AXIS_ORDER`, ``width / (2 len(grid))`` sines
        then as many cosines of the cell's coordinate times ``SINCOS_TEMPERATURE ** (-k / (width / (2 len(grid))))``.
    """
    if len(grid) not in (2, 3) or width % (2 * len(grid)):
        raise ValueError(f"a sin-cos position embedding needs a 2D or 3D grid and a width divisible by twice its "
                         f"dimensions; got grid {grid}, width {width}")
    coordinates = torch.meshgrid(*(torch.arange(size, dtype=torch.float32) for size in grid), indexing="ij")
    per_axis = width // (2 * len(grid))
    frequencies = 1.0 / SINCOS_TEMPERATURE ** (torch.arange(per_axis, dtype=torch.float32) / per_axis)
    codes = []
    for axis in SINCOS_AXIS_ORDER[: len(grid)]:
        angles = coordinates[axis].flatten()[:, None] * frequencies
        codes += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(codes, dim=1).to(device)


def sincos_position_embedding(grid: Sequence[int], width: int, device: torch.device | str) -> torch.Tensor:
    """Fixed 2D / 3D sin-cos position embedding (MAE), ``(L, width)`` for the ``L`` cells of ``grid`` in raster
    order, on ``device``; computed once per grid, width and device, so a forward pass copies nothing to the
    device (the values of MONAI's ``build_sincos_position_embedding``).

    ``width`` must be divisible by 4 (2D) or 6 (3D). While tracing or exporting, it is computed afresh, so that
    the graph holds the computation rather than a cached tensor of another trace.
    """
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return _sincos.__wrapped__(tuple(int(g) for g in grid), width, torch.device(device))
    return _sincos(tuple(int(g) for g in grid), width, torch.device(device))
