"""The MONAI data set that holds a pre-training bundle's data, chosen by one setting, ``dataset_cache``.

Each holds the deterministic head of the bundle's transforms (loading, orientation, spacing, window, foreground crop:
everything before the first random transform) differently:

===========  ==============================  ===========================  =======================================
``cache``    MONAI data set                  memory                       first step
===========  ==============================  ===========================  =======================================
``"ram"``    ``CacheDataset``, every entry   grows with the data set      after every entry has been read
``"disk"``   ``PersistentDataset``           flat                         at once; the first epoch writes the cache
``"none"``   ``Dataset``                     flat                         at once; every read runs the head
``"auto"``   ``"ram"`` up to ``max_ram_entries`` entries (the demo, a small set), ``"none"`` above
===========  ==============================  ===========================  =======================================

``"none"`` is what a data set of any size needs once it is prepared with ``python -m tools.prepare`` (int16 volumes
already oriented, resampled and cropped: a read is a decompression and a window). ``"disk"`` suits raw sources read
for many epochs, at the cost of float32 copies on disk (4 bytes per voxel, uncompressed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import json_hashing

logger = logging.getLogger(__name__)

CACHE_MODES = ("auto", "ram", "disk", "none")
# "auto" keeps up to this many entries in RAM: the 3D demo (8 volumes) or a small set of volumes (the 2D bundles
# pass 4096 slices).
MAX_RAM_ENTRIES = 64


def cache_mode(cache: str, entries: int, max_ram_entries: int = MAX_RAM_ENTRIES) -> str:
    """The data set ``cache`` chooses for ``entries`` entries: ``"ram"``, ``"disk"`` or ``"none"``.

    Raises:
        ValueError: ``cache`` is not one of :data:`CACHE_MODES`.
    """
    if cache not in CACHE_MODES:
        raise ValueError(f"unknown dataset_cache {cache!r}; choose one of {', '.join(CACHE_MODES)}")
    if cache != "auto":
        return cache
    return "ram" if entries <= max_ram_entries else "none"


def training_dataset(
    data: Sequence[dict],
    transform: Callable,
    cache: str = "auto",
    cache_dir: str | Path | None = None,
    num_workers: int | None = None,
    max_ram_entries: int = MAX_RAM_ENTRIES,
) -> Dataset:
    """The training data set of a pre-training bundle, cached as ``cache`` says (module docstring).

    Args:
        data: the datalist, ``[{"image": path}, ...]``.
        transform: the bundle's training transforms; the head before the first random transform is what a cache
            holds.
        cache: one of :data:`CACHE_MODES`.
        cache_dir: where ``"disk"`` writes (one file per entry, named by a hash of the entry and of the cached
            transforms, so a changed pipeline never reads a stale file).
        num_workers: threads that fill the ``"ram"`` cache.
        max_ram_entries: the largest data set ``"auto"`` keeps in RAM.

    Raises:
        ValueError: an unknown ``cache``, or ``"disk"`` without ``cache_dir``.
    """
    mode = cache_mode(cache, len(data), max_ram_entries)
    logger.info("training data: %d entries, dataset_cache %r -> %s", len(data), cache, mode)
    if mode == "ram":
        return CacheDataset(data, transform, cache_rate=1.0, num_workers=num_workers)
    if mode == "disk":
        if cache_dir is None:
            raise ValueError("dataset_cache 'disk' needs a cache_dir")
        return PersistentDataset(data, transform, cache_dir=cache_dir, hash_transform=json_hashing)
    if cache == "auto":
        logger.warning(
            "%d entries are more than the %d that dataset_cache 'auto' keeps in RAM: each step reads its images "
            "(prepare volumes once with python -m tools.prepare, or pass --dataset_cache disk or ram)",
            len(data), max_ram_entries,
        )
    return Dataset(data, transform)
