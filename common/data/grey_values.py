"""Grey values of 2D CT slices (the slice study, Wolf et al. 2023, arXiv 2308.06534): Hounsfield units -> ``[0, 1]``
and 8-bit grey, as the slice writers store them (:mod:`common.data.slices`,
:mod:`common.data.demo_slices_classification`); :func:`common.transforms.slices.load_slice_transforms` reads them.

Windows (:data:`SLICE_WINDOWS`):

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

SLICE_WINDOWS: dict[str, tuple[float, float] | None] = {
    "full": (-1024.0, 3071.0),  # common.transforms.CT_WINDOWS["full"]; tests/test_slices.py checks
    "brain": (35.0 - 80.0 / 2, 35.0 + 80.0 / 2),
    "slice": None,  # each slice's own min .. max
}


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
