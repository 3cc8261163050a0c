"""Validation every few epochs and at the last one, so that a short run also ends with a chosen model."""

from __future__ import annotations

import logging

from ignite.engine import Engine, Events
from monai.engines import Evaluator
from monai.handlers import ValidationHandler

logger = logging.getLogger(__name__)


class PeriodicValidation(ValidationHandler):
    """Runs the validator every ``interval`` epochs and at the last epoch, then says where the best model is.

    MONAI's ``ValidationHandler(interval=14)`` never validates a run of fewer than 14 epochs, so the key-metric
    ``CheckpointSaver`` of the validator never writes ``model.pt``. This one also validates at epoch
    ``max_epochs``, once (one event filter). Only completed epochs are validated: a run stopped inside an epoch
    (Ctrl-C, ``terminate()``) fires no ``EPOCH_COMPLETED`` for it. When training completes it logs
    ``best model: <best_model_path> (val_mean_dice 0.412 at epoch 14)``: the validator's key metric, its best value
    and the epoch of that value, or a warning when no validation ran.

    Args:
        interval: validate every this many epochs (and at the last one).
        validator: the evaluator, e.g. MONAI's ``SupervisedEvaluator`` with a ``key_val_metric`` and a
            ``CheckpointSaver(save_key_metric=True)`` among its handlers.
        best_model_path: where that ``CheckpointSaver`` writes the best model, e.g. ``<ckpt_dir>/model.pt``.
        exec_at_start: also validate before the first epoch (MONAI's option).

    Raises:
        TypeError: ``validator`` is not a MONAI ``Evaluator``.
    """

    def __init__(
        self, interval: int, validator: Evaluator, best_model_path: str, exec_at_start: bool = False
    ) -> None:
        super().__init__(interval=interval, validator=validator, epoch_level=True, exec_at_start=exec_at_start)
        self.best_model_path = str(best_model_path)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._due), self)
        if self.exec_at_start:
            engine.add_event_handler(Events.STARTED, self)
        engine.add_event_handler(Events.COMPLETED, self._report_best)

    def _due(self, engine: Engine, epoch: int) -> bool:
        return epoch % self.interval == 0 or epoch == engine.state.max_epochs

    def _report_best(self, engine: Engine) -> None:
        state = self.validator.state
        if state.best_metric_epoch < 0:
            logger.warning(
                "no validation ran in this run (every %d epochs and at the last, epoch %d; stopped at epoch %d), "
                "so it chose no best model; %s is unchanged",
                self.interval,
                engine.state.max_epochs,
                engine.state.epoch,
                self.best_model_path,
            )
            return
        logger.info(
            "best model: %s (%s %.4g at epoch %d)",
            self.best_model_path,
            state.key_metric_name,
            state.best_metric,
            state.best_metric_epoch,
        )
