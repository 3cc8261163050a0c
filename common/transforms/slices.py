"""2D CT slices of the slice study (Wolf et al. 2023, arXiv 2308.06534): loading a slice, and the data set's
intensity statistics the slices are normalised with.

A slice is stored as an 8-bit grey PNG (or a float ``.npy`` in ``[0, 1]``) and loaded as a ``(1, H, W)``
float32 tensor in ``[0, 1]``, rows running down the screen as a viewer shows the image.

Slices are written with the grey values of :mod:`common.data.grey_values`. "Intensity normalization was applied to
the images using the mean and standard deviation of the dataset" (Wolf et al., Methods, "Dataset Preprocessing", of
the LIDC-IDRI pre-training slices; "Downstream Tasks" says the same of each task): :func:`intensity_statistics`
estimates them once per data set, :func:`intensity_normalisation` applies them, ``(x - mean) / std``, as the last
intensity step of a pipeline.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import PILReader
from monai.transforms import Compose, LoadImaged, MapTransform, NormalizeIntensityd
from PIL import Image
from tqdm import tqdm

from common.data.errors import DatalistError
from common.data.screening import PROGRESS_MIN_ENTRIES
from common.transforms.checks import CheckFinited

logger = logging.getLogger(__name__)

# ImageNet's normalisation (torchvision / timm: mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)), which the
# official SparK code applies to three grey copies of a slice, reduced to one grey channel: the channels' averages.
IMAGENET_GREY_INTENSITY = (0.449, 0.226)
NORMALISATIONS = ("dataset", "imagenet", "none")

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


def intensity_statistics(
    items: Sequence[dict],
    key: str = "image",
    samples: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    write_cache: bool = True,
) -> tuple[float, float]:
    """Mean and standard deviation of every pixel of the slices of ``items``, as loaded for training (``[0, 1]``).

    The values of the dataset normalisation (``NormalizeIntensityd(subtrahend=mean, divisor=std)``). Each pixel
    counts once, at the slice's own size; the slices are read one at a time (memory does not grow with their number),
    with a progress bar from a few slices on. At the study's scale (244,527 LIDC slices) a deterministic random sample
    of ``samples`` slices estimates them: drawn without replacement by ``numpy.random.default_rng(seed)``, the same
    slices for the same list, whatever the machine.

    The result depends on the files read only, so it is cached by their ``(path, size, modification time)``: in
    memory (the many runs of a dataset-reduction study in one process read the slices once; pass the whole training
    split, not a reduced subset, to share it) and, with ``cache_dir``, in a small JSON file there that a later run
    reads instead of the slices.

    Args:
        items: the datalist, ``[{key: slice path}, ...]``.
        key: the key of the slice paths.
        samples: read this many slices; None, or at least ``len(items)``: all of them (the exact statistics).
        seed: the seed of the sample.
        cache_dir: the folder of the cache file (created); None: cache in memory only.
        write_cache: write the cache file when it is missing (False: only read it; the processes of a distributed
            run other than the first).

    Returns:
        ``(mean, std)``, the population standard deviation.

    Raises:
        DatalistError: ``items`` is empty.
        ValueError: ``samples`` is below 1.
    """
    if not items:
        raise DatalistError("intensity_statistics needs at least one image")
    if samples is not None and samples < 1:
        raise ValueError(f"intensity_statistics: samples must be at least 1 (None: all slices), got {samples}")
    if samples is not None and samples < len(items):
        chosen = np.sort(np.random.default_rng(seed).choice(len(items), size=samples, replace=False))
        items = [items[int(index)] for index in chosen]
    files = tuple((str(entry[key]), os.path.getsize(entry[key]), os.path.getmtime(entry[key])) for entry in items)
    if cache_dir is None:
        return _read_statistics(files)
    digest = hashlib.sha256(json.dumps(files).encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"intensity_statistics_{digest}.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        return cached["mean"], cached["std"]
    mean, std = _read_statistics(files)
    if not write_cache:
        return mean, std
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # several processes may write it at once
    partial.write_text(json.dumps({"mean": mean, "std": std, "slices": len(files)}, indent=4) + "\n")
    os.replace(partial, path)
    return mean, std


@functools.lru_cache(maxsize=16)
def _read_statistics(files: tuple[tuple[str, int, float], ...]) -> tuple[float, float]:
    """Mean and standard deviation of the pixels of the slices ``files`` (``(path, size, mtime)``), read one by one."""
    load = Compose(load_slice_transforms(["image"]))
    count, total, squares = 0, 0.0, 0.0
    progress = tqdm(files, desc="intensity statistics", unit="slice", disable=len(files) < PROGRESS_MIN_ENTRIES)
    for path, _, _ in progress:
        pixels = load({"image": path})["image"].double()
        count, total, squares = count + pixels.numel(), total + float(pixels.sum()), squares + float((pixels**2).sum())
    mean = total / count
    std = max(squares / count - mean**2, 0.0) ** 0.5
    logger.info("intensity statistics of %d slices: mean %.4f, std %.4f", len(files), mean, std)
    return mean, std


def normalisation_statistics(
    normalisation: str | Sequence[float],
    items: Sequence[dict],
    samples: int | None = 1000,
    cache_dir: str | os.PathLike | None = None,
    write_cache: bool = True,
) -> list[float] | None:
    """The ``[mean, std]`` a pre-training pipeline normalises its slices with, by the recipe's ``normalisation``.

    Args:
        normalisation: ``"dataset"``: the statistics of ``items`` (:func:`intensity_statistics` of a sample of
            ``samples`` slices, cached in ``cache_dir``), Wolf et al.'s "mean and standard deviation of the dataset";
            ``"imagenet"``: :data:`IMAGENET_GREY_INTENSITY`, ImageNet's normalisation of the official SparK code on
            one grey channel; ``"none"``: no normalisation; or a ``[mean, std]`` pair (e.g. the official contrastive
            code's fixed 0.1806 / 0.1907).
        items, samples, cache_dir, write_cache: as :func:`intensity_statistics` (read only for ``"dataset"``).

    Returns:
        ``[mean, std]`` as plain floats (what a checkpoint's ``network_spec`` and MLflow record), or None.

    Raises:
        ValueError: an unknown name, or a pair that is not two numbers with a positive std.
    """
    if isinstance(normalisation, str):
        if normalisation not in NORMALISATIONS:
            raise ValueError(
                f"unknown normalisation {normalisation!r}; expected one of {NORMALISATIONS} or [mean, std]"
            )
        if normalisation == "none":
            return None
        if normalisation == "imagenet":
            return list(IMAGENET_GREY_INTENSITY)
        return [float(value) for value in intensity_statistics(items, samples=samples, cache_dir=cache_dir,
                                                                       write_cache=write_cache)]
    pair = [float(value) for value in normalisation]
    if len(pair) != 2 or not pair[1] > 0:
        raise ValueError(f"normalisation must be a name of {NORMALISATIONS} or [mean, std > 0], got {normalisation!r}")
    return pair


def intensity_normalisation(keys: KeysCollection, intensity: Sequence[float] | None) -> list:
    """``[NormalizeIntensityd(keys, subtrahend=mean, divisor=std)]`` for ``intensity = (mean, std)``; ``[]`` for None.

    ``(x - mean) / std``: put last among a pipeline's intensity steps (after the slices' [0, 1] interval mapping and
    any augmentation of the grey values), as the study's official code puts ``transforms.Normalize``.
    """
    if intensity is None:
        return []
    mean, std = (float(value) for value in intensity)
    return [NormalizeIntensityd(keys, subtrahend=mean, divisor=std)]
