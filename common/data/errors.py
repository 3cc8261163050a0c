"""Errors of the datalist builders and the input checks, and the one policy that skips or raises on a bad input.

Bad data must never become a silent bad model: an input that cannot be trained on (a corrupt file, NaN voxels,
values no CT holds, label values outside the task's table) raises a :class:`BadInputError` naming the file, what
was found and what was expected. A :class:`BadInputPolicy` decides what happens to such an error: by default the
run stops; with ``skip=True`` the input is left out with a logged warning and a row in a CSV report. The datalist
builders (their ``skip_unreadable`` argument) and :func:`common.data.screen_datalist` (content checks) both go
through :meth:`BadInputPolicy.handle`.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("common.data")

SKIP_ADVICE = (
    "to leave such inputs out with a warning and a report instead, set the bundle's skip_bad_input to true "
    "(--skip_bad_input true); in Python pass skip_unreadable=True or BadInputPolicy(skip=True)"
)
REPORT_HEADER = ("file", "reason")


class DatalistError(ValueError):
    """A datalist source is missing, empty, unreadable or inconsistent; the message names the path."""


class BadInputError(DatalistError):
    """One input that cannot be trained on; the message names it, what was found and what was expected.

    Args:
        path: what identifies the input: a file, or a DICOM series (its UID and folder).
        reason: what was found and what was expected, e.g. ``"found 12 NaN voxels ...; expected finite values"``.

    Attributes:
        path, reason: as given; the message is ``"<what> <path>: <reason> (<how to skip such inputs>)"``.
    """

    what = "bad input"

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{self.what} {path}: {reason} ({SKIP_ADVICE})")


class UnreadableFileError(BadInputError):
    """A file that cannot be read (corrupt, truncated, not the format it claims to be)."""

    what = "unreadable file"


@dataclass(frozen=True)
class BadInputPolicy:
    """What to do with a :class:`BadInputError`: raise it (default), or skip the input with a report.

    In a bundle config::

        "skip_bad_input": false,
        "bad_input": "$common.data.BadInputPolicy(@skip_bad_input, @output_dir + '/skipped_inputs.csv')"

    Args:
        skip: leave bad inputs out (logged warning, report row) instead of raising.
        report_path: the CSV file (header ``file,reason``) that skipped inputs are appended to; its folders are
            created. ``None``: skipped inputs are only logged.
    """

    skip: bool = False
    report_path: str | os.PathLike | None = None

    def handle(self, error: BadInputError) -> None:
        """Raise ``error``, or, when skipping, log a warning and append ``(error.path, error.reason)`` to the report.

        Raises:
            BadInputError: ``error`` itself, unless :attr:`skip`.
        """
        if not self.skip:
            raise error
        listed = f" (listed in {self.report_path})" if self.report_path is not None else ""
        logger.warning("skipping %s %s: %s%s", error.what, error.path, error.reason, listed)
        if self.report_path is not None:
            self._append(error)

    def _append(self, error: BadInputError) -> None:
        report = Path(self.report_path)
        report.parent.mkdir(parents=True, exist_ok=True)
        new = not report.is_file() or report.stat().st_size == 0
        with open(report, "a", newline="") as file:
            writer = csv.writer(file)
            if new:
                writer.writerow(REPORT_HEADER)
            writer.writerow((str(error.path), error.reason))


def as_policy(skip_unreadable: bool | BadInputPolicy) -> BadInputPolicy:
    """``skip_unreadable`` as a policy: a :class:`BadInputPolicy` as it is, a bool as ``BadInputPolicy(skip=it)``."""
    if isinstance(skip_unreadable, BadInputPolicy):
        return skip_unreadable
    return BadInputPolicy(skip=bool(skip_unreadable))


def skip_or_raise(error: BadInputError, skip_unreadable: bool | BadInputPolicy) -> None:
    """Skip a bad input with a logged warning (and a report row), or raise ``error``, as the policy says.

    Args:
        error: the bad input (e.g. an :class:`UnreadableFileError`).
        skip_unreadable: ``False`` / ``True`` (raise / skip with a warning), or a :class:`BadInputPolicy`.

    Raises:
        BadInputError: ``error``, unless skipping.
    """
    as_policy(skip_unreadable).handle(error)
