"""The encoder half of MONAI's MedNeXt, with MONAI's parameter names, for SparK-3D pre-training."""

from __future__ import annotations

import torch
from monai.networks.nets.mednext import create_mednext
from torch import nn


class MedNeXtEncoder(nn.Module):
    """MedNeXt's stem, encoder stages, down-sampling blocks and bottleneck (Roy et al., MICCAI 2023).

    The modules are taken from :func:`monai.networks.nets.mednext.create_mednext`, so the state dict
    of this encoder loads unchanged into the same variant of MONAI's ``MedNeXt`` (the ``mednext`` arch
    of the segmentation bundles).

    Args:
        variant: ``S``, ``B``, ``M`` or ``L``.
        in_channels: image channels.
        kernel_size: depth-wise kernel (3 or 5 in the MedNeXt paper).

    Forward: ``(B, in_channels, *S)``, ``S`` divisible by 16 -> five maps, fine to coarse, of
    ``32 * 2^i`` channels at ``S / 2^i``, ``i = 0..4``.
    """

    def __init__(self, variant: str = "S", in_channels: int = 1, kernel_size: int = 3) -> None:
        super().__init__()
        mednext = create_mednext(variant, spatial_dims=3, in_channels=in_channels, out_channels=1, kernel_size=kernel_size)
        self.stem = mednext.stem
        self.enc_stages = mednext.enc_stages
        self.down_blocks = mednext.down_blocks
        self.bottleneck = mednext.bottleneck
        width = mednext.stem.out_channels
        self.feature_channels = [width * 2**i for i in range(len(self.enc_stages) + 1)]
        self.downsample_ratio = 2 ** len(self.down_blocks)

    def forward(self, x: torch.Tensor) -> list:
        x = self.stem(x)
        features = []
        for stage, down in zip(self.enc_stages, self.down_blocks):
            x = stage(x)
            features.append(x)
            x = down(x)
        features.append(self.bottleneck(x))
        return features
