"""Errors of the datalist builders: what is wrong with the input, and where."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger("common.data")


class DatalistError(ValueError):
    """A datalist source is missing, empty, unreadable or inconsistent; the message names the path."""


class UnreadableFileError(Exception):
    """A file that cannot be read (corrupt, truncated, not the format it claims to be)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"unreadable file {path}: {reason}")


def skip_or_raise(error: UnreadableFileError, skip_unreadable: bool) -> None:
    """Log that an unreadable file is skipped, or raise a DatalistError naming it."""
    if not skip_unreadable:
        raise DatalistError(f"{error} (pass skip_unreadable=True to skip such files with a warning)") from error
    logger.warning("skipping %s", error)
