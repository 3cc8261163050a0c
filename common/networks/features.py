"""A pre-training method's encoder as a network of its own: what a pre-training bundle's ``network_def`` is, for
MONAI's tools (``verify_net_in_out``, ``ckpt_export``) and for users who want features.

:func:`encoder_features` wraps the method's encoder (shared, not copied) so that it maps an image to its deepest
feature map. The wrapper keeps the encoder under ``encoder.``, as the methods do, and its :meth:`load_state_dict`
takes a method's whole state dict (a pre-training ``model.pt``'s ``"model"``) and loads the ``encoder.*`` entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from common.networks.vit import MaskedViT

ENCODER_PREFIX = "encoder."


class EncoderFeatures(nn.Module):
    """Base of the wrappers: holds ``encoder`` and loads the ``encoder.*`` part of a method's state dict. A wrapper's
    ``out_channels`` and ``downsample_ratio`` say what it returns: ``out_channels`` maps at ``1 / downsample_ratio`` of
    the image size.

    Args:
        encoder: the method's encoder.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    out_channels: int
    downsample_ratio: int

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load the ``encoder.*`` entries of ``state_dict``: this network's own, or a whole method's (its decoder,
        heads and teacher are not this network's and are left out)."""
        encoder = {name: value for name, value in state_dict.items() if name.startswith(ENCODER_PREFIX)}
        return super().load_state_dict(encoder, strict=strict, assign=assign)


class DeepestFeatureMap(EncoderFeatures):
    """A hierarchical encoder's coarsest map: ``(B, C_in, *S)`` -> ``(B, feature_channels[-1], *S / r)``, ``r`` its
    ``downsample_ratio`` (HySparK's ``HybridEncoder`` and MiM's ``ConvViT3D``: 16; SparK-3D's ``MedNeXtEncoder``: 16;
    the 2D methods' ``ResNetEncoder``: 32)."""

    @property
    def out_channels(self) -> int:
        return self.encoder.feature_channels[-1]

    @property
    def downsample_ratio(self) -> int:
        return self.encoder.downsample_ratio

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder(image)[-1]


class TokenFeatureMap(EncoderFeatures):
    """A :class:`~common.networks.vit.MaskedViT`'s patch tokens on their grid (the cls token left out), as GL-MAE's
    and MAE3D's encoders give them: ``(B, C_in, *S)`` -> ``(B, hidden_size, *S / patch_size)``."""

    @property
    def out_channels(self) -> int:
        return self.encoder.hidden_size

    @property
    def downsample_ratio(self) -> int:
        return self.encoder.patch_size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(image)[:, 1:]
        grid = [size // self.encoder.patch_size for size in image.shape[2:]]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def encoder_features(encoder: nn.Module) -> EncoderFeatures:
    """``encoder`` (a pre-training method's ``encoder``) as an image -> deepest feature map network:
    :class:`TokenFeatureMap` for a ViT, :class:`DeepestFeatureMap` for the hierarchical encoders."""
    return TokenFeatureMap(encoder) if isinstance(encoder, MaskedViT) else DeepestFeatureMap(encoder)
