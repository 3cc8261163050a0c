"""CT intensity presets used by the papers of the collection, and the loading head of every pipeline
(:func:`load_ct`).

Each preset maps a Hounsfield-unit interval linearly to ``[0, 1]`` and clips outside it:

========================  ================  ==================================================
preset                    HU interval       used by
========================  ================  ==================================================
``abdomen``               -175 .. 250       HySparK, SparK-3D, BTCV fine-tuning (Swin UNETR)
``wide``                  -1000 .. 1000     MiM and GL-MAE pre-training
``full``                  -1024 .. 3071     the 2D slice study (12-bit range, no windowing)
========================  ================  ==================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from monai.transforms import EnsureTyped, Orientationd, ScaleIntensityRanged, Spacingd

from common.transforms.checks import checked_loader

CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (-175.0, 250.0),
    "wide": (-1000.0, 1000.0),
    "full": (-1024.0, 3071.0),
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


def load_ct(keys: Sequence[str], pixdim: Sequence[float], window: str, num_classes: int | None = None) -> list:
    """The deterministic head of every pipeline: read (NIfTI or DICOM series) and check the content
    (:func:`common.transforms.checks.checked_loader`), float32, orient to RAS, resample to ``pixdim`` (bilinear
    for ``"image"``, nearest for labels) and window ``"image"`` with ``window``.

    Args:
        keys: the keys to load, ``"image"`` and optionally ``"label"``.
        pixdim: target spacing in mm.
        window: CT window preset, a key of :data:`CT_WINDOWS`.
        num_classes: entries of the task's label table; labels are checked to hold ``0 .. num_classes - 1``
            only when given. The image is always checked (finite, within the int16 range of HU).

    Returns:
        the list of transforms; they raise :class:`~common.data.errors.BadInputError` for a bad input.
    """
    modes = ["bilinear" if k == "image" else "nearest" for k in keys]
    return [
        *checked_loader(keys, num_classes).transforms,
        EnsureTyped(keys=keys, dtype="float32"),
        Orientationd(keys=keys, axcodes="RAS", labels=None),  # axis labels of the image's "space": RAS, any loader
        PathSafeSpacingd(keys=keys, pixdim=pixdim, mode=modes),
        ct_window("image", window),
    ]
