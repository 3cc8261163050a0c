"""GL-MAE's global and local views, cut in the data pipeline (DataLoader workers), not on the model's device.

GL-MAE (Zhuang et al., "Advancing Volumetric Medical Image Segmentation via Global-Local Masked Autoencoder"):
``p`` global views (large crops, down-sampled to 160^3) and ``q`` local views (small crops at about the native
resolution, resized to 96^3) of every volume, in the multi-crop style of DINO (Caron et al., ICCV 2021).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import Compose, MapTransform, Randomizable

from common.tensors import as_plain_tensor
from common.transforms.pretraining import load_body_ct

GLOBAL_VIEWS = "global_views"
LOCAL_VIEWS = "local_views"


class RandGlobalLocalViewsd(Randomizable, MapTransform):
    """Replace the image of ``keys`` ``(C, *S)`` by ``global_views`` ``(p, C, *global_size)`` and ``local_views``
    ``(q, C, *local_size)``.

    Every view is a cube whose side is ``s * min(S)`` with ``s`` drawn uniformly from the view type's ``scale``
    range, at a uniformly random position, resized trilinearly to the view size. A scale is a fraction of the
    volume's shortest side (not of its volume as in DINO's 2D area scales): a global view at ``s = 1`` spans the
    whole short axis, a local view at 0.25-0.5 keeps roughly the native resolution at 96^3 for a 200-400 voxel
    volume, as the paper's "local views at high resolution" asks. Cubes keep the anatomy's proportions.

    Args:
        keys: the image key (one key).
        global_views, global_size, global_scale: ``p`` (2), the view side (160) and the scale range ([0.5, 1]).
        local_views, local_size, local_scale: ``q`` (8), the view side (96) and the scale range ([0.25, 0.5]).
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        global_views: int = 2,
        global_size: int = 160,
        global_scale: Sequence[float] = (0.5, 1.0),
        local_views: int = 8,
        local_size: int = 96,
        local_scale: Sequence[float] = (0.25, 0.5),
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(f"RandGlobalLocalViewsd cuts views of one image, got keys {self.keys}")
        for name, (low, high) in (("global_scale", global_scale), ("local_scale", local_scale)):
            if not 0 < low <= high <= 1:
                raise ValueError(f"{name} must satisfy 0 < low <= high <= 1, got {(low, high)}")
        self.views = {
            GLOBAL_VIEWS: (global_views, global_size, tuple(global_scale)),
            LOCAL_VIEWS: (local_views, local_size, tuple(local_scale)),
        }

    def randomize(self, spatial_shape: Sequence[int]) -> dict[str, list[tuple[tuple[int, ...], int]]]:
        """``{kind: [(start, side), ...]}``: the corner and side in voxels of every view of a volume of ``spatial_shape``."""
        shortest = min(spatial_shape)
        boxes = {}
        for kind, (count, _, (low, high)) in self.views.items():
            boxes[kind] = []
            for _ in range(count):
                side = max(1, round(self.R.uniform(low, high) * shortest))
                start = tuple(int(self.R.randint(0, s - side + 1)) for s in spatial_shape)
                boxes[kind].append((start, side))
        return boxes

    def __call__(self, data):
        d = dict(data)
        key = self.keys[0]
        image = as_plain_tensor(torch.as_tensor(d.pop(key)))
        for kind, boxes in self.randomize(image.shape[1:]).items():
            size = (self.views[kind][1],) * (image.dim() - 1)
            views = []
            for start, side in boxes:
                crop = image[(slice(None), *(slice(s, s + side) for s in start))]
                views.append(F.interpolate(crop[None], size=size, mode="trilinear", align_corners=False)[0])
            d[kind] = torch.stack(views)
        return d


def global_local_train_transforms(
    pixdim: Sequence[float] = (1.5, 1.5, 1.5),
    window: str = "wide",
    global_views: int = 2,
    global_size: int = 160,
    global_scale: Sequence[float] = (0.5, 1.0),
    local_views: int = 8,
    local_size: int = 96,
    local_scale: Sequence[float] = (0.25, 0.5),
) -> Compose:
    """GL-MAE's pre-training pipeline: the deterministic loading of :func:`pretraining_train_transforms` (RAS,
    ``pixdim``, ``window``: HU -1000..1000 -> [0, 1], crop to the body; cacheable), then
    :class:`RandGlobalLocalViewsd`. A batch holds ``global_views`` ``(B, p, C, *global)`` and ``local_views``
    ``(B, q, C, *local)``."""
    return Compose(
        load_body_ct(pixdim, window)
        + [
            RandGlobalLocalViewsd(
                "image", global_views, global_size, global_scale, local_views, local_size, local_scale
            )
        ]
    )
