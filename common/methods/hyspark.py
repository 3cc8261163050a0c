"""HySparK: SparK on a hybrid MedNeXt CNN + ViT encoder with a concatenate-and-fuse decoder.

Tang et al., "HySparK: Hybrid Sparse Masking for Large Scale Medical Image Pre-Training", MICCAI 2024.
One mask on the 1/16 grid (the CNN / ViT junction) is up-sampled to every CNN scale (bottom-up
masking); the CNN convolves visible voxels only, the ViT attends over visible tokens only (exactly
``round(L * (1 - mask_ratio))`` per sample), and the light decoder concatenates each skip with the
up-sampled map and fuses them. The ViT's learnable mask token is the 1/16 scale's densify token.
"""

from __future__ import annotations

from collections.abc import Mapping

from common.methods.spark import SparK
from common.networks.hybrid import HybridEncoder


class HySparK(SparK):
    """HySparK pre-training with the paper's encoder by default.

    Args:
        in_channels: image channels.
        encoder: :class:`HybridEncoder` settings (``channels``, ``depths``, ``expansion_ratios``, ``vit_depth``,
            ``num_heads``, as :func:`~common.networks.hybrid_config` gives them); its defaults, the paper's
            32/64/128/256/384, 1/1/3/3/1, 2/4/4/4/2, 3 and 12, where absent.
        **kwargs: :class:`SparK` options (``mask_ratio`` 0.75, ``decoder_width`` 768, ``sparse_backend``).
    """

    def __init__(self, in_channels: int = 1, encoder: Mapping | None = None, **kwargs) -> None:
        hybrid_encoder = HybridEncoder(in_channels, **(encoder or {}))
        super().__init__(hybrid_encoder, skip="concat", in_channels=in_channels, **kwargs)
