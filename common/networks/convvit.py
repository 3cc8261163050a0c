"""MiM's 3D ConvViT backbone (an MCMAE / ConvMAE-style hybrid) and its segmentation network.

Zhuang et al., "MiM: Mask in Mask Self-Supervised Pre-Training for 3D Medical Image Analysis" (IEEE TMI 2025),
after Gao et al., "MCMAE: Masked Convolution Meets Masked Autoencoders" (NeurIPS 2022). Four stride-2
patch-embedding stages (96^3 -> 48^3 -> 24^3 -> 12^3 -> 6^3):

* stages 1-3 are convolutional blocks whose 5^3 depth-wise convolution sees its input multiplied by the
  visible mask up-sampled to that scale (*masked convolution*: no information leaks from masked voxels);
* stage 4 is a ViT over the visible tokens of the 1/16 grid with a fixed 3D sin-cos position embedding;
* the outputs of stages 1-3 are projected with strided convolutions onto the 1/16 grid and added to the ViT
  output before the final LayerNorm (MCMAE's multi-scale fusion).

Without a mask the same module is the dense encoder of fine-tuning, with identical parameter names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import TransformerBlock, UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from torch import nn

from common.layers import ChannelsFirstLayerNorm, depthwise_conv_input, sincos_position_embedding
from common.masking import upsample_mask

# The paper's backbone, and the small one the bundles use on a CPU (same structure).
PAPER_CONVVIT = {"widths": (48, 96, 192, 384), "depths": (2, 2, 2, 11), "num_heads": 12}
CPU_DEMO_CONVVIT = {"widths": (16, 32, 64, 96), "depths": (1, 1, 1, 2), "num_heads": 4}


def convvit_config(cpu_demo_scale: bool = False) -> dict:
    """Backbone sizes shared by ``mim_pretrain`` and the downstream bundles (``arch: mim``), so that a CPU demo
    checkpoint fine-tunes into a network of the same shape."""
    return dict(CPU_DEMO_CONVVIT if cpu_demo_scale else PAPER_CONVVIT)


class PatchEmbedding(nn.Sequential):
    """Stride-2 patch embedding: ``Conv3d(k=2, s=2)``, channels-first LayerNorm, GELU (MCMAE's ``PatchEmbed``).

    ``(B, C_in, *S)`` -> ``(B, C_out, *S/2)``; each output voxel sees only its own 2^3 input voxels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size=2, stride=2),
            ChannelsFirstLayerNorm(out_channels),
            nn.GELU(),
        )


