"""SparK's light U-shaped decoder for masked image modelling, with additive (SparK) or fused (HySparK) skips."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn


def _conv_bn_relu(spatial_dims: int, in_channels: int, out_channels: int) -> Convolution:
    return Convolution(spatial_dims, in_channels, out_channels, kernel_size=3, act="relu", norm="batch")


class UpBlock(nn.Sequential):
    """x2 up-sampling: a stride-2 transposed convolution, then 2 x (conv3 + BatchNorm + ReLU)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__(
            Convolution(
                spatial_dims, in_channels, in_channels, strides=2, kernel_size=2, padding=0, output_padding=0,
                is_transposed=True, conv_only=True,
            ),
            _conv_bn_relu(spatial_dims, in_channels, out_channels),
            _conv_bn_relu(spatial_dims, out_channels, out_channels),
        )


class LightDecoder(nn.Module):
    """``num_upsamples`` :class:`UpBlock`\\ s whose width halves from ``width``, then a 1x1 projection.

    Args:
        width: channels entering the first block (SparK / HySparK: 768).
        num_upsamples: ``log2`` of the encoder's down-sampling (4 for 1/16).
        skip: ``"add"`` adds each finer skip to the running map (SparK); ``"concat"`` concatenates it and
            fuses with 2 x (conv3 + BN + ReLU) (HySparK).
        out_channels: reconstructed channels.
        spatial_dims: 2 or 3.

    Forward: ``features[i]`` of shape ``(B, width / 2^i, *S / 2^(num_upsamples - i))``, coarse to fine;
    ``features[0]`` is required, finer ones are optional skips (at most ``num_upsamples``). Returns
    ``(B, out_channels, *S)``.
    """

    def __init__(
        self, width: int = 768, num_upsamples: int = 4, skip: str = "add", out_channels: int = 1, spatial_dims: int = 3
    ) -> None:
        super().__init__()
        if skip not in ("add", "concat"):
            raise ValueError(f"skip must be 'add' or 'concat', got {skip!r}")
        self.skip = skip
        self.widths = [width // 2**i for i in range(num_upsamples + 1)]
        self.blocks = nn.ModuleList(UpBlock(spatial_dims, c, c // 2) for c in self.widths[:-1])
        if skip == "concat":
            self.fuse = nn.ModuleList(
                nn.Sequential(_conv_bn_relu(spatial_dims, 2 * c, c), _conv_bn_relu(spatial_dims, c, c))
                for c in self.widths[1:-1]
            )
        self.head = Convolution(spatial_dims, self.widths[-1], out_channels, kernel_size=1, conv_only=True)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = features[0]  # (B, width, *S / 2^num_upsamples)
        for i, block in enumerate(self.blocks):
            if 0 < i < len(features):  # x and features[i]: (B, width / 2^i, *S / 2^(num_upsamples - i))
                if self.skip == "add":
                    x = x + features[i]
                else:  # concat: (B, 2 * width / 2^i, ...) fused back to width / 2^i channels
                    x = self.fuse[i - 1](torch.cat((x, features[i]), dim=1))
            x = block(x)  # doubles the size, halves the channels
        return self.head(x)  # (B, out_channels, *S)
