"""Reconstruction snapshots a person can look at: grey-scale PNG grids of the method's ``"images"`` output.

For 3D images the grid has one row per orthogonal view (axial, coronal, sagittal central slice) and one column
per image, in the order of the ``images`` dict; 2D images make a single row. The column names are stored in
the PNG's ``columns`` text chunk (and the view names in ``rows``), not drawn on the image.

Spatial axes are read in MONAI's layout after ``Orientation("RAS")``: (x: right-left, y: posterior-anterior,
z: inferior-superior). Views are shown with anterior (axial) or superior (coronal, sagittal) up.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from ignite.engine import Engine, Events
from PIL import Image
from PIL.PngImagePlugin import PngInfo

if TYPE_CHECKING:
    from monai.handlers import MLFlowHandler

logger = logging.getLogger(__name__)

VIEWS = ("axial", "coronal", "sagittal")


def _central_slices(volume: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal and sagittal central slices of an (x, y, z) volume, as (rows, columns) images."""
    x, y, z = (size // 2 for size in volume.shape)
    return [volume[:, :, z].T[::-1], volume[:, y, :].T[::-1], volume[x, :, :].T[::-1]]


def orthogonal_slices_png(images: Mapping[str, torch.Tensor], path: str | Path, upscale: int = 2) -> Path:
    """Write the images of one sample side by side as a grey-scale PNG.

    Args:
        images: ``{name: tensor}`` of one sample, each channel first: (C, x, y, z) for 3D or (C, H, W) for 2D
            (channel 0 is shown), values clipped to [0, 1] (NaN shown as 0). Images of different sizes are
            centred in tiles of the largest size.
        path: the PNG to write; its folder is created.
        upscale: integer nearest-neighbour magnification, so that small crops are visible.

    Returns:
        ``path``. Its pixel size is (views x tile height x upscale, images x tile width x upscale), with 3 views
        for 3D images and 1 for 2D.

    Raises:
        ValueError: no images, or not all of them (C, H, W) or all (C, x, y, z).
    """
    arrays = [np.asarray(torch.as_tensor(image).detach().float().cpu())[0] for image in images.values()]
    if not arrays or {array.ndim for array in arrays} not in ({2}, {3}):
        shapes = {name: tuple(image.shape) for name, image in images.items()}
        raise ValueError(f"expected images of one sample, all (C, H, W) or all (C, x, y, z); got {shapes}")
    columns = [_central_slices(array) if array.ndim == 3 else [array] for array in arrays]
    tile_h = max(tile.shape[0] for column in columns for tile in column)
    tile_w = max(tile.shape[1] for column in columns for tile in column)
    grid = np.zeros((len(columns[0]) * tile_h, len(columns) * tile_w), dtype=np.float32)
    for col, column in enumerate(columns):
        for row, tile in enumerate(column):
            top = row * tile_h + (tile_h - tile.shape[0]) // 2
            left = col * tile_w + (tile_w - tile.shape[1]) // 2
            grid[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
    pixels = np.round(np.clip(np.nan_to_num(grid), 0.0, 1.0) * 255).astype(np.uint8)
    pixels = pixels.repeat(upscale, axis=0).repeat(upscale, axis=1)
    info = PngInfo()
    info.add_text("columns", ", ".join(images))
    info.add_text("rows", ", ".join(VIEWS) if arrays[0].ndim == 3 else "2d")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, pnginfo=info)
    return path


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
    """

    def __init__(
        self,
        output_dir: str | Path,
        interval: int = 100,
        upscale: int = 2,
        mlflow_handler: MLFlowHandler | None = None,
    ) -> None:
        self.folder = Path(output_dir) / "reconstructions"
        self.interval = interval
        self.upscale = upscale
        self.mlflow_handler = mlflow_handler
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
        path = orthogonal_slices_png(images, self.folder / f"iteration_{iteration:06d}.png", self.upscale)
        self.paths.append(path)
        self._written_iteration = iteration
        if self._run_id is not None:
            self.mlflow_handler.client.log_artifact(self._run_id, str(path), "reconstructions")
