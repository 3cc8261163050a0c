"""2D CT slices of the slice study (Wolf et al. 2023, arXiv 2308.06534): loading a slice.

A slice is stored as an 8-bit grey PNG (or a float ``.npy`` in ``[0, 1]``) and loaded as a ``(1, H, W)``
float32 tensor in ``[0, 1]``, rows running down the screen as a viewer shows the image.

Slices are written with the grey values of :mod:`common.data.grey_values`.
"""

from __future__ import annotations

import torch
from monai.config import KeysCollection
from monai.data import PILReader
from monai.transforms import LoadImaged, MapTransform
from PIL import Image

from common.transforms.checks import CheckFinited

# PIL modes that convert to 8-bit grey without losing range: grey (+ alpha), RGB(A), palette, bi-level
_GREY_CONVERTIBLE = {"L", "LA", "RGB", "RGBA", "RGBX", "P", "PA", "1"}


def to_grey(image: Image.Image) -> Image.Image:
    """8-bit grey version of a PIL image (``converter`` of :class:`~monai.data.PILReader`).

    Colour is reduced to luma (ITU-R 601-2, exact for the grey RGB images CT exports are), alpha is dropped.

    Raises:
        ValueError: a mode that does not fit in 8 bits (16-bit or float PNG/TIFF), naming the file.
    """
    if image.mode not in _GREY_CONVERTIBLE:
        name = getattr(image, "filename", "") or "image"
        raise ValueError(f"{name}: PIL mode {image.mode!r} is not an 8-bit grey or colour image; "
                         "slices must be 8-bit PNG/JPG or .npy")
    return image if image.mode == "L" else image.convert("L")


class SliceToUnitd(MapTransform):
    """A loaded slice as float32 in ``[0, 1]``: 8-bit values divided by 255, float values kept (they must lie in
    ``[0, 1]``). Checks that the slice is ``(1, H, W)``.

    Raises:
        ValueError: a slice of another shape, float values outside ``[0, 1]``, or an integer type other than
            ``uint8``; the message names the file.
    """

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            source = getattr(image, "meta", {}).get("filename_or_obj", key)
            if image.ndim != 3 or image.shape[0] != 1:
                raise ValueError(f"{source}: expected one grey 2D slice (H, W), got shape {tuple(image.shape)[1:]}")
            if image.dtype == torch.uint8:
                d[key] = image.float() / 255.0
            elif image.is_floating_point():
                if image.numel() and (image.min() < 0 or image.max() > 1):
                    raise ValueError(f"{source}: float slice values must lie in [0, 1], got "
                                     f"{float(image.min()):.4g} .. {float(image.max()):.4g}")
                d[key] = image.float()
            else:
                raise ValueError(f"{source}: slice of type {image.dtype}; expected uint8 or float in [0, 1]")
        return d


def slice_loader(keys: KeysCollection) -> LoadImaged:
    """``LoadImaged`` of 2D slices: PNG / JPG through :class:`~monai.data.PILReader` (grey, rows = H, as shown),
    ``.npy`` through MONAI's NumpyReader (a ``(H, W)`` array); the original dtype is kept, a channel added."""
    loader = LoadImaged(keys, dtype=None, ensure_channel_first=True)
    loader.register(PILReader(reverse_indexing=False, converter=to_grey))  # tried first for PNG / JPG
    return loader


def load_slice_transforms(keys: KeysCollection = ("image",)) -> list:
    """Read a slice file as a ``(1, H, W)`` float32 MetaTensor in ``[0, 1]``, oriented as a viewer shows it.

    PNG / JPG: 8-bit grey, RGB or RGBA (reduced to grey), value / 255. NPY: a ``(H, W)`` array of uint8
    (value / 255) or of floats already in ``[0, 1]``; NaN or infinite values raise
    :class:`~common.data.errors.BadInputError` naming the file (:class:`~common.transforms.checks.CheckFinited`).
    In a bundle config::

        "$common.transforms.slices.load_slice_transforms(['image'])"

    Args:
        keys: the keys holding slice file paths.

    Returns:
        the list of transforms, to put first in a ``Compose``.
    """
    return [slice_loader(keys), CheckFinited(keys), SliceToUnitd(keys)]

