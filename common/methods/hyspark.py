"""HySparK: SparK on a hybrid MedNeXt CNN + ViT encoder with a concatenate-and-fuse decoder.

Tang et al., "HySparK: Hybrid Sparse Masking for Large Scale Medical Image Pre-Training", MICCAI 2024.
One mask on the 1/16 grid (the CNN / ViT junction) is up-sampled to every CNN scale (bottom-up
masking); the CNN convolves visible voxels only, the ViT attends over visible tokens only (exactly
``round(L * (1 - mask_ratio))`` per sample), and the light decoder concatenates each skip with the
up-sampled map and fuses them. The ViT's learnable mask token is the 1/16 scale's densify token.
"""

from __future__ import annotations

from collections.abc import Sequence

from common.methods.spark import SparK
from common.networks.hybrid import HybridEncoder


class HySparK(SparK):
    """HySparK pre-training with the paper's encoder by default.

    Args:
        in_channels: image channels.
        channels, depths, expansion_ratios, vit_depth, num_heads: :class:`HybridEncoder`
            (paper: 32/64/128/256/384, 1/1/3/3/1, 2/4/4/4/2, 3, 12).
        **kwargs: :class:`SparK` options (``mask_ratio`` 0.75, ``decoder_width`` 768, ``sparse_backend``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256, 384),
        depths: Sequence[int] = (1, 1, 3, 3, 1),
        expansion_ratios: Sequence[int] = (2, 4, 4, 4, 2),
        vit_depth: int = 3,
        num_heads: int = 12,
        **kwargs,
    ) -> None:
        encoder = HybridEncoder(in_channels, channels, depths, expansion_ratios, 3, vit_depth, num_heads)
        super().__init__(encoder, skip="concat", in_channels=in_channels, **kwargs)
