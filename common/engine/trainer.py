"""The generic self-supervised trainer: one method module, one optimizer, the usual MONAI handlers.

A *method* is an ``nn.Module`` whose ``forward(batch: dict) -> dict`` returns

* ``"loss"``: the scalar total loss to back-propagate;
* ``"loss/<name>"``: scalar named parts of it (e.g. ``"loss/recon"``), detached or not;
* optionally ``"stat/<name>"``: scalars worth watching that are not losses (e.g. ``"stat/embedding_std"``, a
  collapse check of the contrastive methods), logged like the loss terms;
* ``"images"``, only when called as ``forward(batch, images=True)``: ``{name: tensor}`` of shape (B', 1, D, H, W) or
  (B', 1, H, W) (the first sample is shown), values roughly in [0, 1], in display order (e.g. input, masked,
  reconstruction, target). The trainer asks for them only at the iterations a handler requested them
  (:attr:`SelfSupervisedTrainer.images_requested`), so no other step spends time building them; a method with
  nothing to show need not take the argument.

A method with a momentum teacher also defines ``update_teacher(momentum: float) -> None``, called by
:class:`common.engine.MomentumTeacher` after every optimizer step.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from ignite.engine import EventEnum
from monai.engines import Trainer
from monai.engines.workflow import Workflow
from monai.inferers import Inferer, SimpleInferer
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from common.engine.batches import batch_files
from common.engine.nonfinite import AMP_SKIPPED_STEPS, gradient_norm, non_finite_error, record_skipped_step
from common.engine.trainer_state import amp_state, load_amp_state
from common.tensors import as_plain_tensor

LOSS = "loss"
STAT = "stat"
IMAGES = "images"


class OptimizerEvents(EventEnum):
    """Events fired by :class:`SelfSupervisedTrainer`.

    ``STEP_COMPLETED`` fires right after ``optimizer.step()``: once per ``accumulation_steps`` iterations and
    at the end of an epoch; ``engine.state.optimizer_steps`` already counts that step.
    """

    STEP_COMPLETED = "optimizer_step_completed"


def logged_scalars(output: Mapping[str, Any]) -> dict[str, float]:
    """The ``"loss"``, ``"loss/<name>"`` and ``"stat/<name>"`` entries of a :class:`SelfSupervisedTrainer` output.

    Use it as ``output_transform`` of ``StatsHandler`` and ``MLFlowHandler``
    (``"output_transform": "$common.engine.logged_scalars"``): each entry becomes its own printed value / MLflow
    metric, named as in the output (``loss``, ``loss/recon``, ``stat/embedding_std``, ...).
    """
    return {
        key: value
        for key, value in output.items()
        if key == LOSS or key.startswith(LOSS + "/") or key.startswith(STAT + "/")
    }


class SelfSupervisedTrainer(Trainer):
    """Trains a self-supervised method: forward the batch dict, back-propagate ``"loss"``, step the optimizer.

    A MONAI ``Trainer``, so MONAI handlers work as usual: ``StatsHandler`` / ``MLFlowHandler`` (with
    ``output_transform=logged_scalars``), ``CheckpointSaver`` / ``CheckpointLoader`` with
    ``save_dict={"method": ..., "optimizer": ..., "trainer": ...}``, ``LrScheduleHandler``.

    ``engine.state.output`` after each iteration is a dict: every :func:`logged_scalars` entry of the method
    output as a Python float, and, at an iteration whose images were requested, ``"images"``: ``{name: tensor}``
    of the first sample only, detached, shape (1, *spatial) (channel first), still on the device.

    ``images_requested``: set it to ``True`` before an iteration (e.g. at ``ITERATION_STARTED``, as
    :class:`common.engine.ReconstructionSnapshots` does) to have that iteration's method called with ``images=True``;
    the trainer sets it back to ``False`` after the forward pass.

    ``engine.state.optimizer_steps`` counts optimizer steps (those a ``GradScaler`` skips included) and
    :attr:`OptimizerEvents.STEP_COMPLETED` fires after each. The ``"trainer"`` checkpoint entry (:meth:`state_dict`)
    saves and restores it with ignite's iteration and epoch, the ``GradScaler``'s state and
    ``engine.state.amp_skipped_steps``, so a resumed run goes on exactly; it still loads checkpoints written without
    the last two.

    Training stops at the first non-finite loss or gradient, before the optimizer step, with an error that names
    the iteration, the epoch and the files of the batch (see :mod:`common.engine.nonfinite`): non-finite weights
    are never produced, so never saved.

    Args:
        device: where the method runs; tensors at the top level of the batch dict are moved there.
        max_epochs: number of epochs to train.
        train_data_loader: yields dicts with at least ``"image"``: (B, C, *spatial) float tensor; other keys
            (meta data, ...) are passed through to the method.
        method: the ``nn.Module`` described in this module's docstring.
        optimizer: optimizer of the method's trainable parameters.
        epoch_length: iterations per epoch, default ``len(train_data_loader)``.
        non_blocking: asynchronous host-to-device copies of the batch tensors.
        amp: mixed precision with ``torch.autocast`` on the device type. On CUDA the default ``amp_dtype`` is
            float16 with a ``torch.amp.GradScaler``; on other devices (CPU) it is bfloat16, which keeps
            float32's exponent range and needs no scaler. The scaler skips the optimizer steps whose gradients
            overflow; each skip is logged and counted in ``engine.state.amp_skipped_steps``.
        amp_dtype: autocast dtype overriding the default above; a scaler is used only for float16 on CUDA.
        grad_clip_norm: clip the total gradient norm (2-norm over the optimizer's parameters) to this value
            before each optimizer step; ``None`` does not clip.
        accumulation_steps: accumulate gradients over this many iterations before one optimizer step and
            ``zero_grad``; each loss is divided by the iterations of its window, so a step's gradient is the mean
            over the window's batches. The last window of an epoch ends with the epoch: when shorter, it is the
            mean over the batches it holds. With an unknown epoch length (iterable data) a window may span two
            epochs. A ``DistributedDataParallel`` method all-reduces (averages) the gradients once per window, in
            its last backward pass (:mod:`common.engine.global_batch` derives this from the global batch).
        train_handlers: handlers with ``attach(engine)``, attached after everything above is set up, so they
            may read ``engine.method``, ``engine.optimizer``, ``engine.accumulation_steps`` and
            ``engine.state.epoch_length`` / ``max_epochs`` when attached.
        inferer: calls the method on the batch dict, as MONAI's ``SupervisedTrainer`` calls its network on the
            images: ``inferer(batch, method)`` or ``inferer(batch, method, images=True)``; default
            ``SimpleInferer()``, which is ``method(batch, ...)``.

    Raises:
        ValueError: ``accumulation_steps`` < 1 or ``grad_clip_norm`` <= 0; during training, when the method's
            output lacks ``"loss"``.
        FloatingPointError: during training, before the optimizer step, when the loss is NaN or infinite, or
            the gradients are and there is no scaler to skip the step.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        method: nn.Module,
        optimizer: Optimizer,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        amp: bool = False,
        amp_dtype: torch.dtype | None = None,
        grad_clip_norm: float | None = None,
        accumulation_steps: int = 1,
        train_handlers: Sequence | None = None,
        inferer: Inferer | None = None,
    ) -> None:
        if accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be a positive integer, got {accumulation_steps!r}")
        if grad_clip_norm is not None and grad_clip_norm <= 0:
            raise ValueError(f"grad_clip_norm must be positive or None, got {grad_clip_norm!r}")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            amp=amp,
            event_names=[OptimizerEvents],
            decollate=False,
        )
        self.method = method
        self.inferer = inferer or SimpleInferer()
        self.optimizer = optimizer
        self.grad_clip_norm = grad_clip_norm
        self.accumulation_steps = accumulation_steps
        device_type = self.state.device.type
        self.amp_dtype = amp_dtype or (torch.float16 if device_type == "cuda" else torch.bfloat16)
        use_scaler = amp and device_type == "cuda" and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.state.optimizer_steps = 0
        self.state_dict_user_keys.append("optimizer_steps")
        setattr(self.state, AMP_SKIPPED_STEPS, 0)
        self._micro_batches = 0  # passes of the current accumulation window, the running one included
        self._window_length = accumulation_steps  # iterations of the current accumulation window
        self._window_files: dict[str, None] = {}  # files of the current accumulation window's batches, in order
        self.images_requested = False
        if train_handlers is not None:
            self._register_handlers(train_handlers)

    def run(self) -> None:  # type: ignore[override]
        """Train. Skips ``Trainer.run``, which would replace the scaler chosen above by a CUDA float16 one."""
        Workflow.run(self)

    def state_dict(self) -> OrderedDict:
        """ignite's engine state (iteration, epoch, ``optimizer_steps``) plus the amp entries of
        :func:`common.engine.trainer_state.amp_state`."""
        return OrderedDict({**super().state_dict(), **amp_state(self)})

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`, or a checkpoint's ``"trainer"`` entry written without the amp entries."""
        super().load_state_dict(load_amp_state(self, state_dict))

    def _iteration(self, engine: SelfSupervisedTrainer, batchdata: dict[str, Any]) -> dict[str, Any]:
        """One forward / backward pass, and an optimizer step when the accumulation window is complete.

        Args:
            engine: this trainer.
            batchdata: the batch dict from the data loader.

        Returns:
            The logged scalars as floats and, if any, the first sample's ``"images"`` (see the class docstring).
        """
        # MONAI's MetaTensors become plain tensors: the methods need no meta data, and every operation on a
        # MetaTensor pays for propagating it. The file names are kept first, for the errors of non-finite values.
        files = batch_files(batchdata)
        batch = {
            key: as_plain_tensor(value).to(engine.state.device, non_blocking=engine.non_blocking)
            if torch.is_tensor(value)
            else value
            for key, value in batchdata.items()
        }
        engine.method.train()
        if engine._micro_batches == 0:
            engine.optimizer.zero_grad(set_to_none=True)
            engine._window_files = {}
            engine._window_length = engine._next_window_length()
        engine._micro_batches += 1
        engine._window_files.update(dict.fromkeys(files))
        steps = engine._micro_batches == engine._window_length
        # DistributedDataParallel all-reduces the gradients in every backward pass unless forward and backward run
        # under its no_sync: only the window's last pass needs to.
        skip_sync = not steps and isinstance(engine.method, nn.parallel.DistributedDataParallel)
        with engine.method.no_sync() if skip_sync else nullcontext():
            with torch.autocast(engine.state.device.type, dtype=engine.amp_dtype, enabled=engine.amp):
                result = engine.inferer(batch, engine.method, **({"images": True} if engine.images_requested else {}))
            engine.images_requested = False
            losses = engine._loss_values(result, files)
            loss = result[LOSS] / engine._window_length
            (engine.scaler.scale(loss) if engine.scaler is not None else loss).backward()
        if steps:
            engine._optimizer_step()
        output: dict[str, Any] = dict(losses)
        if IMAGES in result:
            output[IMAGES] = {name: image[0].detach() for name, image in result[IMAGES].items()}
        return output

    def _next_window_length(self) -> int:
        """Iterations of the accumulation window that starts at this iteration: ``accumulation_steps``, or the rest
        of the epoch where fewer are left (``state.iteration`` is this iteration, 1-based)."""
        epoch_length = self.state.epoch_length
        if epoch_length is None:
            return self.accumulation_steps
        return min(self.accumulation_steps, epoch_length - (self.state.iteration - 1) % epoch_length)

    def _loss_values(self, result: Mapping[str, Any], files: list[str]) -> dict[str, float]:
        """The logged scalars of the method output as floats, after checking that ``"loss"`` is there and finite.

        Args:
            result: the method's output.
            files: the batch's files, named by the error of a non-finite loss.
        """
        if LOSS not in result:
            raise ValueError(
                f"{type(self.method).__name__}.forward must return a dict with {LOSS!r} (the total loss to "
                f"back-propagate); got keys {sorted(result)} at iteration {self.state.iteration}"
            )
        losses = {key: float(torch.as_tensor(value).detach()) for key, value in logged_scalars(result).items()}
        if not math.isfinite(losses[LOSS]):
            parts = ", ".join(f"{key}={value:.6g}" for key, value in losses.items())
            raise non_finite_error(LOSS, self, files, f": {parts}")
        return losses

    def _optimizer_step(self) -> None:
        """Check the gradients, clip, step, count the step and fire :attr:`OptimizerEvents.STEP_COMPLETED`.

        Raises:
            FloatingPointError: the total gradient norm is not finite and there is no scaler to skip the step.
        """
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = gradient_norm(self.optimizer)
        finite = bool(torch.isfinite(norm))
        if not finite and self.scaler is None:
            raise non_finite_error("gradient", self, list(self._window_files), f" (total norm {float(norm)})")
        if finite and self.grad_clip_norm is not None:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            nn.utils.clip_grads_with_norm_(params, self.grad_clip_norm, norm)
        if self.scaler is not None:
            if not finite:
                record_skipped_step(self, self.scaler)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self._micro_batches = 0
        self.state.optimizer_steps += 1
        self.fire_event(OptimizerEvents.STEP_COMPLETED)
