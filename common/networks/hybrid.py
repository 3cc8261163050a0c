"""HySparK's hybrid CNN + ViT encoder and its segmentation network.

HySparK (Tang et al., "HySparK: Hybrid Sparse Masking for Large Scale Medical Image Pre-Training",
MICCAI 2024): a MedNeXt CNN on top (stem conv; per stage MedNeXt blocks, then a 3x3x3 convolution
widening to the next stage; 2x max-pooling between stages) and a ViT at the bottom, on the 1/16 grid.
The same module runs dense (fine-tuning, inference) and, after :func:`common.sparse.sparsify`, on the
visible region only (pre-training), with identical parameter names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import TransformerBlock, UnetOutBlock, UnetResBlock
from monai.networks.blocks.mednext_block import MedNeXtBlock, MedNeXtUpBlock
from torch import nn

from common.layers import ChannelsFirstLayerNorm, sincos_position_embedding
from common.sparse.tokens import from_tokens, to_tokens

# The paper's encoder, and the small one the bundles use on a CPU (same structure, ~1/16 of the compute).
PAPER_HYBRID = {"channels": (32, 64, 128, 256, 384), "depths": (1, 1, 3, 3, 1), "vit_depth": 3, "num_heads": 12}
CPU_DEMO_HYBRID = {"channels": (8, 16, 32, 64, 96), "depths": (1, 1, 1, 1, 1), "vit_depth": 3, "num_heads": 4}


def hybrid_config(cpu_demo_scale: bool = False) -> dict:
    """Encoder sizes shared by ``hyspark_pretrain`` and ``btcv_segmentation`` (``arch: hyspark``), so a CPU
    demo checkpoint fine-tunes into a network of the same shape."""
    return dict(CPU_DEMO_HYBRID if cpu_demo_scale else PAPER_HYBRID)


def _with_layer_norm(block: MedNeXtBlock, channels: int) -> MedNeXtBlock:
    """HySparK's MedNeXt blocks normalise with a channels-first LayerNorm where MONAI's use GroupNorm(C, C)."""
    block.norm = ChannelsFirstLayerNorm(channels)
    return block


def mednext_block(channels: int, expansion_ratio: int, kernel_size: int = 3) -> MedNeXtBlock:
    """MONAI's residual MedNeXt block (depth-wise conv, norm, 1x1 expansion, GELU, 1x1 compression)."""
    block = MedNeXtBlock(channels, channels, expansion_ratio, kernel_size, use_residual_connection=True)
    return _with_layer_norm(block, channels)


