"""2D CT slice classification pipelines of the downstream tasks of Wolf et al. 2023 (arXiv 2308.06534).

A slice file -> ``(1, image_size, image_size)``: loaded as grey values in ``[0, 1]``
(:func:`common.transforms.slices.load_slice_transforms`), resized to the network's input (224 x 224 in the
paper; bilinear, anti-aliased when shrinking; the aspect ratio is not kept, as ``Resize`` in the official code),
then normalised with the training set's mean and standard deviation (:func:`intensity_statistics`).
Training adds random flips, left-right and up-down, each with probability 0.5.

Labels are class indices, passed through untouched.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

from monai.transforms import Compose, NormalizeIntensityd, RandFlipd, Resized

from common.data.errors import DatalistError
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


def intensity_statistics(items: Sequence[dict], key: str = "image") -> tuple[float, float]:
    """Mean and standard deviation of every pixel of the images of ``items``, as loaded for training (``[0, 1]``).

    The values of the dataset normalisation (``NormalizeIntensityd(subtrahend=mean, divisor=std)``). Each pixel
    counts once, at the image's own size. The result is cached in memory per list of files (path, size and
    modification time), so the many runs of a dataset-reduction study in one process read the images once;
    pass the whole training split (the statistics need no labels), not a reduced subset, to share it.

    Raises:
        DatalistError: ``items`` is empty.
    """
    if not items:
        raise DatalistError("intensity_statistics needs at least one image")
    files = tuple((str(entry[key]), os.path.getsize(entry[key]), os.path.getmtime(entry[key])) for entry in items)
    return _cached_statistics(files)


@functools.lru_cache(maxsize=16)
def _cached_statistics(files: tuple[tuple[str, int, float], ...]) -> tuple[float, float]:
    load = Compose(load_slice_transforms(["image"]))
    count, total, squares = 0, 0.0, 0.0
    for path, _, _ in files:
        pixels = load({"image": path})["image"].double()
        count, total, squares = count + pixels.numel(), total + float(pixels.sum()), squares + float((pixels**2).sum())
    mean = total / count
    return mean, max(squares / count - mean**2, 0.0) ** 0.5
