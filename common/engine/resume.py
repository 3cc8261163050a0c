"""A run resumed inside an epoch goes on with the batch after the last one the interrupted run trained on."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from ignite.engine import Engine, Events
from torch.utils.data import RandomSampler

logger = logging.getLogger(__name__)


class _SkipFirstBatches:
    """``data`` whose iterators skip its first ``count`` batches."""

    def __init__(self, data: Iterable, count: int) -> None:
        self.data = data
        self.count = count

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.data), self.count, None)


class MidEpochResume:
    """In the first epoch of a run resumed inside an epoch, skips the batches that epoch has already trained on.

    ignite resumes a checkpoint saved at iteration ``i`` with the remaining ``epoch_length - i % epoch_length``
    iterations of its epoch, but draws them from a fresh iterator over the data, so from the epoch's first batches
    again. This handler notices such a start (``EPOCH_STARTED`` at an iteration that is not a multiple of the epoch
    length, which happens only then) and makes that epoch's iterator skip the first ``i % epoch_length`` batches;
    the following epochs iterate over the data as usual. The skipped batches are loaded and dropped: a resume costs
    up to one epoch's data loading, once (logged).

    Only where the epoch's order is reproducible: unshuffled data, or a ``DistributedSampler`` (shuffled with its
    seed and the epoch, which MONAI's workflows set at each epoch start), and ``epoch_length`` equal to the data's
    length; the resumed run then trains on the very batches an uninterrupted run would have. A data loader with
    ``shuffle=True`` (a ``RandomSampler``) draws a new random order when the run resumes, so nothing is skipped: the
    rest of the epoch is as many batches of that order, as random as those the uninterrupted run would have drawn.

    Use it in the trainer's handlers, with checkpoints of the training state (``{"_target_":
    "common.engine.MidEpochResume"}``).
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        data, epoch_length = engine.state.dataloader, engine.state.epoch_length
        if isinstance(data, _SkipFirstBatches):  # the resumed epoch is over: the data as it was
            engine.state.dataloader = data.data
            return
        if data is None or epoch_length is None or engine.state.iteration % epoch_length == 0:
            return
        if isinstance(getattr(data, "sampler", None), RandomSampler):
            return  # a new random order: skipping its first batches would only cost their loading
        trained = engine.state.iteration % epoch_length
        logger.info(
            "resuming inside epoch %d at iteration %d: skipping the epoch's first %d batches, already trained on",
            engine.state.epoch,
            engine.state.iteration + 1,
            trained,
        )
        engine.state.dataloader = _SkipFirstBatches(data, trained)
