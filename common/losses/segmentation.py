"""Losses of the downstream segmentation bundles, chosen by one name (``btcv_segmentation``'s recipe ``loss``).

* ``dice_ce``: Dice + cross-entropy over the softmax of the classes, MONAI's ``DiceCELoss`` (the Swin UNETR and UNETR
  BTCV code: ``DiceCELoss(to_onehot_y=True, softmax=True)``);
* ``dice_bce``: Dice + binary cross-entropy of each class against its one-hot channel, over per-class sigmoids
  (HySparK Sec. 2.3: "a combined loss (L_seg) of binary cross entropy (L_BCE) and Dice loss (L_Dice)").
"""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss, DiceLoss
from monai.networks.utils import one_hot
from torch import nn

SEGMENTATION_LOSSES = ("dice_ce", "dice_bce")


class DiceBCELoss(nn.Module):
    """``L_seg = L_Dice + L_BCE`` (HySparK Sec. 2.3) on logits ``(B, C, *S)`` and a label map ``(B, 1, *S)``.

    The label map is one-hot encoded into ``C`` channels; ``L_Dice`` is MONAI's ``DiceLoss`` over the per-channel
    sigmoids (mean over the channels, background included) and ``L_BCE`` the binary cross-entropy of every voxel and
    channel (``BCEWithLogitsLoss``, mean). MONAI's ``DiceCELoss(sigmoid=True)`` would not do: for more than one
    channel it takes the softmax cross-entropy.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dice = DiceLoss(sigmoid=True)
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        target = one_hot(label, num_classes=logits.shape[1]).to(logits.dtype)
        return self.dice(logits, target) + self.bce(logits, target)


def segmentation_loss(name: str) -> nn.Module:
    """The loss called ``name``, one of :data:`SEGMENTATION_LOSSES`, for logits ``(B, C, *S)`` and labels ``(B, 1, *S)``.

    Raises:
        ValueError: an unknown name.
    """
    if name == "dice_ce":
        return DiceCELoss(to_onehot_y=True, softmax=True)
    if name == "dice_bce":
        return DiceBCELoss()
    raise ValueError(f"unknown segmentation loss {name!r}; choose one of {SEGMENTATION_LOSSES}")
