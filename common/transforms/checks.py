"""Content checks of freshly read inputs: a corrupt scan or label stops the run, naming its file.

A file can pass every header check and still hold data no model should train on: NaN or infinite voxels,
values no CT can hold (a gzip corrupted in the middle of its stream loads as int32 values of +-2^31), label
values outside the task's label table, an image with other channels than the task's modalities, a label on another
grid than its image. These MONAI ``MapTransform`` s look at the values right after loading
(:func:`checked_loader`, the head of :func:`common.transforms.load_ct` and of the 2D slice pipelines); they cost
one pass over values already in memory, and raise :class:`~common.data.errors.BadInputError` naming the file
(for a DICOM series, the series and its folder), what was found and what was expected.

Every check takes channel-first tensors ``(C, *spatial)``, as ``LoadImaged(ensure_channel_first=True)`` gives.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, MapTransform

from common.data.datalist import image_loader
from common.data.dicom import SERIES_META_KEY
from common.data.errors import BadInputError

# CT values are int16 after the modality rescale; padding (-1024, -2048, -3024, -32768 HU) lies inside.
CT_RANGE = (-32768.0, 32767.0)
MAX_LISTED_VALUES = 10


def input_name(image: torch.Tensor, key: Hashable) -> str:
    """What identifies a loaded input: its DICOM series, else its file (meta ``filename_or_obj``), else ``key``."""
    meta = getattr(image, "meta", {})
    return str(meta.get(SERIES_META_KEY) or meta.get("filename_or_obj") or f"the input under {key!r}")


class CheckCTd(MapTransform):
    """Raise on CT volumes holding NaN or infinite values, or values outside the int16 range of HU.

    One ``aminmax`` pass; where it fails, a second pass tells how many voxels are wrong and where.

    Raises:
        BadInputError: non-finite values, or values outside ``[-32768, 32767]``; the message names the file.
    """

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = _values(d[key])
            if image.numel() == 0:
                continue
            low, high = (float(v) for v in torch.aminmax(image))
            if not CT_RANGE[0] <= low <= high <= CT_RANGE[1]:  # False for NaN as well
                reason = _non_finite(image, "voxels") or _out_of_range(image, low, high)
                raise BadInputError(input_name(d[key], key), reason)
        return d


class CheckFinited(MapTransform):
    """Raise on inputs holding NaN or infinite values (2D ``.npy`` slices; integer images pass as they are).

    Raises:
        BadInputError: non-finite values; the message names the file, how many and where.
    """

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = _values(d[key])
            if image.is_floating_point() and not bool(torch.isfinite(image).all()):
                raise BadInputError(input_name(d[key], key), _non_finite(image, "pixels"))
        return d


class CheckLabelsd(MapTransform):
    """Raise on label maps holding values other than the integers ``0 .. num_classes - 1``.

    Args:
        keys: the keys of the label maps.
        num_classes: the number of entries of the task's label table, background included.
        allow_missing_keys: do not raise where a key is absent.

    Raises:
        ValueError: ``num_classes < 1``.
        BadInputError: (when called) unexpected values; the message names the file, the values (sorted, the
            first ten) and how many voxels hold them.
    """

    def __init__(self, keys: KeysCollection, num_classes: int, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1 (background), got {num_classes}")
        self.num_classes = num_classes

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            label = _values(d[key])
            if label.numel() == 0:
                continue
            low, high = (float(v) for v in torch.aminmax(label))
            integral = not label.is_floating_point() or bool((label == label.round()).all())
            if not (0 <= low and high <= self.num_classes - 1 and integral):
                raise BadInputError(input_name(d[key], key), self._unexpected(label))
        return d

    def _unexpected(self, label: torch.Tensor) -> str:
        wrong = (label < 0) | (label > self.num_classes - 1) | (label != label.round())  # NaN: != itself
        values = torch.unique(label[wrong]).tolist()
        listed = ", ".join(f"{v:g}" for v in values[:MAX_LISTED_VALUES])
        more = f", ... ({len(values)} distinct)" if len(values) > MAX_LISTED_VALUES else ""
        return (
            f"found label values [{listed}{more}] in {int(wrong.sum()):,} of {label.numel():,} voxels; expected "
            f"integers 0..{self.num_classes - 1} (the task's label table has {self.num_classes} entries)"
        )


class CheckShapesd(MapTransform):
    """Raise on an image whose channels are not the task's, or a label that is not one map on its image's grid.

    Args:
        keys: the image's key.
        in_channels: the channels each image must have (one per modality of the task's table).
        label_key: the key of the label map loaded with the image; ``None``, or entries without it: the image only
            (a classification entry's ``"label"`` is a class index, not a map).

    Raises:
        BadInputError: (when called) the image's channel count differs, naming the file, both counts and what to
            check; the label has several channels, or another spatial shape than its image (naming both files).
    """

    def __init__(self, keys: KeysCollection = "image", in_channels: int = 1, label_key: str | None = "label"):
        super().__init__(keys)
        self.in_channels = in_channels
        self.label_key = label_key

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if image.shape[0] != self.in_channels:
                raise BadInputError(
                    input_name(image, key),
                    f"has {image.shape[0]} channel(s) of shape {tuple(image.shape[1:])}; expected {self.in_channels}, "
                    "one per modality of the task's table (dataset.json 'modality' / 'channel_names'; a 4D NIfTI holds "
                    "its channels last, nnU-Net case files one each as <case>_0000, <case>_0001 ...)",
                )
            label = d.get(self.label_key) if self.label_key is not None else None
            if label is None:
                continue
            if label.shape[0] != 1 or label.shape[1:] != image.shape[1:]:
                raise BadInputError(
                    input_name(label, self.label_key),
                    f"label of shape {tuple(label.shape[1:])} with {label.shape[0]} channel(s); its image "
                    f"{input_name(image, key)} has shape {tuple(image.shape[1:])}: expected one label map on the "
                    "image's voxel grid",
                )
        return d


def _values(image: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The values of a loaded input as a plain tensor (no metadata to carry through the checks' operations)."""
    return image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)


def _non_finite(image: torch.Tensor, unit: str) -> str | None:
    """How many values of ``image`` are NaN / infinite and the index box holding them, or ``None`` if all finite."""
    bad = ~torch.isfinite(image)
    count = int(bad.sum())
    if count == 0:
        return None
    nan = int(torch.isnan(image).sum())
    return (
        f"found {nan:,} NaN and {count - nan:,} infinite {unit} ({100 * count / image.numel():.3g} % of "
        f"{image.numel():,}) within {_index_box(bad)}; expected finite values"
    )


def _out_of_range(image: torch.Tensor, low: float, high: float) -> str:
    """How many values lie outside :data:`CT_RANGE`, the extremes, and where the first one is."""
    outside = (image < CT_RANGE[0]) | (image > CT_RANGE[1])
    first = np.unravel_index(int(torch.argmax(outside.flatten().to(torch.uint8))), tuple(outside.shape))[1:]
    return (
        f"found values {low:.10g} .. {high:.10g} ({int(outside.sum()):,} of {image.numel():,} voxels outside the "
        f"int16 range {CT_RANGE[0]:.0f} .. {CT_RANGE[1]:.0f}, the first at voxel {tuple(int(i) for i in first)}); "
        "expected CT values in HU, which fit int16 after the rescale (a corrupt file, or not a CT in HU)"
    )


def _index_box(mask: torch.Tensor) -> str:
    """The spatial index ranges (channel dropped) holding the ``True`` values of a channel-first ``mask``."""
    ranges = []
    for dim in range(1, mask.ndim):
        hits = torch.nonzero(mask.any(dim=tuple(d for d in range(mask.ndim) if d != dim))).flatten()
        ranges.append(f"{int(hits[0])}..{int(hits[-1])}")
    return f"index ranges [{', '.join(ranges)}] of the {tuple(mask.shape[1:])} grid"


def ct_checks(
    keys: Sequence[str], num_classes: int | None = None, in_channels: int | None = 1, ct: bool = True
) -> list[MapTransform]:
    """The checks of freshly loaded entries: ``"image"`` (:class:`CheckCTd` for CT, :class:`CheckFinited` for other
    images such as MRI) if in ``keys``; its channels and the label's grid (:class:`CheckShapesd`) unless
    ``in_channels`` is None; ``"label"`` (:class:`CheckLabelsd`) if in ``keys`` and ``num_classes`` is given."""
    checks: list[MapTransform] = []
    if "image" in keys:
        checks.append(CheckCTd("image") if ct else CheckFinited("image"))
        if in_channels is not None:
            checks.append(CheckShapesd("image", in_channels, "label" if "label" in keys else None))
    if num_classes is not None and "label" in keys:
        checks.append(CheckLabelsd("label", num_classes))
    return checks


def checked_loader(
    keys: str | Sequence[str], num_classes: int | None = None, in_channels: int | None = 1, ct: bool = True
) -> Compose:
    """Read datalist entries (:func:`common.data.image_loader`) and check their content (:func:`ct_checks`).

    The loading head of :func:`common.transforms.load_ct`, and the ``load`` of :func:`common.data.screen_datalist`.

    Args:
        keys: the keys to load, e.g. ``["image", "label"]``.
        num_classes: the number of entries of the task's label table; ``None``: labels are not checked.
        in_channels: the channels each image must have (the task's modalities; a label is one map on its image's
            grid); ``None``: not checked.
        ct: the images are CT in HU (values within int16); else (MRI) they need only be finite.

    Returns:
        the transform: an entry -> the entry with ``(C, X, Y, Z)`` MetaTensors. Calling it raises (wrapped by
        ``Compose`` in a ``RuntimeError``) :class:`~common.data.errors.BadInputError` for a bad input.
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    return Compose([image_loader(keys), *ct_checks(keys, num_classes, in_channels, ct)])
