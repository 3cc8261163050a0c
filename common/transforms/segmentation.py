"""3D segmentation pipelines: the Swin UNETR / UNETR BTCV fine-tuning pipeline, built from MONAI transforms, for CT
and for MRI.

The official BTCV code of Swin UNETR and UNETR (Project-MONAI/research-contributions, ``SwinUNETR/BTCV`` and
``UNETR/BTCV``, ``utils/data_utils.py``): orientation RAS, resampling to ``pixdim`` (the collection uses 1.5 mm
isotropic), HU -175..250 -> [0, 1], crop to the body, ``num_samples`` random 96^3 crops per volume balanced between
foreground and background voxels, random flips along each axis, random 90 degree rotations, random intensity scaling
(factor 0.1) and shifting (offset 0.1), each with the probability of ``augmentation_probs``:
:data:`OFFICIAL_AUGMENTATION_PROBS` (``main.py``'s defaults) or :data:`TUTORIAL_AUGMENTATION_PROBS` (MONAI's
``swin_unetr_btcv_segmentation`` tutorial and model-zoo bundle).

Any task (an MSD / nnU-Net data set) runs through the same pipelines: its image channels (``in_channels``, one per
modality) and its intensity normalisation (``intensity``: a CT window, or the z-score of MRI channels,
:func:`common.transforms.ct.intensity_transform`) are arguments; the crop to the body keeps the bounding box of the
non-zero voxels of any channel (after a CT window: above its lower end; after the z-score: inside the non-zero
region), then crops and augmentation are those of BTCV.

Every pipeline returns ``(C, H, W, D)`` MetaTensors: ``C = in_channels`` for images, ``C = 1`` for labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
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

# research-contributions SwinUNETR/BTCV/main.py (and UNETR/BTCV/main.py): --RandFlipd_prob 0.2,
# --RandRotate90d_prob 0.2, --RandScaleIntensityd_prob 0.1, --RandShiftIntensityd_prob 0.1.
OFFICIAL_AUGMENTATION_PROBS = {"flip": 0.2, "rotate90": 0.2, "scale_intensity": 0.1, "shift_intensity": 0.1}
# MONAI's model zoo swin_unetr_btcv_segmentation configs/train.json, as the tutorial.
TUTORIAL_AUGMENTATION_PROBS = {"flip": 0.1, "rotate90": 0.1, "scale_intensity": 0.1, "shift_intensity": 0.5}


def segmentation_train_transforms(
    roi_size: Sequence[int] = (96, 96, 96),
    pixdim: Sequence[float] = (1.5, 1.5, 1.5),
    num_samples: int = 4,
    intensity: str = "abdomen",
    num_classes: int | None = None,
    augmentation_probs: Mapping[str, float] = OFFICIAL_AUGMENTATION_PROBS,
    in_channels: int = 1,
) -> Compose:
    """Training pipeline: deterministic part (cached by ``CacheDataset``), then random crops and augmentation.

    Args:
        roi_size: crop size in voxels after resampling.
        pixdim: target spacing in mm.
        num_samples: crops drawn per volume (``RandCropByPosNegLabeld``, positive:negative = 1:1).
        intensity: a CT window preset (a key of :data:`common.transforms.CT_WINDOWS`), or ``"zscore"`` for images
            that are not CT (:func:`common.transforms.ct.intensity_transform`).
        num_classes: entries of the task's label table (background included): labels holding other values
            raise :class:`~common.data.errors.BadInputError` when read. ``None``: labels are not checked.
        augmentation_probs: probability of each augmentation, keys ``flip`` (each axis on its own), ``rotate90``,
            ``scale_intensity``, ``shift_intensity``.
        in_channels: the image channels (the task's modalities); an image with others raises ``BadInputError``.
    """
    keys = list(IMAGE_LABEL)
    probs = augmentation_probs
    return Compose(
        load_ct(keys, pixdim, intensity, num_classes, in_channels)
        + [
            _crop_to_body(keys),
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
            RandFlipd(keys=keys, prob=probs["flip"], spatial_axis=0),
            RandFlipd(keys=keys, prob=probs["flip"], spatial_axis=1),
            RandFlipd(keys=keys, prob=probs["flip"], spatial_axis=2),
            RandRotate90d(keys=keys, prob=probs["rotate90"], max_k=3),
            RandScaleIntensityd(keys="image", factors=0.1, prob=probs["scale_intensity"]),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=probs["shift_intensity"]),
        ]
    )


def segmentation_val_transforms(
    pixdim: Sequence[float] = (1.5, 1.5, 1.5),
    intensity: str = "abdomen",
    num_classes: int | None = None,
    in_channels: int = 1,
) -> Compose:
    """Validation / evaluation pipeline: whole resampled volumes cropped to the body, for sliding windows.

    Args:
        pixdim, intensity, num_classes, in_channels: as in :func:`segmentation_train_transforms`.
    """
    keys = list(IMAGE_LABEL)
    return Compose(load_ct(keys, pixdim, intensity, num_classes, in_channels) + [_crop_to_body(keys)])


def segmentation_inference_transforms(
    pixdim: Sequence[float] = (1.5, 1.5, 1.5), intensity: str = "abdomen", in_channels: int = 1
) -> Compose:
    """Inference pipeline for images only; every step is invertible so predictions map back to the input grid.

    Args:
        pixdim, intensity, in_channels: as in :func:`segmentation_train_transforms`.
    """
    return Compose(load_ct(["image"], pixdim, intensity, in_channels=in_channels))


def _non_zero(image: torch.Tensor) -> torch.Tensor:
    """The voxels to keep in the crop to the body: those not 0 (after a CT window: above its lower end)."""
    return image != 0


def _crop_to_body(keys: Sequence[str]) -> CropForegroundd:
    """The bounding box of the non-zero voxels of any channel of ``"image"``, applied to ``keys``."""
    return CropForegroundd(keys=keys, source_key="image", select_fn=_non_zero, allow_smaller=True)


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
