"""Encoders, decoders and downstream networks (MONAI's wherever MONAI has them)."""

from common.networks.segmentation import SEGMENTATION_ARCHS, segmentation_network

__all__ = ["SEGMENTATION_ARCHS", "segmentation_network"]
