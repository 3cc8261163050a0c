"""Embedding export for MONAI's ``SupervisedEvaluator`` (the 2D contrastive bundles' inference): an inferer that pools
the ``network_def``'s feature map into one vector per image, and a handler that writes the vectors of a run with the
file each came from."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.inferers import Inferer
from torch import nn

logger = logging.getLogger(__name__)

EMBEDDINGS_FILE = "embeddings.npy"
IMAGES_FILE = "images.txt"


class PooledFeaturesInferer(Inferer):
    """``inferer(image, network)``: the global average of ``network(image)`` over its spatial axes,
    ``(B, C, *S')`` -> ``(B, C)``; on a pre-training bundle's ``network_def``
    (:func:`~common.networks.encoder_features`) the pooled encoder features the methods' heads see
    (e.g. :meth:`~common.networks.resnet.ResNetEncoder.pooled`)."""

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, **kwargs) -> torch.Tensor:
        return network(inputs, *args, **kwargs).flatten(2).mean(dim=2)


class EmbeddingsWriter:
    """Collect the evaluator's per-image ``pred`` (``(F,)``) and the source file of its image; on completion write
    ``output_dir/embeddings.npy``, the ``(N, F)`` float32 rows in the data loader's order, and
    ``output_dir/images.txt``, the source file of each row (``-`` where the image has no ``filename_or_obj``).

    NumPy rather than MONAI's ``ClassificationSaver`` (CSV text): one binary array of 4 bytes per value, loaded in one
    call.

    Args:
        output_dir: created if needed; the bundle's ``prepare_output_dir`` has refused earlier outputs unasked.
        image_key: the key of the image in the evaluator's decollated output.
        pred_key: the key of the embedding in the evaluator's decollated output.
    """

    def __init__(self, output_dir: str | Path, image_key: str = "image", pred_key: str = "pred") -> None:
        self.output_dir = Path(output_dir)
        self.image_key = image_key
        self.pred_key = pred_key
        self.rows: list[torch.Tensor] = []
        self.sources: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine) -> None:
        self.rows, self.sources = [], []

    def collect(self, engine: Engine) -> None:
        for item in engine.state.output:
            self.rows.append(torch.as_tensor(item[self.pred_key]).detach().float().cpu())
            meta = getattr(item[self.image_key], "meta", {})
            self.sources.append(str(meta.get("filename_or_obj", "-")))

    def write(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        embeddings = torch.stack(self.rows).numpy() if self.rows else np.zeros((0, 0), np.float32)
        np.save(self.output_dir / EMBEDDINGS_FILE, embeddings)
        (self.output_dir / IMAGES_FILE).write_text("".join(f"{source}\n" for source in self.sources))
        logger.info("wrote %d embeddings to %s", len(self.rows), self.output_dir / EMBEDDINGS_FILE)
