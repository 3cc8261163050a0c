"""Ctrl-C (SIGINT) and SIGTERM stop training with a checkpoint that ``--resume true`` continues exactly.

A first signal asks the trainer to stop at the next safe point; the bundle's ``CheckpointSaver(save_final=True)``
then writes the training state when the run completes. A second Ctrl-C aborts at once, without a checkpoint; a
SIGTERM while stopping is ignored: ``torchrun`` answers a Ctrl-C, which reaches its workers too, with a SIGTERM to
each worker (and a SIGKILL 30 s later).

What ignite does (0.5.5, ``Engine._internal_run_as_gen``): ``engine.terminate()`` sets a flag that is checked
after the handlers of the current event; the run then fires ``TERMINATE`` and ``COMPLETED`` (not
``EPOCH_COMPLETED`` when it stops inside an epoch). ``Engine.state_dict()`` saves the iteration, and
``load_state_dict`` derives the epoch from it (``iteration // epoch_length``); the resumed run counts the epoch's
remaining ``epoch_length - iteration % epoch_length`` iterations (``_setup_engine``), but draws them from a fresh
data iterator: :class:`common.engine.MidEpochResume` skips the batches already trained on.

So that the resumed run takes exactly the steps the uninterrupted run would have:

* the trainer stops only where the optimizer has just stepped (the end of an accumulation window), as the
  accumulated gradients of a partial window are not in any checkpoint;
* at an epoch's last iteration it stops after ``EPOCH_COMPLETED`` (the epoch's validation, epoch-level
  schedules and checkpoint), which a resumed run would never fire for that epoch;
* under ``torch.distributed`` every rank stops at the same iteration (a flag all-reduced at each of those points),
  or the ranks still training would wait forever for the others' gradients.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from common.engine.accumulation import ends_accumulation_window

logger = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
MLFLOW_KILLED = "KILLED"  # mlflow.entities.RunStatus.KILLED as a string, without importing MLflow here


class GracefulInterrupt:
    """Ctrl-C (SIGINT) or SIGTERM: stop at the next safe point, checkpoint, tell how to resume; twice: abort.

    When the run starts (``Events.STARTED``, main thread only) it installs handlers for SIGINT and SIGTERM, and
    restores the previous ones when the run completes, is stopped or fails. A first signal writes
    ``interrupted by SIGINT at iteration N (epoch E): saving a checkpoint; press Ctrl-C again to abort`` to stderr
    (with ``os.write``: the ``logging`` module is not safe in a signal handler) and asks the trainer to stop at the
    next optimizer step, or after the epoch's end handlers at an epoch's end (the module docstring says why).
    There this handler logs the stop and calls ``engine.terminate()``: ignite fires ``TERMINATE`` and
    ``COMPLETED``, where the bundle's ``CheckpointSaver(save_final=True, final_filename="checkpoint_final.pt")``
    writes the training state, and this handler then logs the folder and ``--resume true``. A second SIGINT raises
    ``KeyboardInterrupt`` at once; a SIGTERM after the first signal is ignored (see the module docstring).
    Forked data-loader workers, which inherit the handlers, ignore the signals: the main process ends them. Use it
    with :class:`common.engine.MidEpochResume`, which makes a resumed run continue with the right batch.

    ``engine.run()`` returns normally after a stop: call :func:`exit_if_interrupted` right after it (in the config's
    ``run`` list) so that the process ends with status 128 + the signal's number (130 for SIGINT, 143 for SIGTERM),
    as shells and schedulers expect.

    Attach it first among the trainer's handlers: like MONAI's handlers, its ``EXCEPTION_RAISED`` handler
    re-raises the error, and ignite calls such handlers in order, so those after the first that re-raises never run.

    Args:
        checkpoint_dir: the folder the bundle's ``CheckpointSaver`` writes to, named in the message that tells how
            to continue.
        mlflow_handler: the trainer's ``MLFlowHandler``, if any: a stopped run is marked ``KILLED`` (MLflow's
            status for a run its user stopped) instead of ``FINISHED``, so that ``--resume true`` (which leaves
            ``run_name`` unset) logs on into the same MLflow run, at the following iterations.
    """

    def __init__(self, checkpoint_dir: str, mlflow_handler: Any | None = None) -> None:
        self.checkpoint_dir = str(checkpoint_dir)
        self.mlflow_handler = mlflow_handler
        self.signal_number: int | None = None  # the signal that stopped the run (None: another rank's signal)
        self._received: int | None = None  # the signal received and not yet acted on
        self._stopped = False
        self._engine: Engine | None = None
        self._pid: int | None = None
        self._previous: dict[int, Any] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._install)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._stop_after_step)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._restore_and_raise)

    def _install(self, engine: Engine) -> None:
        self.signal_number = self._received = engine.state.stopped_by_signal = None
        self._stopped = False
        if threading.current_thread() is not threading.main_thread():
            logger.warning("training runs outside the main thread: Ctrl-C and SIGTERM stop it without a checkpoint")
            return
        self._engine, self._pid = engine, os.getpid()
        self._previous = {signum: signal.signal(signum, self._on_signal) for signum in HANDLED_SIGNALS}
        # Registered now, after the handlers attached before the run: at an epoch's end the epoch's validation and
        # checkpoint come first, and at the end the final checkpoint is written before the message that names it.
        if not engine.has_event_handler(self._stop_after_epoch, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._stop_after_epoch)
            engine.add_event_handler(Events.COMPLETED, self._finish)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            return  # a forked data-loader worker: the main process stops the run and ends its workers
        name = signal.Signals(signum).name
        if self._received is not None or self._stopped:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt(f"{name} while stopping: training aborted without saving a checkpoint")
            return  # a SIGTERM while stopping: the stop is under way
        self._received = signum
        state = self._engine.state
        os.write(
            2,
            f"\ninterrupted by {name} at iteration {state.iteration} (epoch {state.epoch}): saving a checkpoint; "
            "press Ctrl-C again to abort\n".encode(),
        )

    def _stop_after_step(self, engine: Engine) -> None:
        epoch_length = engine.state.epoch_length
        epoch_ends = epoch_length is not None and engine.state.iteration % epoch_length == 0
        if ends_accumulation_window(engine) and not epoch_ends and self._stop_agreed(engine):
            self._stop(engine)

    def _stop_after_epoch(self, engine: Engine) -> None:
        if self._stop_agreed(engine):
            self._stop(engine)

    def _stop_agreed(self, engine: Engine) -> bool:
        """Whether a signal arrived here or, under ``torch.distributed``, at any rank."""
        requested = self._received is not None
        if dist.is_available() and dist.is_initialized():
            flag = torch.tensor(int(requested), device=engine.state.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            requested = bool(flag.item())
        return requested

    def _stop(self, engine: Engine) -> None:
        self.signal_number, self._received, self._stopped = self._received, None, True
        engine.state.stopped_by_signal = self.signal_number
        logger.warning(
            "stopping after %s at iteration %d (epoch %d): saving the training state in %s",
            self._signal_name(),
            engine.state.iteration,
            engine.state.epoch,
            self.checkpoint_dir,
        )
        if self.mlflow_handler is not None:
            self.mlflow_handler.run_finish_status = MLFLOW_KILLED
        engine.terminate()

    def _finish(self, engine: Engine) -> None:
        self._restore()
        if self._stopped:
            logger.warning(
                "training stopped by %s at iteration %d (epoch %d of %d); its state is saved in %s: continue it "
                "with the same command and --resume true",
                self._signal_name(),
                engine.state.iteration,
                engine.state.epoch,
                engine.state.max_epochs,
                self.checkpoint_dir,
            )

    def _restore_and_raise(self, engine: Engine, error: BaseException) -> None:
        self._restore()
        raise error

    def _restore(self) -> None:
        """Put back the signal handlers found at the start (idempotent: ignite may report an error twice)."""
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous = {}

    def _signal_name(self) -> str:
        if self.signal_number is None:
            return "a signal to another process of this distributed run"
        return signal.Signals(self.signal_number).name


def exit_if_interrupted(engine: Engine) -> None:
    """End the process with status 128 + the signal's number if a signal stopped ``engine``'s run; else do nothing.

    In a bundle config, right after the run: ``"$common.engine.exit_if_interrupted(@train#trainer)"``.

    Raises:
        SystemExit: :class:`GracefulInterrupt` stopped the run on a signal this process received.
    """
    signum = getattr(engine.state, "stopped_by_signal", None)
    if signum is not None:
        raise SystemExit(128 + signum)
