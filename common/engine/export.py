"""The inferer of the pre-training bundles' ``inference.json``: masked reconstructions of whole volumes, for viewing."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from common.tensors import as_plain_tensor


class MaskedReconstructionInferer:
    """``inferer(image, method)`` for MONAI's ``SupervisedEvaluator``: mask ``image`` with a seeded generator,
    reconstruct it, and stack the named images of :meth:`method.images` along the channels.

    The method needs ``mask(image, generator)``, ``reconstruct(image, visible)`` (which sees a plain tensor) and
    ``images(image, prediction, visible)`` (which sees ``image`` as given, so a MetaTensor's meta data carries
    over to the output for inverting and saving).

    Args:
        names: keys of ``method.images`` to export, in channel order (e.g. input, masked, reconstruction).
        mask_seed: seed of the mask's generator, so that an export is reproducible.

    Returns (when called): ``(B, len(names) * C, *S)``.
    """

    def __init__(self, names: Sequence[str], mask_seed: int = 0) -> None:
        self.names = list(names)
        self.mask_seed = mask_seed

    def __call__(self, image: torch.Tensor, method: nn.Module) -> torch.Tensor:
        plain = as_plain_tensor(image)
        visible = method.mask(plain, generator=torch.Generator().manual_seed(self.mask_seed))
        images = method.images(image, method.reconstruct(plain, visible), visible)
        return torch.cat([images[name] for name in self.names], dim=1)
