"""Which files a batch came from, for error messages that point at the data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from monai.data import MetaTensor

FILENAME_KEY = "filename_or_obj"
UNKNOWN_FILES = "file names unknown"


def batch_files(batch: Any) -> list[str]:
    """The source files of a batch, from the first MetaTensor that records them (MONAI's ``filename_or_obj``).

    Each file is named once, in batch order: random crops of one volume (``num_samples``) repeat its name in the
    batch's meta data.

    Args:
        batch: a collated batch: a dict of tensors (``batch["image"].meta["filename_or_obj"]`` is a list with one
            entry per sample), a list / tuple of them, or a single tensor.

    Returns:
        The file names, or ``[]`` when no tensor of the batch carries them (plain tensors, generated data).
    """
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else [batch]
    for value in values:
        if isinstance(value, MetaTensor) and FILENAME_KEY in value.meta:
            names = value.meta[FILENAME_KEY]
            names = [names] if isinstance(names, str) else names
            return list(dict.fromkeys(str(name) for name in names))
    return []


def describe_files(files: list[str]) -> str:
    """``files`` joined for a message, or ``"file names unknown"`` when there are none."""
    return ", ".join(files) if files else UNKNOWN_FILES
