"""Screening a datalist before training: read every entry once, and leave out those that are bad inputs.

Only when the policy skips bad inputs: without skipping, the content checks run in the training pipeline and
the first bad input stops the run, so the datalist is returned untouched and nothing is read twice. The loading
is the caller's (the pipeline's deterministic head, e.g. :func:`common.transforms.checked_loader`): common.data
does not import common.transforms.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import torch.distributed as dist
from tqdm import tqdm

from common.data.errors import BadInputError, BadInputPolicy, as_policy

logger = logging.getLogger(__name__)

PROGRESS_MIN_ENTRIES = 10  # a progress bar from this many entries on


def screen_datalist(
    datalist: Sequence[dict], load: Callable[[dict], dict], policy: BadInputPolicy | bool
) -> list[dict]:
    """The entries of ``datalist`` that load without a bad-input error, when ``policy`` skips bad inputs.

    With ``policy.skip``, each entry is loaded once with ``load`` (one after another, with a progress bar for
    :data:`PROGRESS_MIN_ENTRIES` entries or more); an entry whose loading raises a
    :class:`~common.data.errors.BadInputError` (a corrupt file, a failed content check; also when ``Compose`` has
    wrapped it in another exception) is reported through ``policy.handle`` and left out. Any other error
    propagates (under ``torch.distributed`` on every process, after they have all checked their share, so no
    process is left waiting for the others). Without ``policy.skip``, nothing is read.

    Under ``torch.distributed`` each of the ``W`` processes reads every ``W``-th entry and the bad ones are gathered,
    so the data set is read once in all, not once per process, and every process returns the same entries; each
    process reports all of them through its policy (give the others no ``report_path``, so the report is written
    once).

    In a bundle config::

        "checked_loader": "$common.transforms.checked_loader(['image', 'label'], @num_classes)",
        "train_datalist": "$common.data.screen_datalist(@train_files, @checked_loader, @bad_input)"

    Args:
        datalist: the entries, e.g. ``[{"image": path, "label": path}, ...]``.
        load: reads and checks one entry; raises ``BadInputError`` (possibly as the cause of its error) for a
            bad input.
        policy: a :class:`~common.data.errors.BadInputPolicy`, or a bool (``True``: skip, without a report).

    Returns:
        the entries that loaded, in their order; ``list(datalist)`` when not skipping.

    Raises:
        Exception: whatever ``load`` raises other than a bad-input error.
    """
    policy = as_policy(policy)
    if not policy.skip:
        return list(datalist)
    rank, world = _rank_and_world()
    shard = range(rank, len(datalist), world)
    bad, failure = {}, None
    for index in tqdm(shard, desc="checking inputs", unit="entry", disable=len(shard) < PROGRESS_MIN_ENTRIES):
        try:
            load(datalist[index])
        except Exception as error:  # a bad input may come wrapped, e.g. in Compose's RuntimeError
            cause = bad_input_cause(error)
            if cause is None and world == 1:
                raise
            if cause is None:  # raised below, once every process has reached the gather (none is left waiting)
                failure = error
                break
            bad[index] = (type(cause), cause.path, cause.reason)  # picklable, unlike the error itself
    if world > 1:
        gathered: list[tuple] = [() for _ in range(world)]
        dist.all_gather_object(gathered, (bad, None if failure is None else f"{type(failure).__name__}: {failure}"))
        if failure is not None:
            raise failure
        failed = [(other, message) for other, (_, message) in enumerate(gathered) if message is not None]
        if failed:
            raise RuntimeError(f"checking inputs failed in process {failed[0][0]}: {failed[0][1]}")
        bad = {index: found for part, _ in gathered for index, found in part.items()}
    for index in sorted(bad):
        kind, path, reason = bad[index]
        policy.handle(kind(path, reason))
    if bad:
        listed = f"; they are listed in {policy.report_path}" if policy.report_path is not None else ""
        logger.warning("left out %d of %d inputs as bad inputs%s", len(bad), len(datalist), listed)
    return [entry for index, entry in enumerate(datalist) if index not in bad]


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes under ``torch.distributed``; ``(0, 1)`` without it."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def screen_splits(
    splits: Sequence[Sequence[dict]] | Mapping[str, object], load: Callable[[dict], dict], policy: BadInputPolicy | bool
) -> list[list[dict]] | dict[str, object]:
    """:func:`screen_datalist` on every part of a split, after splitting: a bad input never moves another case
    between training and validation (folds and fractions are those of the unscreened data set).

    Args:
        splits: datalists, e.g. ``(train, validation)`` of :func:`common.data.training_split`; or a mapping whose
            list values are datalists, e.g. :func:`common.data.slice_classification_datalist`'s (other values,
            such as its ``"labels"``, are kept as they are).
        load, policy: as in :func:`screen_datalist`.

    Returns:
        the screened parts, as a list, or as a dict with the mapping's keys.
    """
    if isinstance(splits, Mapping):
        return {key: screen_datalist(part, load, policy) if isinstance(part, list) else part
                for key, part in splits.items()}
    return [screen_datalist(part, load, policy) for part in splits]


def bad_input_cause(error: BaseException) -> BadInputError | None:
    """``error`` if it is a :class:`~common.data.errors.BadInputError`, else the first one among its causes."""
    while error is not None:
        if isinstance(error, BadInputError):
            return error
        error = error.__cause__
    return None
