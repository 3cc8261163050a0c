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
    Invertd,
    RandFlipd,
    RandSpatialCropSamplesd,
    ResizeWithPadOrCropd,
    SaveImaged,
    SpatialPadd,
    SplitDimd,
)

from common.transforms.ct import load_ct


def load_body_ct(pixdim: Sequence[float], window: str) -> list:
    """:func:`load_ct` of ``"image"`` then a crop to the body (the foreground of the windowed image)."""
    return load_ct(["image"], pixdim, window) + [CropForegroundd(keys="image", source_key="image", allow_smaller=True)]


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
        load_body_ct(pixdim, window)
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
    return Compose(load_body_ct(pixdim, window) + size + [DivisiblePadd(keys="image", k=divisor)])


def reconstruction_postprocessing(preprocessing: Compose, names: Sequence[str], output_dir: str) -> Compose:
    """Split the exported images of :class:`common.engine.MaskedReconstructionInferer` (``pred``, one channel per
    name), map each back onto the input's grid and write it as ``<case>_<name>.nii.gz`` in ``output_dir``."""
    keys = [f"pred_{name}" for name in names]
    return Compose(
        [
            SplitDimd(keys="pred", output_postfixes=list(names), dim=0, keepdim=True, update_meta=True),
            Invertd(keys=keys, transform=preprocessing, orig_keys="image", nearest_interp=False, to_tensor=True),
            *(
                SaveImaged(keys=key, output_dir=output_dir, output_postfix=name, resample=False,
                           separate_folder=False, print_log=False)
                for key, name in zip(keys, names)
            ),
        ]
    )
