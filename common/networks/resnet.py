"""MONAI's ResNet with the ImageNet geometry of the 2D study (Wolf et al. 2023), and its encoder half.

The study pre-trains and fine-tunes a ResNet-50 (He et al., CVPR 2016) on 2D CT slices. Both halves here are
MONAI's :class:`~monai.networks.nets.ResNet`, built by :func:`resnet_classifier` with the torchvision layout the study's
ResNet-50 has: a 7x7 stride-2 stem convolution and max pooling (1/4), four bottleneck stages down to 1/32,
bias-free 1x1 projection shortcuts. :class:`ResNetEncoder` keeps the stem and the stages under MONAI's
names, so its state dict loads unchanged into :func:`resnet_classifier` (whose ``fc`` is the downstream linear layer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from monai.networks.nets import ResNet
from monai.networks.nets.resnet import get_inplanes
from torch import nn

from common.networks.spec import NetworkSpec

# Blocks per stage of each depth (He et al., Table 1).
RESNET_LAYERS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}


def resnet_classifier(depth: int = 50, spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 2) -> ResNet:
    """MONAI's ResNet of ``depth`` with the ImageNet stem (stride-2 7x7 convolution) and bias-free shortcuts.

    Args:
        depth: 18, 34 or 50.
        spatial_dims: 2 (slices) or 3.
        in_channels: image channels (1: the study's slices are grey values).
        num_classes: outputs of the final linear layer ``fc``.

    Returns:
        ``(B, in_channels, *S)`` -> logits ``(B, num_classes)``.

    Raises:
        ValueError: ``depth`` is not one of :data:`RESNET_LAYERS`.
    """
    if depth not in RESNET_LAYERS:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYERS)}, got {depth!r}")
    block, layers = RESNET_LAYERS[depth]
    return ResNet(
        block,
        list(layers),
        get_inplanes(),
        spatial_dims=spatial_dims,
        n_input_channels=in_channels,
        conv1_t_stride=2,
        bias_downsample=False,
        num_classes=num_classes,
    )


class ResNetEncoder(nn.Module):
    """The stem and the four stages of :func:`resnet_classifier`, returning every stage's map (SparK's hierarchy).

    Args:
        depth, spatial_dims, in_channels: as :func:`resnet_classifier`.

    Forward: ``(B, in_channels, *S)``, ``S`` divisible by 32 -> four maps, fine to coarse, of
    :attr:`feature_channels` channels at ``S / 4, S / 8, S / 16, S / 32``. :meth:`pooled` gives the global
    average of the last one, ``(B, feature_channels[-1])`` (2048 for ResNet-50): the representation the
    contrastive methods train and the downstream classifier's linear layer reads.
    """

    def __init__(self, depth: int = 50, spatial_dims: int = 2, in_channels: int = 1) -> None:
        super().__init__()
        network = resnet_classifier(depth, spatial_dims, in_channels)
        self.conv1, self.bn1, self.act, self.maxpool = network.conv1, network.bn1, network.act, network.maxpool
        self.layer1, self.layer2 = network.layer1, network.layer2
        self.layer3, self.layer4 = network.layer3, network.layer4
        self.spatial_dims = spatial_dims
        self.feature_channels = [network.fc.in_features // 2**i for i in (3, 2, 1, 0)]
        self.downsample_ratio = 32

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        features = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            features.append(x)
        return features

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Global average of the coarsest map: ``(B, in_channels, *S)`` -> ``(B, feature_channels[-1])``."""
        return self(x)[-1].flatten(2).mean(dim=2)


def slice_classification_spec(
    channel_def: Mapping,
    intensity: Sequence[float] | None = None,
    depth: int = 50,
    in_channels: int = 1,
    image_size: int = 224,
) -> NetworkSpec:
    """The :class:`~common.networks.spec.NetworkSpec` of a 2D slice classifier (:func:`resnet_classifier`): what
    ``ct_slice_classification`` saves with its weights and rebuilds for inference.

    Args:
        channel_def: output index -> class name (``metadata.json``'s ``channel_def``); one logit per class.
        intensity: mean and std of the training slices (values in ``[0, 1]``), which inference normalises with;
            ``None`` when unknown (weights without a spec: the network builds, the preprocessing refuses to).
        depth, in_channels: :func:`resnet_classifier`.
        image_size: side of the square input the slices are resized to.
    """
    labels = {str(index): name for index, name in channel_def.items()}
    mean, std = (float(value) for value in intensity) if intensity is not None else (None, None)
    return NetworkSpec(
        factory="common.networks.slice_classification_spec",
        arguments={
            "channel_def": labels,
            "intensity": None if intensity is None else [mean, std],
            "depth": depth,
            "in_channels": in_channels,
            "image_size": image_size,
        },
        network=lambda: resnet_classifier(depth, 2, in_channels, len(labels)),
        preprocessing={"image_size": image_size, "mean": mean, "std": std},
        input_shape=[image_size] * 2,
    )
