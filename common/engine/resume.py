"""A run resumed inside an epoch goes on with the batch after the last one the interrupted run trained on; every run
logs the iteration and epoch it trains from."""

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


IGNITE_START_LINE = "Engine run resuming from iteration"


def not_ignite_start_line(record: logging.LogRecord) -> bool:
    """Log filter: ``False`` for ignite's ``Engine run resuming from iteration ...`` line (:class:`MidEpochResume`)."""
    return not record.getMessage().startswith(IGNITE_START_LINE)


def log_training_start(engine: Engine) -> None:
    """Log the iteration and epoch ``engine`` trains from at ``EPOCH_STARTED``, the checkpoint (if any) loaded.

    Args:
        engine: at ``EPOCH_STARTED``, ``state.iteration`` the iterations done, ``state.epoch`` the epoch starting.
    """
    state = engine.state
    if state.iteration:
        logger.info(
            "resuming after iteration %d: training from iteration %d, epoch %d, until epoch %d",
            state.iteration,
            state.iteration + 1,
            state.epoch,
            state.max_epochs,
        )
    else:
        logger.info("training from iteration 1, epoch 1, until epoch %d", state.max_epochs)


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

    It also logs where the run trains from, once the checkpoint is loaded (at the run's first ``EPOCH_STARTED``):
    ``resuming after iteration 4: training from iteration 5, epoch 3, until epoch 5``. ignite's own line, ``Engine
    run resuming from iteration 0, epoch 0 ...``, is dropped from the engine's log: it is written when ``run()``
    starts, before the ``CheckpointLoader`` loads the state at ``STARTED``, so it says iteration 0, epoch 0 even when
    the run resumes (and "resuming" for a fresh run, as MONAI's workflows start with ``max_epochs`` set).

    Use it in the trainer's handlers, with checkpoints of the training state (``{"_target_":
    "common.engine.MidEpochResume"}``).
    """

    def __init__(self) -> None:
        self._run_starting = False

    def attach(self, engine: Engine) -> None:
        """Note each run's start, skip at ``EPOCH_STARTED``, and drop ignite's premature start line from the log."""
        engine.add_event_handler(Events.STARTED, self.note_run_start)
        engine.add_event_handler(Events.EPOCH_STARTED, self)
        engine.logger.addFilter(not_ignite_start_line)

    def note_run_start(self, engine: Engine) -> None:
        """Have the first ``EPOCH_STARTED`` of this run log where it trains from."""
        self._run_starting = True

    def __call__(self, engine: Engine) -> None:
        if self._run_starting:
            self._run_starting = False
            log_training_start(engine)
        data, epoch_length = engine.state.dataloader, engine.state.epoch_length
        if isinstance(data, _SkipFirstBatches):  # the resumed epoch is over: the data as it was
            engine.state.dataloader = data.data
            return
        if data is None or epoch_length is None or engine.state.iteration % epoch_length == 0:
            return
        if isinstance(getattr(data, "sampler", None), RandomSampler):
            return  # a new random order: skipping its first batches would only cost their loading
        trained = engine.state.iteration % epoch_length
        logger.info("skipping the first %d batches of epoch %d, already trained on", trained, engine.state.epoch)
        engine.state.dataloader = _SkipFirstBatches(data, trained)
