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


@functools.lru_cache(maxsize=32)
def _sincos(grid: tuple[int, ...], width: int, device: torch.device) -> torch.Tensor:
    """The embedding of :func:`sincos_position_embedding`, cached per grid, width and device.

    Args:
        grid: the 2 or 3 grid sizes; cells in raster order, the last axis fastest (``indexing="ij"``).
        width: the embedding width, divisible by 2 x ``len(grid)``.
        device: where the embedding is returned.

    Returns:
        ``(L, width)`` for the ``L`` cells: for grid axis 0, 1 (, 2) in turn, ``sin(p w_k)`` then ``cos(p w_k)``,
        ``k = 0 .. n - 1``, with ``p`` the cell's coordinate on that axis, ``n = width / (2 len(grid))`` and
        ``w_k = SINCOS_TEMPERATURE ** (-k / n)``.
    """
    if len(grid) not in (2, 3) or width % (2 * len(grid)):
        raise ValueError(f"a sin-cos position embedding needs a 2D or 3D grid and a width divisible by twice its "
                         f"dimensions; got grid {grid}, width {width}")
    coordinates = torch.meshgrid(*(torch.arange(size, dtype=torch.float32) for size in grid), indexing="ij")
    per_axis = width // (2 * len(grid))
    frequencies = 1.0 / SINCOS_TEMPERATURE ** (torch.arange(per_axis, dtype=torch.float32) / per_axis)
    codes = []
    for axis in coordinates:
        angles = axis.flatten()[:, None] * frequencies
        codes += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(codes, dim=1).to(device)


def sincos_position_embedding(grid: Sequence[int], width: int, device: torch.device | str) -> torch.Tensor:
    """Fixed 2D / 3D sin-cos position embedding (MAE), ``(L, width)`` for the ``L`` cells of ``grid`` in raster
    order (``x.flatten(2)`` of a ``(B, C, *grid)`` map), on ``device``; computed once per grid, width and device, so
    a forward pass copies nothing to the device.

    Band ``a`` (channels ``a * width / len(grid)`` on) codes the cell's coordinate on grid axis ``a`` (see
    :func:`_sincos`): the order of HySparK's official code (``build_3d_sincos_position_embedding``: meshgrid of h, w,
    d, codes concatenated h, w, d) and of MiM's (``get_3d_sincos_pos_embed``: its ``meshgrid2(w, h, d)`` returns
    the coordinates of axes 0, 1, 2, coded in that order), which flatten their tokens in the same raster order, so
    their released weights compute here what they compute there (:mod:`tools.convert_checkpoint`). MONAI's
    ``build_sincos_position_embedding`` codes axis 1 first, then axis 0 (then 2): the same values with the first
    two bands exchanged (MAE's 2D code puts axis 1 first as well; no 2D network here uses a sin-cos embedding).

    ``width`` must be divisible by 4 (2D) or 6 (3D). While tracing or exporting, it is computed afresh, so that
    the graph holds the computation rather than a cached tensor of another trace.
    """
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return _sincos.__wrapped__(tuple(int(g) for g in grid), width, torch.device(device))
    return _sincos(tuple(int(g) for g in grid), width, torch.device(device))
