"""Reconstruction snapshots during training: the method's ``"images"`` output written as PNG grids
(:func:`common.previews.orthogonal_slices_png`) every few iterations, and logged to MLflow.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ignite.engine import Engine, Events

from common.previews import orthogonal_slices_png

if TYPE_CHECKING:
    from monai.handlers import MLFlowHandler

logger = logging.getLogger(__name__)


class ReconstructionSnapshots:
    """Writes ``engine.state.output["images"]`` as a PNG every ``interval`` iterations and when training completes.

    The images are requested from the trainer (:attr:`common.engine.SelfSupervisedTrainer.images_requested`) only
    at those iterations, the last of the run included, so the other steps do not build them.

    Files: ``<output_dir>/reconstructions/iteration_000123.png`` (see :func:`orthogonal_slices_png`); the
    written paths are kept in :attr:`paths`. Nothing is written (a debug log line only) when the output carries
    no images.

    With ``mlflow_handler`` each PNG is also logged as an artifact of its run under ``reconstructions/``. The
    run is the one the handler had open at the last iteration, so the final snapshot reaches it whatever the
    order of the two handlers, even when the ``MLFlowHandler`` (``close_on_complete=True``) closes it first.

    Args:
        output_dir: folder under which ``reconstructions/`` is created.
        interval: iterations between snapshots.
        upscale: integer magnification of the PNG.
        mlflow_handler: a ``monai.handlers.MLFlowHandler`` attached to the same trainer, or ``None``.
        intensity: the ``(mean, std)`` the images were normalised with, undone for the PNG; None: not normalised.
    """

    def __init__(
        self,
        output_dir: str | Path,
        interval: int = 100,
        upscale: int = 2,
        mlflow_handler: MLFlowHandler | None = None,
        intensity: Sequence[float] | None = None,
    ) -> None:
        self.folder = Path(output_dir) / "reconstructions"
        self.interval = interval
        self.upscale = upscale
        self.mlflow_handler = mlflow_handler
        self.intensity = intensity
        self.paths: list[Path] = []
        self._run_id: str | None = None
        self._written_iteration: int | None = None

    def attach(self, engine: Engine) -> None:
        """Request images at ``ITERATION_STARTED`` of the iterations to write; write at every ``ITERATION_COMPLETED``
        (every ``interval``) and at ``COMPLETED`` of ``engine``."""
        engine.add_event_handler(Events.ITERATION_STARTED, self.request_images)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def request_images(self, engine: Engine) -> None:
        """Ask the trainer for the images of this iteration if it is a multiple of ``interval`` or the run's last."""
        iteration, epoch_length = engine.state.iteration, engine.state.epoch_length
        last = epoch_length is not None and iteration == engine.state.max_epochs * epoch_length
        if iteration % self.interval == 0 or last:
            engine.images_requested = True

    def iteration_completed(self, engine: Engine) -> None:
        """Note the MLflow run, and write a snapshot when the iteration is a multiple of ``interval``."""
        if self.mlflow_handler is not None and self.mlflow_handler.cur_run is not None:
            self._run_id = self.mlflow_handler.cur_run.info.run_id
        if engine.state.iteration % self.interval == 0:
            self.write(engine)

    def write(self, engine: Engine) -> None:
        """Write (and log) the snapshot of the current iteration, unless written already or without images."""
        iteration = engine.state.iteration
        output = engine.state.output
        images = output.get("images") if isinstance(output, Mapping) else None
        if not images:
            logger.debug("iteration %d: the output carries no images, no reconstruction snapshot", iteration)
            return
        if iteration == self._written_iteration:
            return
        path = orthogonal_slices_png(
            images, self.folder / f"iteration_{iteration:06d}.png", self.upscale, intensity=self.intensity
        )
        self.paths.append(path)
        self._written_iteration = iteration
        if self._run_id is not None:
            self.mlflow_handler.client.log_artifact(self._run_id, str(path), "reconstructions")
