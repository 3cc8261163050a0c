"""2D slice pipelines of masked modelling (SparK on CT slices, Wolf et al. 2023): training crops, whole-slice export.

SparK's ImageNet augmentation (Tian et al., official ``pretrain`` code), which the study keeps for CT slices:
a random resized crop of 0.67 .. 1 of the slice's area, resized bicubically to the input size (224), and a
horizontal flip with probability 0.5. The slices are grey values in [0, 1]
(:func:`common.transforms.slices.load_slice_transforms`); SparK's loss normalises every patch itself, so no
dataset normalisation is applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from monai.config import KeysCollection
from monai.transforms import Compose, DivisiblePadd, MapTransform, RandFlipd

from common.previews import orthogonal_slices_png
from common.transforms.slices import load_slice_transforms
from common.transforms.views2d import RandResizedCropd


def slice_pretraining_transforms(image_size: int = 224, crop_scale: Sequence[float] = (0.67, 1.0)) -> Compose:
    """Load a slice, cut a random resized ``image_size`` crop of ``crop_scale`` of its area, flip it horizontally.

    Returns:
        a ``Compose`` mapping ``{"image": path}`` to ``{"image": (1, image_size, image_size)}`` in [0, 1].
    """
    return Compose(
        load_slice_transforms(["image"])
        + [
            RandResizedCropd("image", image_size, scale=crop_scale, mode="bicubic"),
            RandFlipd("image", prob=0.5, spatial_axis=1),
        ]
    )


def slice_inference_transforms(divisor: int = 32) -> Compose:
    """Whole slices for reconstruction export, zero-padded to a multiple of the encoder's down-sampling."""
    return Compose(load_slice_transforms(["image"]) + [DivisiblePadd("image", k=divisor)])


class SaveReconstructionPngd(MapTransform):
    """Write the exported images of one slice (:class:`common.engine.MaskedReconstructionInferer`'s ``pred``, one
    channel per name) side by side as ``<output_dir>/<slice's folder>_<slice's file stem>.png`` (the folder keeps
    apart the equally numbered slices of different volumes that :mod:`tools.extract_slices` writes).

    Args:
        keys: the key of the stacked images (``"pred"``).
        names: the image names, in channel order (e.g. input, masked, reconstruction); drawn above the columns and
            written to the PNG's ``columns`` text chunk (:func:`common.previews.orthogonal_slices_png`).
        output_dir: the folder of the PNGs (created).
        source_key: the key whose meta data names the slice file.
    """

    def __init__(self, keys: KeysCollection, names: Sequence[str], output_dir: str, source_key: str = "image") -> None:
        super().__init__(keys)
        self.names = list(names)
        self.output_dir = Path(output_dir)
        self.source_key = source_key

    def __call__(self, data: dict) -> dict:
        source = Path(str(data[self.source_key].meta["filename_or_obj"]))
        for key in self.key_iterator(data):
            channels = torch.chunk(torch.as_tensor(data[key]), len(self.names), dim=0)
            path = self.output_dir / f"{source.parent.name}_{source.stem}.png"
            orthogonal_slices_png(dict(zip(self.names, channels)), path, upscale=1)
        return data
