"""Export of a pre-trained encoder's pooled embeddings of a set of images (the 2D contrastive bundles' inference)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

logger = logging.getLogger(__name__)

EMBEDDINGS_FILE = "embeddings.npy"
IMAGES_FILE = "images.txt"


@torch.no_grad()
def export_embeddings(
    encoder: nn.Module,
    dataloader: DataLoader,
    output_dir: str | Path,
    device: str | torch.device = "cpu",
    image_key: str = "image",
    overwrite: bool = False,
) -> Path:
    """Write ``output_dir/embeddings.npy``, the ``(N, F)`` float32 pooled features ``encoder.pooled(image)`` of
    every image of ``dataloader`` in order, and ``output_dir/images.txt``, the source file of each row.

    Args:
        encoder: a module with ``pooled(x: (B, C, *S)) -> (B, F)``, e.g.
            :class:`~common.networks.resnet.ResNetEncoder`; evaluated in ``eval`` mode.
        dataloader: batches ``{image_key: (B, C, *S)}`` of MONAI MetaTensors (the file names are read from
            their ``filename_or_obj`` meta data; rows without one are written as ``-``).
        output_dir: created if needed.
        device: where the encoder runs.
        image_key: the image key of the batches.
        overwrite: replace existing files instead of refusing.

    Returns:
        the path of ``embeddings.npy``.

    Raises:
        FileExistsError: the files exist and ``overwrite`` is false.
    """
    output_dir = Path(output_dir)
    targets = [output_dir / EMBEDDINGS_FILE, output_dir / IMAGES_FILE]
    existing = [str(path) for path in targets if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} exist; pass overwrite=True (--overwrite true) to replace them")
    encoder = encoder.to(device).eval()
    features, names = [], []
    for batch in dataloader:
        images = batch[image_key]
        features.append(encoder.pooled(images.to(device)).float().cpu())
        sources = getattr(images, "meta", {}).get("filename_or_obj", ["-"] * len(images))
        names.extend(str(source) for source in sources)
    output_dir.mkdir(parents=True, exist_ok=True)
    np.save(targets[0], torch.cat(features).numpy())
    targets[1].write_text("".join(f"{name}\n" for name in names))
    logger.info("wrote %d embeddings to %s", len(names), targets[0])
    return targets[0]
