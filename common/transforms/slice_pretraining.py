"""2D slice pipelines of masked modelling (SparK on CT slices, Wolf et al. 2023): training crops, whole-slice export.

SparK's ImageNet augmentation (Tian et al., official ``pretrain/utils/imagenet.py``), which the study keeps for CT
slices and its Supplementary Table 7 lists ("Augmentations horizontal flip, crop"): a random resized crop of
0.67 .. 1 of the slice's area, resized bicubically to the input size (224), and a horizontal flip with probability
0.5 (:func:`common.transforms.views2d.augmented_view`). The slices are grey values in [0, 1]
(:func:`common.transforms.slices.load_slice_transforms`), normalised last with ``intensity`` ``(mean, std)``: the
data set's (the paper's) or ImageNet's (the official code's), :func:`common.transforms.slices.normalisation_statistics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from monai.config import KeysCollection
from monai.transforms import Compose, DivisiblePadd, MapTransform

from common.previews import orthogonal_slices_png
from common.transforms.slices import intensity_normalisation, load_slice_transforms
from common.transforms.views2d import augmented_view

SPARK_AUGMENTATIONS = ("crop", "flip")


def slice_pretraining_transforms(
    image_size: int = 224,
    crop_scale: Sequence[float] = (0.67, 1.0),
    augmentations: Sequence[str] = SPARK_AUGMENTATIONS,
    intensity: Sequence[float] | None = None,
) -> Compose:
    """Load a slice, cut a random resized ``image_size`` crop of ``crop_scale`` of its area (bicubic), apply the other
    ``augmentations`` (SparK's: a horizontal flip; names of :data:`common.transforms.views2d.AUGMENTATIONS`) and
    normalise with ``intensity`` ``(mean, std)`` (None: not normalised).

    Returns:
        a ``Compose`` mapping ``{"image": path}`` to ``{"image": (1, image_size, image_size)}``.
    """
    view = augmented_view(image_size, crop_scale, "image", augmentations, intensity, crop_mode="bicubic")
    return Compose([*load_slice_transforms(["image"]), *view.transforms])


def slice_inference_transforms(divisor: int = 32, intensity: Sequence[float] | None = None) -> Compose:
    """Whole slices for reconstruction export: zero-padded (air) to a multiple of the encoder's down-sampling, then
    normalised with training's ``intensity`` ``(mean, std)`` (None: not normalised)."""
    padding = [DivisiblePadd("image", k=divisor)]
    return Compose(load_slice_transforms(["image"]) + padding + intensity_normalisation("image", intensity))


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
        intensity: the ``(mean, std)`` the slices were normalised with, undone for the PNG; None: not normalised.
    """

    def __init__(
        self,
        keys: KeysCollection,
        names: Sequence[str],
        output_dir: str,
        source_key: str = "image",
        intensity: Sequence[float] | None = None,
    ) -> None:
        super().__init__(keys)
        self.names = list(names)
        self.output_dir = Path(output_dir)
        self.source_key = source_key
        self.intensity = intensity

    def __call__(self, data: dict) -> dict:
        source = Path(str(data[self.source_key].meta["filename_or_obj"]))
        for key in self.key_iterator(data):
            channels = torch.chunk(torch.as_tensor(data[key]), len(self.names), dim=0)
            path = self.output_dir / f"{source.parent.name}_{source.stem}.png"
            orthogonal_slices_png(dict(zip(self.names, channels)), path, upscale=1, intensity=self.intensity)
        return data
