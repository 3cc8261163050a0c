"""2D CT slices of the slice study (Wolf et al. 2023, arXiv 2308.06534): HU -> grey values, and loading a slice.

A slice is stored as an 8-bit grey PNG (or a float ``.npy`` in ``[0, 1]``) and loaded as a ``(1, H, W)``
float32 tensor in ``[0, 1]``, rows running down the screen as a viewer shows the image.

Grey values (:data:`SLICE_WINDOWS`):

==========  ===============  =====================================================================
window      HU interval      used by
==========  ===============  =====================================================================
``full``    -1024 .. 3071    pre-training slices: the paper's interval mapping of the whole 12-bit
                             range to 0..255, no windowing (pre-training data of the 2D study)
``brain``   -5 .. 75         the brain (intracranial haemorrhage) downstream task: W 80 / L 35
``slice``   min .. max       the official preprocessing code (``LIDC_3DDICOM_to_2Dpng.py``) maps
                             each slice's own minimum .. maximum to 0..255
==========  ===============  =====================================================================

The paper's fixed interval keeps one HU at one grey value across slices and scans; the official code's
per-slice range does not (a slice holding metal is darker). The collection follows the paper; ``slice``
is there to reproduce the official code.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import PILReader
from monai.transforms import LoadImaged, MapTransform
from PIL import Image

from common.transforms.checks import CheckFinited

SLICE_WINDOWS: dict[str, tuple[float, float] | None] = {
    "full": (-1024.0, 3071.0),  # CT_WINDOWS["full"]; not imported: common.transforms.ct imports common.data
    "brain": (35.0 - 80.0 / 2, 35.0 + 80.0 / 2),
    "slice": None,  # each slice's own min .. max
}
# PIL modes that convert to 8-bit grey without losing range: grey (+ alpha), RGB(A), palette, bi-level
_GREY_CONVERTIBLE = {"L", "LA", "RGB", "RGBA", "RGBX", "P", "PA", "1"}


def hu_to_unit(hu: np.ndarray | torch.Tensor, window: str = "full") -> np.ndarray | torch.Tensor:
    """Map Hounsfield units linearly to ``[0, 1]``: the low end of ``window`` to 0, the high end to 1, clipped.

    Args:
        hu: an array or tensor in HU, any shape (a slice, for ``window="slice"``).
        window: a key of :data:`SLICE_WINDOWS`.

    Returns:
        a float array / tensor of ``hu``'s shape (float32 unless ``hu`` is float64).

    Raises:
        ValueError: ``window`` is unknown.
    """
    if window not in SLICE_WINDOWS:
        raise ValueError(f"unknown slice window {window!r}; known windows: {sorted(SLICE_WINDOWS)}")
    low, high = SLICE_WINDOWS[window] or (float(hu.min()), float(hu.max()))
    if isinstance(hu, torch.Tensor):
        hu = hu if hu.is_floating_point() else hu.float()
    else:
        hu = np.asarray(hu)
        hu = hu if hu.dtype == np.float64 else hu.astype(np.float32)
    scaled = (hu - low) / max(high - low, 1e-6)
    return scaled.clip(0.0, 1.0)


def hu_to_uint8(hu: np.ndarray | torch.Tensor, window: str = "full") -> np.ndarray:
    """Grey values 0..255 of a slice in HU: :func:`hu_to_unit` times 255, rounded (-1024 HU -> 0, 3071 HU -> 255).

    Returns:
        a ``uint8`` numpy array of ``hu``'s shape.
    """
    unit = hu_to_unit(hu, window)
    unit = unit.cpu().numpy() if isinstance(unit, torch.Tensor) else unit
    return np.round(unit * 255.0).astype(np.uint8)


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

