"""The ``masked`` back-end's state: which positions are visible while a sparse encoder runs.

Dense tensors flow through the network as usual; every sparse-aware layer asks :func:`visible_like`
for the visible mask at its output's spatial size and zeroes the rest (SparK's "simulated"
sparsity). Outside :func:`visible_region` no mask is active and the layers are exactly their dense
parents.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from common.masking import upsample_mask

_ACTIVE: ContextVar[dict | None] = ContextVar("common_sparse_visible_masks", default=None)


@contextmanager
def visible_region(mask: torch.Tensor) -> Iterator[None]:
    """Run the enclosed forward pass with ``mask`` (``(B, 1, *grid)`` bool, ``True`` = visible) active."""
    token = _ACTIVE.set({tuple(mask.shape[2:]): mask})
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def visible_like(x: torch.Tensor) -> torch.Tensor | None:
    """The active mask at ``x``'s spatial size, ``(B, 1, *x.shape[2:])`` bool.

    ``None`` when no mask is active or ``x`` is not a ``(B, C, *spatial)`` map of the mask's dimension.

    The mask is up-sampled from the coarsest grid (and cached per size) so every scale sees the same
    visible region; a size coarser than the grid is an error.
    """
    masks = _ACTIVE.get()
    if masks is None or x.dim() != next(iter(masks.values())).dim():  # e.g. (B, L, C) tokens of a ViT stage
        return None
    size = tuple(x.shape[2:])
    if size not in masks:
        coarsest = min(masks.values(), key=lambda m: m[0, 0].numel())
        masks[size] = upsample_mask(coarsest, size)
    return masks[size]


def remask(x: torch.Tensor) -> torch.Tensor:
    """Zero the masked positions of ``x`` (no-op outside :func:`visible_region`)."""
    mask = visible_like(x)
    return x if mask is None else x * mask
