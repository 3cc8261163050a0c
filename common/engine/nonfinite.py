"""Training stops at the first non-finite loss or gradient, before the optimizer step, naming the batch's files.

So non-finite weights are never produced, and so never saved as ``model.pt`` or in a checkpoint.
:class:`common.engine.SelfSupervisedTrainer` checks inside its iteration; MONAI's ``SupervisedTrainer`` gets the
same checks from :class:`NonFiniteGuard`.

With float16 mixed precision a ``GradScaler`` scales the loss up, and its gradients overflow now and then: the
scaler then skips that optimizer step and lowers its scale. That is expected, not an error: each skip is logged at
warning level and counted in ``engine.state.amp_skipped_steps`` (``state_attributes`` of ``StatsHandler`` /
``MLFlowHandler`` can log it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from ignite.engine import Engine
from monai.engines import Trainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from torch import nn
from torch.optim import Optimizer

from common.engine.accumulation import ends_accumulation_window
from common.engine.batches import batch_files, describe_files

logger = logging.getLogger(__name__)

AMP_SKIPPED_STEPS = "amp_skipped_steps"


def gradient_norm(optimizer: Optimizer) -> torch.Tensor:
    """The total 2-norm of the gradients of ``optimizer``'s parameters (0 when none has a gradient)."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return nn.utils.get_total_norm(grads)


def non_finite_error(what: str, engine: Engine, files: Sequence[str], detail: str = "") -> FloatingPointError:
    """The error that stops training at a non-finite ``what`` (``"loss"``, ``"gradient"``).

    Args:
        what: what was not finite.
        engine: the trainer, for the iteration and epoch.
        files: the files of the batch (or accumulation window) that produced it, see :func:`batch_files`.
        detail: appended to the first clause, e.g. ``": loss=nan, loss/recon=0.5"``.
    """
    return FloatingPointError(
        f"non-finite {what} at iteration {engine.state.iteration} (epoch {engine.state.epoch}){detail}; "
        f"batch files: {describe_files(list(files))}. Training stopped before the optimizer step, so the weights "
        "and checkpoints are still finite. Look for NaN or infinite values in these files and their "
        "preprocessing; if the data is fine, lower the learning rate or set grad_clip_norm"
    )


def record_skipped_step(engine: Engine, scaler: torch.amp.GradScaler) -> None:
    """Count and log an optimizer step that ``scaler`` skips for non-finite gradients; call it before ``update()``."""
    skipped = getattr(engine.state, AMP_SKIPPED_STEPS, 0) + 1
    setattr(engine.state, AMP_SKIPPED_STEPS, skipped)
    logger.warning(
        "AMP: non-finite gradients at iteration %d (epoch %d): the GradScaler skips this optimizer step and lowers "
        "its scale from %g (%d steps skipped so far). Occasional skips are normal with float16; a skip at every "
        "step means training diverged",
        engine.state.iteration,
        engine.state.epoch,
        scaler.get_scale(),
        skipped,
    )


class NonFiniteGuard:
    """Stops a MONAI trainer at the first non-finite loss or gradient, before ``optimizer.step()``.

    Checks at ``IterationEvents.BACKWARD_COMPLETED``, which MONAI's ``SupervisedTrainer`` fires after
    ``backward()`` and before the optimizer step: the loss ``engine.state.output["loss"]`` at every iteration, the
    total gradient norm of the optimizer's parameters at the iterations that step (see
    :func:`common.engine.accumulation.ends_accumulation_window`). With an enabled ``engine.scaler`` (amp on CUDA),
    non-finite gradients are a step the scaler skips: logged and counted in ``engine.state.amp_skipped_steps``.

    Use it in the trainer's handlers (``{"_target_": "common.engine.NonFiniteGuard"}``).

    Raises:
        FloatingPointError: during training, at a non-finite loss, or non-finite gradients without an enabled
            scaler; the message names the iteration, the epoch and the batch's files (:func:`batch_files`).
    """

    def attach(self, engine: Trainer) -> None:
        if not hasattr(engine.state, AMP_SKIPPED_STEPS):
            setattr(engine.state, AMP_SKIPPED_STEPS, 0)
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Trainer) -> None:
        loss = float(engine.state.output[Keys.LOSS].detach())
        if not math.isfinite(loss):
            raise non_finite_error("loss", engine, batch_files(engine.state.batch), f" ({loss})")
        if not ends_accumulation_window(engine):
            return
        norm = gradient_norm(engine.optimizer)
        if bool(torch.isfinite(norm)):
            return
        if engine.scaler is not None and engine.scaler.is_enabled():
            record_skipped_step(engine, engine.scaler)
            return
        raise non_finite_error("gradient", engine, batch_files(engine.state.batch), f" (total norm {float(norm)})")
