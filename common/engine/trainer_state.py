"""The ``"trainer"`` entry of a checkpoint with the mixed-precision state, so that a resumed run goes on exactly.

ignite's ``Engine.state_dict()`` holds the iteration, the epoch and the user keys; a ``GradScaler`` (float16 amp
on CUDA) holds the loss scale it has calibrated and its growth tracker. Both go into the same entry, as
``"scaler"`` (``GradScaler.state_dict()``) and ``"amp_skipped_steps"`` next to ignite's keys, so checkpoints
written before keep loading (they have neither) and the checkpoint's keys stay those the bundles already use.
:class:`common.engine.SelfSupervisedTrainer` does this itself; MONAI's trainers get it from :class:`TrainerState`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from monai.engines import Trainer

from common.engine.nonfinite import AMP_SKIPPED_STEPS

logger = logging.getLogger(__name__)

SCALER = "scaler"


def amp_state(trainer: Trainer) -> dict[str, Any]:
    """The state of ``trainer.scaler`` when it is enabled, and ``engine.state.amp_skipped_steps`` when kept."""
    state: dict[str, Any] = {}
    if trainer.scaler is not None and trainer.scaler.is_enabled():
        state[SCALER] = trainer.scaler.state_dict()
    if hasattr(trainer.state, AMP_SKIPPED_STEPS):
        state[AMP_SKIPPED_STEPS] = getattr(trainer.state, AMP_SKIPPED_STEPS)
    return state


def load_amp_state(trainer: Trainer, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Load the :func:`amp_state` entries of ``state_dict`` into ``trainer``; return the other (ignite's) entries.

    A checkpoint without a scaler state (written before it was saved, or without float16 amp) leaves the
    trainer's scaler at its initial scale, which re-calibrates within a few steps; a scaler state without an
    enabled scaler here (resumed on a CPU) is not needed and ignored. Both are logged.
    """
    state = dict(state_dict)
    scaler_state = state.pop(SCALER, None)
    if AMP_SKIPPED_STEPS in state:
        setattr(trainer.state, AMP_SKIPPED_STEPS, state.pop(AMP_SKIPPED_STEPS))
    scaler = trainer.scaler if trainer.scaler is not None and trainer.scaler.is_enabled() else None
    if scaler is not None and scaler_state is not None:
        scaler.load_state_dict(scaler_state)
    elif scaler is not None:
        logger.info(
            "the checkpoint holds no GradScaler state (written without float16 amp, or before the scaler was "
            "checkpointed): the loss scale starts at %g and re-calibrates within a few steps",
            scaler.get_scale(),
        )
    elif scaler_state is not None:
        logger.info("the checkpoint's GradScaler state is not needed here (no float16 amp): ignored")
    return state


class TrainerState:
    """A MONAI trainer's checkpoint entry: ignite's state (iteration, epoch, ...) plus its GradScaler's state.

    MONAI's ``SupervisedTrainer`` creates ``engine.scaler`` when ``run()`` starts with ``amp`` on; its
    ``state_dict()`` leaves the scaler out. Use this object as the ``"trainer"`` entry of both ``CheckpointSaver``'s
    ``save_dict`` and ``CheckpointLoader``'s ``load_dict``
    (``"trainer": {"_target_": "common.engine.TrainerState", "trainer": "@train#trainer"}``): it loads checkpoints
    written with the plain trainer as entry too.

    Args:
        trainer: the MONAI trainer.
    """

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def state_dict(self) -> OrderedDict:
        """ignite's ``Engine.state_dict()`` of the trainer plus :func:`amp_state`."""
        return OrderedDict({**self.trainer.state_dict(), **amp_state(self.trainer)})

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the trainer from :meth:`state_dict` (or from the plain trainer's, without amp entries)."""
        self.trainer.load_state_dict(load_amp_state(self.trainer, state_dict))
