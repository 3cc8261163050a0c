"""Encoders, decoders and downstream networks (MONAI's wherever MONAI has them)."""

from common.networks.convvit import ConvViT3D, ConvViTSegmentationNet, convvit_config
from common.networks.hybrid import HybridEncoder, HybridSegmentationNet, hybrid_config
from common.networks.mednext import MedNeXtEncoder
from common.networks.segmentation import PRETRAINED_ENCODER_RENAME, SEGMENTATION_ARCHS, segmentation_network

__all__ = [
    "PRETRAINED_ENCODER_RENAME",
    "SEGMENTATION_ARCHS",
    "ConvViT3D",
    "ConvViTSegmentationNet",
    "HybridEncoder",
    "HybridSegmentationNet",
    "MedNeXtEncoder",
    "convvit_config",
    "hybrid_config",
    "segmentation_network",
]
