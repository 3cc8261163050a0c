"""Reconstruction export of a pre-training bundle's ``inference.json``: NIfTI volumes to open in a viewer."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from monai.data import MetaTensor, decollate_batch
from monai.transforms import SaveImage
from tqdm import tqdm

logger = logging.getLogger(__name__)


@torch.no_grad()
def export_reconstructions(
    method: torch.nn.Module,
    dataloader: Iterable[dict],
    output_dir: str | Path,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> list[Path]:
    """Mask each volume, reconstruct it, and write ``<name>_{input,masked,reconstruction,target}.nii.gz``.

    Args:
        method: a masked-modelling method with ``mask(image, generator)``, ``reconstruct(image, visible)``
            and ``images(image, prediction, visible)`` (:class:`~common.methods.SparK` and its subclasses).
        dataloader: batches of one pre-processed volume, ``{"image": MetaTensor (1, C, *S)}``.
        output_dir: where the files go (created).
        device: where the method runs.
        seed: the masks are drawn from a generator seeded once, so an export is reproducible.

    Returns:
        The written files. They carry the pre-processed volume's affine (after resampling and cropping).
    """
    method.eval().to(device)
    generator = torch.Generator().manual_seed(seed)
    written = []
    for batch in tqdm(dataloader, desc="reconstruct", unit="volume"):
        image = batch["image"].to(device)
        visible = method.mask(image, generator)
        images = method.images(image, method.reconstruct(image, visible), visible)
        meta = decollate_batch(batch)[0]["image"].meta  # this volume's file name and affine
        for name, volume in images.items():
            saver = SaveImage(
                output_dir=str(output_dir), output_postfix=name, separate_folder=False, resample=False,
                print_log=False, savepath_in_metadict=True,
            )
            written.append(Path(saver(MetaTensor(volume[0].float().cpu(), meta=meta)).meta["saved_to"]))
    logger.info("wrote %d reconstruction files to %s", len(written), output_dir)
    return written
