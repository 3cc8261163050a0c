"""Encoders, decoders and downstream networks (MONAI's wherever MONAI has them)."""

from common.networks.convvit import ConvViT3D, ConvViTSegmentationNet, convvit_config
from common.networks.hybrid import HybridEncoder, HybridSegmentationNet, hybrid_config
from common.networks.mednext import MedNeXtEncoder
from common.networks.segmentation import (
    ENCODER_MODULES,
    PRETRAINED_ENCODER_RENAME,
    SEGMENTATION_ARCHS,
    adapt_encoder,
    segmentation_network,
)

__all__ = [
    "ENCODER_MODULES",
    "PRETRAINED_ENCODER_RENAME",
    "SEGMENTATION_ARCHS",
    "ConvViT3D",
    "ConvViTSegmentationNet",
    "HybridEncoder",
    "HybridSegmentationNet",
    "MedNeXtEncoder",
    "adapt_encoder",
    "convvit_config",
    "hybrid_config",
    "segmentation_network",
]
