"""Augmented views of 2D CT slices for the contrastive methods of the 2D study (Wolf et al. 2023).

A slice is a ``(1, H, W)`` float tensor in [0, 1] (:func:`common.transforms.slices.load_slice_transforms`).
:class:`RandResizedCropd` is torchvision's ``RandomResizedCrop`` as a MONAI dictionary transform,
:class:`MultiViewd` draws several independently augmented views of one slice and stacks them, and
:func:`augmented_view` builds one view from named augmentations (``augmentations: ["crop", "flip", "blur"]``, the
setting a bundle's recipe chooses) out of MONAI transforms, normalised last with the data set's mean and std.
:func:`contrastive_augmentations` / :func:`swav_augmentations` default to the per-view pipelines of the study's
official code (``Wolfda95/SSL-MedicalImagining-CL-MAE``, PyTorch Lightning Bolts); the paper lists fewer (Wolf et
al., Supplementary Tables 4-6: "crop, horizontal flip, gaussian blur" for MoCo v2 and BYOL, "gaussian blur, crop"
for SwAV). The slices are grey, so the colour jitter reduces to brightness and contrast: saturation and hue
change nothing on a grey image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    Identityd,
    MapTransform,
    OneOf,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    Randomizable,
    RandomOrder,
    RandRotated,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    ScaleIntensityRanged,
)

from common.tensors import as_plain_tensor
from common.transforms.slices import intensity_normalisation, load_slice_transforms

VIEWS = "views"
GLOBAL_VIEWS = "global_views"
LOCAL_VIEWS = "local_views"
# The augmentations :func:`augmented_view` builds a view from, in the order it applies them.
AUGMENTATIONS = ("rotate", "crop", "jitter", "blur", "flip", "vertical_flip", "noise")
# Those of the study's official code: MoCo v2 and BYOL (moco_data_module.py, logo_data_module.py), SwAV
# (multicropdataset.py).
CONTRASTIVE_AUGMENTATIONS = AUGMENTATIONS
SWAV_AUGMENTATIONS = ("crop", "jitter", "blur")


class RandResizedCropd(Randomizable, MapTransform):
    """Crop a random box of random area and aspect ratio from ``(C, H, W)`` images and resize it to ``size``.

    torchvision's ``RandomResizedCrop`` (Szegedy et al., CVPR 2015; the crop of SimCLR, MoCo v2, BYOL, SwAV):
    up to 10 tries draw an area fraction ``s ~ U(scale)`` and a log-uniform aspect ratio ``r ~ exp(U(log ratio))``
    and keep the first box ``w = round(sqrt(s H W r))``, ``h = round(sqrt(s H W / r))`` that fits, at a uniform
    position; if none fits, the largest central box whose aspect ratio lies within ``ratio``. The box is then
    resized to ``size`` with anti-aliasing (like PIL's resize). Every key gets the same box.

    MONAI has no equivalent: ``RandSpatialCropd(random_size=True)`` and ``RandScaleCropd`` draw each side
    independently and uniformly (no area fraction, no log-uniform aspect ratio) and do not resize.

    Args:
        keys: the image keys; values ``(C, H, W)``.
        size: output side ``(size, size)`` or ``(height, width)``.
        scale: range of the crop's area as a fraction of the image's (torchvision: (0.08, 1)).
        ratio: range of the crop's aspect ratio width / height (torchvision: (3/4, 4/3)).
        mode: interpolation, ``"bilinear"`` (torchvision's default) or ``"bicubic"``.
        allow_missing_keys: skip keys that are absent.

    Raises:
        ValueError: ``scale`` or ``ratio`` is not an increasing positive range, ``scale`` exceeds 1.
    """

    TRIES = 10

    def __init__(
        self,
        keys: KeysCollection,
        size: int | Sequence[int],
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        mode: str = "bilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"RandResizedCropd: scale must satisfy 0 < low <= high <= 1, got {tuple(scale)}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"RandResizedCropd: ratio must satisfy 0 < low <= high, got {tuple(ratio)}")
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.scale = tuple(scale)
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.mode = mode

    def randomize(self, spatial_shape: Sequence[int]) -> tuple[int, int, int, int]:
        """``(top, left, height, width)`` of the box cut from an image of ``spatial_shape`` ``(H, W)``."""
        height, width = spatial_shape
        area = height * width
        for _ in range(self.TRIES):
            target_area = area * self.R.uniform(*self.scale)
            aspect = math.exp(self.R.uniform(*self.log_ratio))
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                return int(self.R.randint(0, height - h + 1)), int(self.R.randint(0, width - w + 1)), h, w
        low, high = math.exp(self.log_ratio[0]), math.exp(self.log_ratio[1])
        if width / height < low:
            h, w = round(width / low), width
        elif width / height > high:
            h, w = height, round(height * high)
        else:
            h, w = height, width
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        box = None
        for key in self.key_iterator(d):
            image = as_plain_tensor(torch.as_tensor(d[key]))
            if image.dim() != 3:
                raise ValueError(f"RandResizedCropd: {key!r} must be (C, H, W), got shape {tuple(image.shape)}")
            if box is None:
                box = self.randomize(image.shape[1:])
            top, left, h, w = box
            crop = image[None, :, top : top + h, left : left + w].float()
            d[key] = F.interpolate(crop, size=self.size, mode=self.mode, align_corners=False, antialias=True)[0]
        return d


class MultiViewd(Randomizable, MapTransform):
    """Draw ``n`` independently augmented views of an image for each output key and stack them ``(n, C, H, W)``.

    ``MultiViewd("image", {"views": (2, augment)})`` turns ``{"image": (C, H, W)}`` into
    ``{"views": (2, C, h, w)}``: ``augment`` (a dictionary transform of the key, e.g.
    :func:`contrastive_augmentations`) is called twice on the same image, each call drawing its own random
    parameters. Several output keys give SwAV's multi-crop (``global_views`` and ``local_views``). Batches
    then hold ``(B, n, C, h, w)`` tensors at the top level of the batch dict, which the trainer moves to the device.

    Args:
        keys: the image key (one key).
        views: ``{output_key: (n, augment)}``.
        keep_source: keep the image under ``keys`` (default: drop it; slices of different sizes do not collate).

    Raises:
        ValueError: not exactly one key, or a view count below 1.
    """

    def __init__(
        self,
        keys: KeysCollection,
        views: Mapping[str, tuple[int, Callable]],
        keep_source: bool = False,
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"MultiViewd draws views of one image, got keys {self.keys}")
        for name, (count, _) in views.items():
            if int(count) < 1:
                raise ValueError(f"MultiViewd: view {name!r} needs at least one view, got {count}")
        self.views = {name: (int(count), augment) for name, (count, augment) in views.items()}
        self.keep_source = keep_source

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> MultiViewd:
        """Seed this transform and, from it, every view pipeline (MONAI's DataLoader seeds each worker here)."""
        super().set_random_state(seed, state)
        for _, augment in self.views.values():
            if isinstance(augment, Randomizable):
                augment.set_random_state(seed=int(self.R.randint(np.iinfo(np.uint32).max)))
        return self

    def randomize(self, data: object = None) -> None:
        """Nothing to draw here: every view pipeline draws its own parameters."""

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        key = self.keys[0]
        image = d[key] if self.keep_source else d.pop(key)
        for name, (count, augment) in self.views.items():
            d[name] = torch.stack([as_plain_tensor(torch.as_tensor(augment({key: image})[key])) for _ in range(count)])
        return d


def _clip_unit(keys: KeysCollection) -> ScaleIntensityRanged:
    """Clamp values to [0, 1] (as torchvision does after every colour operation on float images)."""
    return ScaleIntensityRanged(keys, a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True)


def grey_jitter(keys: KeysCollection, brightness: float = 0.4, contrast: float = 0.4) -> RandomOrder:
    """torchvision's ``ColorJitter(brightness, contrast, saturation, hue)`` on grey images, in random order.

    Brightness multiplies by ``b ~ U(1 - brightness, 1 + brightness)`` (``RandScaleIntensityd``); contrast
    blends with the image mean, ``(x - mean) c + mean`` with ``c ~ U(1 - contrast, 1 + contrast)``
    (``RandScaleIntensityFixedMeand``); each result is clamped to [0, 1]. Saturation and hue leave grey
    values unchanged and are therefore left out.
    """
    return RandomOrder(
        [
            Compose([RandScaleIntensityd(keys, factors=brightness, prob=1.0), _clip_unit(keys)]),
            Compose([RandScaleIntensityFixedMeand(keys, factors=contrast, fixed_mean=True, prob=1.0), _clip_unit(keys)]),
        ]
    )


def augmented_view(
    size: int | Sequence[int],
    scale: Sequence[float],
    keys: KeysCollection = "image",
    augmentations: Sequence[str] = AUGMENTATIONS,
    intensity: Sequence[float] | None = None,
    crop_mode: str = "bilinear",
    rotation_prob: float = 0.5,
    jitter: float = 0.4,
    jitter_prob: float = 1.0,
    blur_prob: float = 0.5,
    blur_sigma: Sequence[float] = (0.1, 2.0),
    noise_prob: float = 0.5,
    noise_std: float = 0.01,
) -> Compose:
    """One augmented view of a ``(1, H, W)`` slice in [0, 1]: the named ``augmentations``, then the normalisation.

    The augmentations, applied in this order whatever the order of ``augmentations`` (the official MoCo v2 / BYOL
    pipeline's, ``moco_data_module.py``):

    - ``rotate``: rotation by up to +-180 degrees with probability ``rotation_prob`` (zero fill; bilinear, torchvision
      nearest);
    - ``crop`` (always): :class:`RandResizedCropd` of area ``scale`` to ``size``, interpolating with ``crop_mode``;
    - ``jitter``: brightness and contrast jitter ``jitter`` (:func:`grey_jitter`) with probability ``jitter_prob``;
    - ``blur``: Gaussian blur with ``sigma ~ U(blur_sigma)`` with probability ``blur_prob`` (SimCLR's, which MoCo v2,
      BYOL and SwAV's code keep: PIL's radius, the Gaussian's standard deviation, 0.1 .. 2; MONAI draws the two
      axes' sigmas independently, PIL one for both);
    - ``flip`` / ``vertical_flip``: left-right / up-down flip with probability 0.5;
    - ``noise``: additive Gaussian noise of standard deviation ``U(0, noise_std)`` with probability ``noise_prob``
      (official: variance log-uniform in [1e-5, 1e-4], std 0.003 .. 0.01), clamped to [0, 1] as the official code.

    The slices are grey, so torchvision's colour jitter reduces to brightness and contrast and its random greyscale
    to nothing. Then ``(x - mean) / std`` for ``intensity = (mean, std)``
    (:func:`common.transforms.slices.intensity_normalisation`, the official code's last step, ``transforms.Normalize``).

    Args:
        size: output side of the view.
        scale: area range of the crop.
        keys: the image key.
        augmentations: names of :data:`AUGMENTATIONS`, ``crop`` among them.
        intensity: ``(mean, std)`` to normalise with; None: the view stays in [0, 1].
        crop_mode, rotation_prob, jitter, jitter_prob, blur_prob, blur_sigma, noise_prob, noise_std: as above.

    Raises:
        ValueError: an unknown augmentation, or no ``crop``.
    """
    unknown = sorted(set(augmentations) - set(AUGMENTATIONS))
    if unknown:
        raise ValueError(f"unknown augmentations {unknown}; choose from {AUGMENTATIONS}")
    if "crop" not in augmentations:
        raise ValueError(f"every view is a random resized crop to its size: add 'crop' to {list(augmentations)}")

    def jittered() -> RandomOrder | OneOf:
        always = grey_jitter(keys, jitter, jitter)
        return always if jitter_prob >= 1 else OneOf([always, Identityd(keys)], weights=[jitter_prob, 1 - jitter_prob])

    steps = {
        "rotate": lambda: RandRotated(keys, range_x=math.pi, prob=rotation_prob, padding_mode="zeros"),
        "crop": lambda: RandResizedCropd(keys, size, scale, mode=crop_mode),
        "jitter": jittered,
        "blur": lambda: RandGaussianSmoothd(keys, sigma_x=tuple(blur_sigma), sigma_y=tuple(blur_sigma), prob=blur_prob),
        "flip": lambda: RandFlipd(keys, prob=0.5, spatial_axis=1),
        "vertical_flip": lambda: RandFlipd(keys, prob=0.5, spatial_axis=0),
        "noise": lambda: Compose([RandGaussianNoised(keys, prob=noise_prob, std=noise_std), _clip_unit(keys)]),
    }
    return Compose(
        [steps[name]() for name in AUGMENTATIONS if name in augmentations] + intensity_normalisation(keys, intensity)
    )


def contrastive_augmentations(
    size: int = 224,
    scale: Sequence[float] = (0.2, 1.0),
    keys: KeysCollection = "image",
    augmentations: Sequence[str] = CONTRASTIVE_AUGMENTATIONS,
    intensity: Sequence[float] | None = None,
    **options,
) -> Compose:
    """One view of MoCo v2 and BYOL (:func:`augmented_view`); by default the study's official pipeline, the same for
    both methods (``moco_data_module.py``, ``logo_data_module.py``): rotation, crop of area 0.2 .. 1 (MoCo v2's),
    jitter 0.4 always, blur, both flips, noise.

    Args:
        size, scale, keys, augmentations, intensity: as :func:`augmented_view`.
        options: the other settings of :func:`augmented_view` (probabilities, blur sigma ...).
    """
    return augmented_view(size, scale, keys, augmentations, intensity, **options)


def swav_augmentations(
    size: int = 224,
    scale: Sequence[float] = (0.14, 1.0),
    keys: KeysCollection = "image",
    augmentations: Sequence[str] = SWAV_AUGMENTATIONS,
    intensity: Sequence[float] | None = None,
    jitter_prob: float = 0.8,
    **options,
) -> Compose:
    """One SwAV crop (:func:`augmented_view`); by default the study's official pipeline (SwAV's ``MultiCropDataset``,
    Caron et al. 2020, ``multicropdataset.py``): crop, brightness / contrast jitter 0.4 with probability 0.8 (SwAV's
    colour distortion; its random greyscale does nothing on grey slices), blur (p 0.5). No flips: the study's code has
    them commented out.

    Args:
        size: output side of the crop (global 224, local 96).
        scale: area range (SwAV's global (0.14, 1), local (0.05, 0.14)).
        keys, augmentations, intensity: as :func:`augmented_view`.
        jitter_prob: probability of the jitter.
        options: the other settings of :func:`augmented_view`.
    """
    return augmented_view(size, scale, keys, augmentations, intensity, jitter_prob=jitter_prob, **options)


def two_view_train_transforms(
    size: int = 224,
    scale: Sequence[float] = (0.2, 1.0),
    augmentations: Sequence[str] = CONTRASTIVE_AUGMENTATIONS,
    intensity: Sequence[float] | None = None,
) -> Compose:
    """MoCo v2 / BYOL pre-training pipeline: load a slice (``"image"``, [0, 1]) and replace it by ``"views"``
    ``(2, 1, size, size)``, two draws of :func:`contrastive_augmentations` with ``augmentations``, each normalised
    with ``intensity`` ``(mean, std)`` (None: not normalised)."""
    view = contrastive_augmentations(size, scale, augmentations=augmentations, intensity=intensity)
    return Compose(load_slice_transforms(["image"]) + [MultiViewd("image", {VIEWS: (2, view)})])


def multi_crop_train_transforms(
    global_views: int = 2,
    global_size: int = 224,
    global_scale: Sequence[float] = (0.14, 1.0),
    local_views: int = 6,
    local_size: int = 96,
    local_scale: Sequence[float] = (0.05, 0.14),
    augmentations: Sequence[str] = SWAV_AUGMENTATIONS,
    intensity: Sequence[float] | None = None,
) -> Compose:
    """SwAV's multi-crop pre-training pipeline: load a slice and replace it by ``"global_views"``
    ``(global_views, 1, global_size, global_size)`` and ``"local_views"`` ``(local_views, 1, local_size, local_size)``,
    draws of :func:`swav_augmentations` with ``augmentations``, each normalised with ``intensity`` ``(mean, std)``
    (SwAV's defaults: 2 x 224 at (0.14, 1) and 6 x 96 at (0.05, 0.14))."""
    global_view = swav_augmentations(global_size, global_scale, augmentations=augmentations, intensity=intensity)
    local_view = swav_augmentations(local_size, local_scale, augmentations=augmentations, intensity=intensity)
    views = {GLOBAL_VIEWS: (global_views, global_view), LOCAL_VIEWS: (local_views, local_view)}
    return Compose(load_slice_transforms(["image"]) + [MultiViewd("image", views)])