class MaskedConvBlock(nn.Module):
    """MCMAE's convolutional block with a masked depth-wise convolution.

    ``x + conv2(dwconv(m * conv1(norm1(x))))`` then ``x + mlp(norm2(x))``, where ``m`` is the visible mask at
    this scale (1 everywhere without a mask), ``dwconv`` a ``kernel_size``^3 depth-wise convolution and ``mlp``
    two 1x1x1 convolutions with a GELU. Everything but ``dwconv`` acts voxel by voxel, so the output at a
    visible voxel does not depend on any masked voxel.

    Args:
        channels: ``C``.
        mlp_ratio: hidden width of the MLP / ``C``.
        kernel_size: depth-wise kernel (5 in MCMAE and MiM).
    """

    def __init__(self, channels: int, mlp_ratio: float = 4.0, kernel_size: int = 5) -> None:
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.norm1 = ChannelsFirstLayerNorm(channels)
        self.conv1 = nn.Conv3d(channels, channels, 1)
        self.dwconv = nn.Conv3d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.conv2 = nn.Conv3d(channels, channels, 1)
        self.norm2 = ChannelsFirstLayerNorm(channels)
        self.mlp = nn.Sequential(nn.Conv3d(channels, hidden, 1), nn.GELU(), nn.Conv3d(hidden, channels, 1))

    def forward(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``(B, C, *S)``; ``visible``: ``(B, 1, *S)`` bool or ``None``."""
        y = self.conv1(self.norm1(x))
        if visible is not None:
            y = y * visible.to(y.dtype)
        x = x + self.conv2(self.dwconv(depthwise_conv_input(y, self.dwconv)))
        return x + self.mlp(self.norm2(x))


class ConvViT3D(nn.Module):
    """MiM's hybrid ConvViT encoder.

    Args:
        in_channels: image channels.
        widths: widths of the four stages (paper: 48, 96, 192, 384); the last is the ViT width, divisible by 6.
        depths: blocks per stage (paper: 2, 2, 2, 11).
        num_heads: ViT attention heads (paper: 12).
        mlp_ratio: MLP width / block width (4).
        kernel_size: depth-wise kernel of the convolutional blocks (5).

    ``forward(x, visible=None)``: ``x`` is ``(B, in_channels, *S)`` with ``S`` divisible by 16 and ``visible`` a
    ``(B, 1, *S/16)`` bool token mask (``True`` = visible, the same count in every sample) or ``None``. Returns
    four maps, fine to coarse: ``(B, widths[i], *S / 2^(i+1))``. The last is the normed ViT output with the
    stage 1-3 projections added; under a mask only its visible cells are computed (masked cells are 0) and they
    do not depend on masked voxels. The maps of stages 1-3 are returned as computed (masked-convolution
    outputs, meaningful at visible voxels).
    """

    def __init__(
        self,
        in_channels: int = 1,
        widths: Sequence[int] = (48, 96, 192, 384),
        depths: Sequence[int] = (2, 2, 2, 11),
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        if len(widths) != 4 or len(depths) != 4:
            raise ValueError(f"ConvViT3D has four stages; got widths {widths} and depths {depths}")
        width = widths[-1]
        self.patch_embeds = nn.ModuleList(
            PatchEmbedding(c_in, c_out) for c_in, c_out in zip([in_channels, *widths[:-1]], widths)
        )
        self.conv_stages = nn.ModuleList(
            nn.ModuleList(MaskedConvBlock(c, mlp_ratio, kernel_size) for _ in range(d))
            for c, d in zip(widths[:-1], depths[:-1])
        )
        # Stage i (1/2^(i+1) scale) -> the 1/16 grid: kernel = stride = 2^(3-i).
        self.stage_projections = nn.ModuleList(
            nn.Conv3d(c, width, kernel_size=2 ** (3 - i), stride=2 ** (3 - i)) for i, c in enumerate(widths[:-1])
        )
        self.token_embed = nn.Linear(width, width)
        self.blocks = nn.ModuleList(
            TransformerBlock(width, int(width * mlp_ratio), num_heads, qkv_bias=True, use_flash_attention=True)
            for _ in range(depths[-1])
        )
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.feature_channels = list(widths)
        self.downsample_ratio = 16

    def forward(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> list[torch.Tensor]:
        features, projected = [], []
        for embed, blocks, project in zip(self.patch_embeds, self.conv_stages, self.stage_projections):
            x = embed(x)
            where = None if visible is None else upsample_mask(visible, x.shape[2:])
            for block in blocks:
                x = block(x, where)
            features.append(x)
            projected.append(project(x).flatten(2).transpose(1, 2))
        x = self.patch_embeds[-1](x)
        grid = x.shape[2:]
        tokens = self.token_embed(x.flatten(2).transpose(1, 2))
        tokens = tokens + sincos_position_embedding(grid, tokens.shape[-1], tokens.device).to(tokens.dtype)
        skip = sum(projected)
        if visible is not None:
            keep = visible.flatten(1)
            count = int(keep[0].sum())
            tokens, skip = (t[keep].view(t.shape[0], count, t.shape[-1]) for t in (tokens, skip))
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens + skip)
        if visible is not None:
            dense = tokens.new_zeros(keep.shape[0], keep.shape[1], tokens.shape[-1])
            dense[keep] = tokens.flatten(0, 1)
            tokens = dense
        features.append(tokens.transpose(1, 2).reshape(x.shape[0], -1, *grid))
        return features


class ConvViTSegmentationNet(nn.Module):
    """MiM's fine-tuning network: :class:`ConvViT3D` under a Swin UNETR-style decoder of MONAI's UNETR blocks.

    A four-level form of the network the official MiM fine-tuning code builds (the paper calls it "Swin-UNETR";
    the official five-level one, with a 1/32 stage and layer-normed skips, is
    :class:`~common.networks.convvit_unetr.ConvViTUNETR`): a residual encoder block on the image and on each
    stage output, then four up-sampling blocks that concatenate the skip, and a 1x1x1 head.

    Args:
        in_channels: image channels.
        out_channels: classes including background.
        feature_size: decoder width at full resolution (doubles per scale; 48 as Swin UNETR).
        widths, depths, num_heads: the encoder (:class:`ConvViT3D`).

    Forward: ``(B, in_channels, *S)``, ``S`` divisible by 16 -> logits ``(B, out_channels, *S)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 14,
        feature_size: int = 48,
        widths: Sequence[int] = (48, 96, 192, 384),
        depths: Sequence[int] = (2, 2, 2, 11),
        num_heads: int = 12,
    ) -> None:
        super().__init__()
        self.encoder = ConvViT3D(in_channels, widths, depths, num_heads)
        sizes = [feature_size * 2**i for i in range(5)]  # full, 1/2, 1/4, 1/8, 1/16
        block = dict(spatial_dims=3, kernel_size=3, norm_name="instance", res_block=True)
        self.skips = nn.ModuleList(
            UnetrBasicBlock(in_channels=c_in, out_channels=c_out, stride=1, **block)
            for c_in, c_out in zip([in_channels, *widths], sizes)
        )
        self.ups = nn.ModuleList(
            UnetrUpBlock(in_channels=sizes[i + 1], out_channels=sizes[i], upsample_kernel_size=2, **block)
            for i in range(4)
        )
        self.head = UnetOutBlock(3, feature_size, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [skip(f) for skip, f in zip(self.skips, [x, *self.encoder(x)])]
        y = skips[-1]
        for up, skip in zip(reversed(self.ups), reversed(skips[:-1])):
            y = up(y, skip)
        return self.head(y)