class TokenTransformer(nn.Module):
    """A ViT over the cells of a ``(B, C, *grid)`` map: fixed 3D sin-cos position embedding, pre-norm
    transformer blocks, final LayerNorm. Under a mask it sees the visible cells only (MAE-style).

    Args:
        width: token width ``C`` (divisible by 6 for the 3D sin-cos embedding).
        depth: number of transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP width / ``width``.
    """

    def __init__(self, width: int = 384, depth: int = 3, num_heads: int = 12, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.width = width
        self.blocks = nn.ModuleList(
            TransformerBlock(width, int(width * mlp_ratio), num_heads, qkv_bias=True, use_flash_attention=True)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)

    def forward(self, x):
        tokens, positions, grid = to_tokens(x)
        position_embedding = sincos_position_embedding(grid, self.width, tokens.device)
        tokens = tokens + position_embedding[positions].to(tokens.dtype)
        for block in self.blocks:
            tokens = block(tokens)
        return from_tokens(self.norm(tokens), x)


class HybridEncoder(nn.Module):
    """HySparK's encoder: MedNeXt CNN stages with max-pool down-sampling, then a ViT on the 1/16 grid.

    Args:
        in_channels: image channels.
        channels: width of the five CNN stages (paper: 32, 64, 128, 256, 384); the last is the ViT width.
        depths: MedNeXt blocks per stage (paper: 1, 1, 3, 3, 1).
        expansion_ratios: MedNeXt expansion per stage (paper: 2, 4, 4, 4, 2).
        kernel_size: depth-wise kernel (paper: 3).
        vit_depth, num_heads, mlp_ratio: the ViT (paper: 3, 12, 4).

    Forward: ``(B, in_channels, *S)`` with ``S`` divisible by 16 -> five maps, fine to coarse:
    ``(B, channels[1], *S)``, ``(B, channels[2], *S/2)``, ``(B, channels[3], *S/4)``,
    ``(B, channels[4], *S/8)`` and the ViT output ``(B, channels[4], *S/16)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256, 384),
        depths: Sequence[int] = (1, 1, 3, 3, 1),
        expansion_ratios: Sequence[int] = (2, 4, 4, 4, 2),
        kernel_size: int = 3,
        vit_depth: int = 3,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if not len(channels) == len(depths) == len(expansion_ratios):
            raise ValueError("channels, depths and expansion_ratios need one entry per stage")
        self.stem = nn.Conv3d(in_channels, channels[0], kernel_size=3, padding=1)
        self.stages = nn.ModuleList(
            nn.Sequential(*(mednext_block(c, r, kernel_size) for _ in range(d)))
            for c, d, r in zip(channels, depths, expansion_ratios)
        )
        self.widen = nn.ModuleList(
            nn.Conv3d(c_in, c_out, kernel_size=3, padding=1) for c_in, c_out in zip(channels[:-1], channels[1:])
        )
        self.pool = nn.MaxPool3d(2)
        self.vit = TokenTransformer(channels[-1], vit_depth, num_heads, mlp_ratio)
        self.feature_channels = [*channels[1:], channels[-1]]
        self.downsample_ratio = 2 ** (len(channels) - 1)

    def forward(self, x):
        x = self.stem(x)
        features = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.pool(x)
            x = stage(x)
            if i < len(self.widen):
                x = self.widen[i](x)
                features.append(x)
        features.append(self.vit(x))
        return features


class HybridFusionBlock(nn.Module):
    """One decoder stage of HySparK's segmentation network: refine the skip with a MedNeXt block,
    up-sample the deeper map with a MedNeXt up block, concatenate, fuse with a residual conv block."""

    def __init__(self, in_channels: int, out_channels: int, expansion_ratio: int) -> None:
        super().__init__()
        self.skip = mednext_block(in_channels, expansion_ratio)
        self.up = _with_layer_norm(MedNeXtUpBlock(in_channels, out_channels, 4, 3, use_residual_connection=True), in_channels)
        self.fuse = UnetResBlock(3, in_channels + out_channels, out_channels, kernel_size=3, stride=1, norm_name="instance")

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat((self.skip(skip), self.up(deep)), dim=1))


class HybridSegmentationNet(nn.Module):
    """HySparK's fine-tuning network: :class:`HybridEncoder` under a MedNeXt-style decoder.

    Args:
        in_channels: image channels.
        out_channels: classes including background.
        channels, depths, expansion_ratios, vit_depth, num_heads: the encoder (see :class:`HybridEncoder`).

    Forward: ``(B, in_channels, *S)``, ``S`` divisible by 16 -> logits ``(B, out_channels, *S)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 14,
        channels: Sequence[int] = (32, 64, 128, 256, 384),
        depths: Sequence[int] = (1, 1, 3, 3, 1),
        expansion_ratios: Sequence[int] = (2, 4, 4, 4, 2),
        vit_depth: int = 3,
        num_heads: int = 12,
    ) -> None:
        super().__init__()
        self.encoder = HybridEncoder(in_channels, channels, depths, expansion_ratios, 3, vit_depth, num_heads)
        # Stages from the 1/16 grid up: (C4 -> C3), (C3 -> C2), (C2 -> C1), (C1 -> C0).
        widths = list(channels)
        self.decoder = nn.ModuleList(
            HybridFusionBlock(widths[i], widths[i - 1], expansion_ratios[len(widths) - i])
            for i in range(len(widths) - 1, 0, -1)
        )
        self.head = UnetOutBlock(3, widths[0], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *skips, deep = self.encoder(x)
        for block, skip in zip(self.decoder, reversed(skips)):
            deep = block(deep, skip)
        return self.head(deep)
