"""Encoders, decoders and downstream networks (MONAI's wherever MONAI has them)."""

from common.networks.classification import (
    CLASSIFICATION_ARCHS,
    CLASSIFICATION_ENCODER_RENAME,
    classification_encoder_config,
    classification_network,
    classification_spec,
)
from common.networks.convvit import ConvViT3D, ConvViTSegmentationNet, convvit_config
from common.networks.convvit_unetr import ConvViTUNETR
from common.networks.features import DeepestFeatureMap, TokenFeatureMap, encoder_features
from common.networks.hybrid import HybridEncoder, HybridSegmentationNet, hybrid_config
from common.networks.mednext import MedNeXtEncoder
from common.networks.resnet import ResNetEncoder, resnet_classifier, slice_classification_spec
from common.networks.segmentation import (
    ENCODER_MODULES,
    PRETRAINED_ENCODER_RENAME,
    PRETRAINING_ARCHS,
    SEGMENTATION_ARCHS,
    adapt_encoder,
    segmentation_encoder_config,
    segmentation_network,
    segmentation_spec,
)
from common.networks.spec import (
    NetworkSpec,
    SpecMismatchError,
    declared_labels,
    load_network_spec,
    saved_network_spec,
)
from common.networks.vit import MaskedViT, vit_config

__all__ = [
    "CLASSIFICATION_ARCHS",
    "CLASSIFICATION_ENCODER_RENAME",
    "ENCODER_MODULES",
    "PRETRAINED_ENCODER_RENAME",
    "PRETRAINING_ARCHS",
    "SEGMENTATION_ARCHS",
    "ConvViT3D",
    "ConvViTSegmentationNet",
    "ConvViTUNETR",
    "DeepestFeatureMap",
    "HybridEncoder",
    "HybridSegmentationNet",
    "MaskedViT",
    "MedNeXtEncoder",
    "NetworkSpec",
    "ResNetEncoder",
    "SpecMismatchError",
    "TokenFeatureMap",
    "adapt_encoder",
    "classification_encoder_config",
    "classification_network",
    "classification_spec",
    "convvit_config",
    "declared_labels",
    "encoder_features",
    "hybrid_config",
    "load_network_spec",
    "resnet_classifier",
    "saved_network_spec",
    "segmentation_encoder_config",
    "segmentation_network",
    "segmentation_spec",
    "slice_classification_spec",
    "vit_config",
]
