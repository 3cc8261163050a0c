"""2D CT slice classification pipelines of the downstream tasks of Wolf et al. 2023 (arXiv 2308.06534).

A slice file -> ``(1, image_size, image_size)``: loaded as grey values in ``[0, 1]``
(:func:`common.transforms.slices.load_slice_transforms`), resized to the network's input (224 x 224 in the
paper; bilinear, anti-aliased when shrinking; the aspect ratio is not kept, as ``Resize`` in the official code),
then normalised with the training set's mean and standard deviation
(:func:`common.transforms.slices.intensity_statistics`).
Training adds random flips, left-right and up-down, each with probability 0.5.

Labels are class indices, passed through untouched.
"""

from __future__ import annotations

from monai.transforms import Compose, NormalizeIntensityd, RandFlipd, Resized

from common.transforms.slices import load_slice_transforms


def slice_classification_preprocessing(
    image_size: int = 224, mean: float | None = 0.0, std: float | None = 1.0
) -> Compose:
    """The deterministic pipeline of validation, test and inference: a slice file -> ``(1, image_size, image_size)``.

    Args:
        image_size: side of the square network input.
        mean, std: intensity statistics of the training images (values in ``[0, 1]``); ``None`` when unknown.

    Raises:
        ValueError: ``mean`` or ``std`` is unknown (weights saved without their network spec).
    """
    if mean is None or std is None:
        raise ValueError(
            'the intensity statistics of the training slices are unknown (the weights carry no network spec): pass'
            ' --intensity "[mean, std]"'
        )
    return Compose(
        [
            *load_slice_transforms(["image"]),
            Resized(keys="image", spatial_size=(image_size, image_size), mode="bilinear", anti_aliasing=True),
            NormalizeIntensityd(keys="image", subtrahend=mean, divisor=std),
        ]
    )


def slice_classification_train_transforms(image_size: int = 224, mean: float = 0.0, std: float = 1.0) -> Compose:
    """:func:`slice_classification_preprocessing`, then a left-right and an up-down flip, each with p = 0.5."""
    return Compose(
        [
            *slice_classification_preprocessing(image_size, mean, std).transforms,
            RandFlipd(keys="image", prob=0.5, spatial_axis=1),
            RandFlipd(keys="image", prob=0.5, spatial_axis=0),
        ]
    )
