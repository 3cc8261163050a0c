"""CT intensity presets used by the papers of the collection, and the loading head of every 3D pipeline
(:func:`load_ct`).

Each preset maps a Hounsfield-unit interval linearly to ``[0, 1]`` and clips outside it:

========================  ================  ==================================================
preset                    HU interval       used by
========================  ================  ==================================================
``abdomen``               -175 .. 250       HySparK, SparK-3D, BTCV fine-tuning (Swin UNETR)
``wide``                  -1000 .. 1000     MiM and GL-MAE pre-training
``full``                  -1024 .. 3071     the 2D slice study (12-bit range, no windowing)
``brain``                 0 .. 80           head CT, brain: W 80 / L 40
``bone``                  -500 .. 1500      head CT, skull and bone: W 2000 / L 500
========================  ================  ==================================================

``brain`` and ``bone`` are the usual radiological display windows of a head CT (width / level), not values of the
collection's papers, none of which pre-trains on heads; under ``abdomen`` a head CT shows the skull solid white and
the brain one flat grey. (The 2D slice study's own ``brain`` window, W 80 / L 35, is
:data:`common.data.SLICE_WINDOWS`'s.)

Images that are not CT (MRI) take :data:`ZSCORE` instead of a window: each channel is z-scored over its non-zero
voxels (MONAI's ``NormalizeIntensityd(nonzero=True, channel_wise=True)``, as Swin UNETR's official BraTS code
``SwinUNETR/BRATS21/utils/data_utils.py`` does), which leaves the zero background at 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from monai.transforms import (
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
)

from common.data.tasks import ZSCORE
from common.transforms.checks import checked_loader

CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (-175.0, 250.0),
    "wide": (-1000.0, 1000.0),
    "full": (-1024.0, 3071.0),
    "brain": (40.0 - 80.0 / 2, 40.0 + 80.0 / 2),
    "bone": (500.0 - 2000.0 / 2, 500.0 + 2000.0 / 2),
}


def ct_window(keys: str | Sequence[str], preset: str = "abdomen") -> ScaleIntensityRanged:
    """Map the HU interval of ``preset`` (a key of :data:`CT_WINDOWS`) to ``[0, 1]``, clipping outside.

    Raises:
        ValueError: ``preset`` is not a known preset (the message lists the known ones).
    """
    if preset not in CT_WINDOWS:
        raise ValueError(f"unknown CT window preset {preset!r}; known presets: {sorted(CT_WINDOWS)}")
    a_min, a_max = CT_WINDOWS[preset]
    return ScaleIntensityRanged(keys=keys, a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True)


def intensity_transform(keys: str | Sequence[str], intensity: str = "abdomen") -> MapTransform:
    """The intensity normalisation ``intensity`` names: a CT window (:func:`ct_window`, a key of :data:`CT_WINDOWS`),
    or :data:`ZSCORE` (images that are not CT): ``(x - mean) / std`` of each channel over its non-zero voxels, zeros
    kept (``NormalizeIntensityd(nonzero=True, channel_wise=True)``).

    Raises:
        ValueError: ``intensity`` is neither (the message lists the known names).
    """
    if intensity == ZSCORE:
        return NormalizeIntensityd(keys=keys, nonzero=True, channel_wise=True)
    if intensity not in CT_WINDOWS:
        raise ValueError(f"unknown intensity {intensity!r}; known: the CT windows {sorted(CT_WINDOWS)} or {ZSCORE!r}")
    return ct_window(keys, intensity)


class PathSafeSpacingd(Spacingd):
    """MONAI's ``Spacingd`` that sets non-dict ``<key>_*`` entries aside while it runs.

    MONAI 1.6.1's ``Spacingd`` updates every ``<key>_*`` entry of the data as a meta dict; MONAI Label adds the
    string ``image_path`` to each request, which then fails (``'str' object has no attribute 'update'``). Such
    entries are passed through unchanged instead.
    """

    def __call__(self, data: Mapping, lazy: bool | None = None) -> dict:
        prefixes = tuple(f"{key}_" for key in self.keys)
        aside = {k: v for k, v in data.items() if isinstance(k, str) and k.startswith(prefixes)
                 and not isinstance(v, Mapping)}
        resampled = super().__call__({k: v for k, v in data.items() if k not in aside}, lazy=lazy)
        resampled.update(aside)
        return resampled


def load_ct(
    keys: Sequence[str], pixdim: Sequence[float], window: str, num_classes: int | None = None, in_channels: int = 1
) -> list:
    """The deterministic head of every 3D pipeline: read (NIfTI or DICOM series) and check the content
    (:func:`common.transforms.checks.checked_loader`), float32, orient to RAS, resample to ``pixdim`` (bilinear
    for ``"image"``, nearest for labels) and normalise ``"image"``'s intensity with ``window``.

    Args:
        keys: the keys to load, ``"image"`` and optionally ``"label"``.
        pixdim: target spacing in mm.
        window: CT window preset, a key of :data:`CT_WINDOWS`; or :data:`ZSCORE` for images that are not CT (MRI),
            see :func:`intensity_transform`.
        num_classes: entries of the task's label table; labels are checked to hold ``0 .. num_classes - 1``
            only when given. The image is always checked: finite, within the int16 range of HU where it is CT.
        in_channels: the channels each image must have (a label has one, on the image's grid).

    Returns:
        the list of transforms; they raise :class:`~common.data.errors.BadInputError` for a bad input.
    """
    modes = ["bilinear" if k == "image" else "nearest" for k in keys]
    return [
        *checked_loader(keys, num_classes, in_channels, ct=window != ZSCORE).transforms,
        EnsureTyped(keys=keys, dtype="float32"),
        Orientationd(keys=keys, axcodes="RAS", labels=None),  # axis labels of the image's "space": RAS, any loader
        PathSafeSpacingd(keys=keys, pixdim=pixdim, mode=modes),
        intensity_transform("image", window),
    ]
