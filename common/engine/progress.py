"""Tells a method how far training has gone, for losses whose weighting changes over training."""

from __future__ import annotations

from ignite.engine import Engine, Events


class TrainingProgress:
    """Before every iteration, sets ``target.progress`` to the fraction of training done, in [0, 1).

    ``(iteration - 1) / (max_epochs * epoch_length)``: a function of the iteration only, so a resumed run goes on
    where it stopped (e.g. MiM's ``level_schedule``).

    Args:
        target: any object with a ``progress`` attribute, e.g. :class:`common.methods.MiM`.
    """

    def __init__(self, target: object) -> None:
        self.target = target

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        total = engine.state.max_epochs * engine.state.epoch_length
        self.target.progress = (engine.state.iteration - 1) / total
