"""3D CT segmentation pipelines: the Swin UNETR BTCV fine-tuning recipe, built from MONAI transforms.

Recipe (Tang et al., "Self-Supervised Pre-Training of Swin Transformers for 3D Medical Image
Analysis", CVPR 2022, BTCV fine-tuning; MONAI tutorial ``swin_unetr_btcv_segmentation_3d``):
orientation RAS, resampling to ``pixdim`` (the collection uses 1.5 mm isotropic), HU
-175..250 -> [0, 1], crop to the body, ``num_samples`` random 96^3 crops per volume balanced between
foreground and background voxels, random flips along each axis (p 0.1), random 90 degree rotations
(p 0.1), random intensity scaling (0.1, p 0.1) and shifting (0.1, p 0.5).

Every pipeline returns ``(C, H, W, D)`` MetaTensors with ``C = 1`` for images and labels.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.transforms import (
    AsDiscreted,
    Compose,
    CropForegroundd,
    Invertd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SaveImaged,
    SpatialPadd,
)

from common.transforms.ct import load_ct

IMAGE_LABEL = ("image", "label")


def segmentation_train_transforms(
    roi_size: Sequence[int] = (96, 96, 96),
    pixdim: Sequence[float] = (1.5, 1.5, 1.5),
    num_samples: int = 4,
    window: str = "abdomen",
    num_classes: int | None = None,
) -> Compose:
    """Training pipeline: deterministic part (cached by ``CacheDataset``), then random crops and augmentation.

    Args:
        roi_size: crop size in voxels after resampling.
        pixdim: target spacing in mm.
        num_samples: crops drawn per volume (``RandCropByPosNegLabeld``, positive:negative = 1:1).
        window: CT window preset, a key of :data:`common.transforms.CT_WINDOWS`.
        num_classes: entries of the task's label table (background included): labels holding other values
            raise :class:`~common.data.errors.BadInputError` when read. ``None``: labels are not checked.
    """
    keys = list(IMAGE_LABEL)
    return Compose(
        load_ct(keys, pixdim, window, num_classes)
        + [
            CropForegroundd(keys=keys, source_key="image", allow_smaller=True),
            SpatialPadd(keys=keys, spatial_size=roi_size),
            RandCropByPosNegLabeld(
                keys=keys,
                label_key="label",
                spatial_size=roi_size,
                pos=1,
                neg=1,
                num_samples=num_samples,
                image_key="image",
                image_threshold=0,
            ),
            RandFlipd(keys=keys, prob=0.1, spatial_axis=0),
            RandFlipd(keys=keys, prob=0.1, spatial_axis=1),
            RandFlipd(keys=keys, prob=0.1, spatial_axis=2),
            RandRotate90d(keys=keys, prob=0.1, max_k=3),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.1),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
        ]
    )


def segmentation_val_transforms(
    pixdim: Sequence[float] = (1.5, 1.5, 1.5), window: str = "abdomen", num_classes: int | None = None
) -> Compose:
    """Validation / evaluation pipeline: whole resampled volumes cropped to the body, for sliding windows.

    Args:
        pixdim, window, num_classes: as in :func:`segmentation_train_transforms`.
    """
    keys = list(IMAGE_LABEL)
    crop = CropForegroundd(keys=keys, source_key="image", allow_smaller=True)
    return Compose(load_ct(keys, pixdim, window, num_classes) + [crop])


def segmentation_inference_transforms(pixdim: Sequence[float] = (1.5, 1.5, 1.5), window: str = "abdomen") -> Compose:
    """Inference pipeline for images only; every step is invertible so predictions map back to the input grid."""
    return Compose(load_ct(["image"], pixdim, window))


def segmentation_postprocessing(preprocessing: Compose, output_dir: str, output_postfix: str = "seg") -> Compose:
    """Argmax the logits, map the label map back onto the input's grid, and write it as NIfTI.

    The argmax is taken before inversion (nearest-neighbour resampling of one label channel), so memory stays
    that of one volume whatever the number of classes. The written file has exactly the shape and affine the
    input had when read (``LoadImaged``), for NIfTI files and DICOM series alike.
    """
    return Compose(
        [
            AsDiscreted(keys="pred", argmax=True),
            Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=True, to_tensor=True),
            SaveImaged(
                keys="pred",
                output_dir=output_dir,
                output_postfix=output_postfix,
                output_dtype="uint8",
                resample=False,
                separate_folder=False,
                print_log=False,
            ),
        ]
    )
