"""Images of a masked reconstruction that a person can look at (the ``"images"`` entry of a method's output)."""

from __future__ import annotations

import torch

from common.losses import MaskedPatchReconstructionLoss, patchify, unpatchify
from common.masking import upsample_mask


@torch.no_grad()
def masked_reconstruction_images(
    image: torch.Tensor, prediction: torch.Tensor, visible: torch.Tensor, loss: MaskedPatchReconstructionLoss
) -> dict[str, torch.Tensor]:
    """``input``, ``masked``, ``reconstruction`` and ``target``, all ``(B, C, *S)`` in image intensities.

    Args:
        image: ``(B, C, *S)``, the unmasked input.
        prediction: ``(B, C, *S)``, the decoder output in per-patch normalised units.
        visible: ``(B, 1, *grid)`` bool patch mask, ``True`` = visible.
        loss: the reconstruction loss, whose patch statistics map ``prediction`` back to intensities.

    ``masked`` is the visible part the encoder saw; ``reconstruction`` the prediction mapped back with each
    patch's own mean and std, pasted into the masked patches of the input; ``target`` the masked patches the
    loss scores.
    """
    _, mean, std = loss.normalized_target(image)
    predicted = unpatchify(patchify(prediction.float(), loss.patch_size) * std + mean, loss.patch_size, image)
    where = upsample_mask(visible, image.shape[2:])
    return {
        "input": image,
        "masked": image * where,
        "reconstruction": torch.where(where, image, predicted.to(image.dtype)),
        "target": image * ~where,
    }
