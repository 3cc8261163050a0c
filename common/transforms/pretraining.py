"""3D CT pre-training pipelines (HySparK / SparK-3D recipe), built from MONAI transforms.

HySparK (Tang et al., MICCAI 2024) pre-training data: orientation RAS, 1.5 mm isotropic spacing,
HU -175..250 -> [0, 1], crop to the body, ``num_samples`` random crops per volume, random flips along
the three axes with probabilities 0.2 / 0.2 / 0.1. Images only: no labels are read.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.transforms import (
    Compose,
    CropForegroundd,
    DivisiblePadd,
    EnsureTyped,
    Orientationd,
    RandFlipd,
    RandSpatialCropSamplesd,
    ResizeWithPadOrCropd,
    Spacingd,
    SpatialPadd,
)

from common.data import image_loader
from common.transforms.ct import ct_window


def _load_image(pixdim: Sequence[float], window: str) -> list:
    return [
        image_loader(["image"]),
        EnsureTyped(keys="image", dtype="float32"),
        Orientationd(keys="image", axcodes="RAS"),
        Spacingd(keys="image", pixdim=pixdim, mode="bilinear"),
        ct_window("image", window),
        CropForegroundd(keys="image", source_key="image", allow_smaller=True),
    ]


def pretraining_train_transforms(
    roi_size: Sequence[int] = (96, 96, 96),
    pixdim: Sequence[float] = (1.5, 1.5, 1.5),
    num_samples: int = 4,
    flip_probs: Sequence[float] = (0.2, 0.2, 0.1),
    window: str = "abdomen",
) -> Compose:
    """Deterministic loading (cacheable), then ``num_samples`` random ``roi_size`` crops and flips.

    Args:
        roi_size: crop size in voxels; a multiple of the encoder's down-sampling (16).
        pixdim: target spacing in mm.
        num_samples: crops per volume, each a separate batch item.
        flip_probs: flip probability along each spatial axis.
        window: CT window preset (:data:`common.transforms.CT_WINDOWS`).
    """
    return Compose(
        _load_image(pixdim, window)
        + [
            SpatialPadd(keys="image", spatial_size=roi_size),
            RandSpatialCropSamplesd(keys="image", roi_size=roi_size, num_samples=num_samples, random_size=False),
        ]
        + [RandFlipd(keys="image", prob=p, spatial_axis=axis) for axis, p in enumerate(flip_probs)]
    )


def pretraining_inference_transforms(
    roi_size: Sequence[int] | None = (96, 96, 96),
    pixdim: Sequence[float] = (1.5, 1.5, 1.5),
    window: str = "abdomen",
    divisor: int = 16,
) -> Compose:
    """Whole volumes for reconstruction export: the central ``roi_size`` of the body (``None``: all of it,
    padded to a multiple of ``divisor``)."""
    size = [ResizeWithPadOrCropd(keys="image", spatial_size=roi_size)] if roi_size else []
    return Compose(_load_image(pixdim, window) + size + [DivisiblePadd(keys="image", k=divisor)])
