"""3D CT volume classification pipelines: the whole volume, cropped to the body and resized to one input size.

Whole-volume classification sees the entire scan at once, so every volume is brought to ``roi_size``:
orientation RAS, resampling to ``pixdim``, HU -1000..1000 -> [0, 1] (MiM's ``wide`` window), crop to the body
(voxels above -500 HU, which drops the air and most of the table around it), then a resize to ``roi_size``
(area interpolation, which averages rather than skips voxels when shrinking). The aspect ratio is not kept:
each axis is stretched on its own, as CC-CCII pipelines do with their fixed slice count and crop size.

Training adds the augmentation of the CC-CCII fine-tuning code of VoCo (Wu et al., CVPR 2024), from MiM's
group: a left-right flip (p 0.5), brightness (shift +-0.07, p 1) and contrast (scale +-0.05, p 1), and a random
translation of up to 5 % of ``roi_size`` (p 0.5) in place of its random 384-of-420 crop.

Images are ``(1, *roi_size)`` MetaTensors; labels are class indices, passed through untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    CopyItemsd,
    CropForegroundd,
    RandAffined,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Resized,
)

from common.transforms.ct import CT_WINDOWS, load_ct

BODY_HU = -500.0


class BodySelector:
    """``select_fn`` of ``CropForegroundd``: voxels denser than :data:`BODY_HU` in an image windowed with ``window``."""

    def __init__(self, window: str) -> None:
        low, high = CT_WINDOWS[window]
        self.threshold = (BODY_HU - low) / (high - low)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image > self.threshold


def classification_preprocessing(
    roi_size: Sequence[int] = (96, 96, 96), pixdim: Sequence[float] = (1.5, 1.5, 1.5), window: str = "wide"
) -> Compose:
    """The deterministic pipeline of training (cached), validation and inference: a file -> ``(1, *roi_size)``.

    Args:
        roi_size: the network's input size.
        pixdim: spacing in mm to resample to before cropping to the body.
        window: CT window preset, a key of :data:`common.transforms.CT_WINDOWS`.
    """
    return Compose(
        load_ct(["image"], pixdim, window)
        + [
            CropForegroundd(keys="image", source_key="image", select_fn=BodySelector(window), allow_smaller=True),
            Resized(keys="image", spatial_size=roi_size, mode="area"),
        ]
    )


def classification_train_transforms(
    roi_size: Sequence[int] = (96, 96, 96), pixdim: Sequence[float] = (1.5, 1.5, 1.5), window: str = "wide"
) -> Compose:
    """:func:`classification_preprocessing`, then the random augmentation of the module docstring.

    The two parts are one flat ``Compose``, so ``CacheDataset`` caches everything before the first random step.
    """
    return Compose(
        [
            *classification_preprocessing(roi_size, pixdim, window).transforms,
            RandFlipd(keys="image", prob=0.5, spatial_axis=0),
            RandShiftIntensityd(keys="image", offsets=0.07, prob=1.0),
            RandScaleIntensityd(keys="image", factors=0.05, prob=1.0),
            RandAffined(keys="image", prob=0.5, translate_range=[0.05 * s for s in roi_size], padding_mode="zeros"),
        ]
    )


def classification_postprocessing(num_classes: int) -> Compose:
    """Logits ``pred`` -> class probabilities (softmax); ``label`` (an index) also one-hot as ``label_onehot``.

    Accuracy takes ``pred`` and ``label``, the ROC AUC ``pred`` and ``label_onehot``.
    """
    return Compose(
        [
            Activationsd(keys="pred", softmax=True),
            CopyItemsd(keys="label", names="label_onehot"),
            AsDiscreted(keys="label_onehot", to_onehot=num_classes),
        ]
    )
