"""Patch masks for masked image modelling.

A mask is drawn once on the coarsest feature grid (one cell per ``patch_size`` patch of the input)
and up-sampled to every finer feature scale, so that all scales of a hierarchical encoder see the
same visible region (SparK's and HySparK's bottom-up consistency). Convention used throughout the
collection: ``True`` marks a *visible* (kept, "active") cell, ``False`` a masked one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def keep_count(num_cells: int, mask_ratio: float) -> int:
    """Number of visible cells per sample: ``round(num_cells * (1 - mask_ratio))``, at least 1."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return max(1, round(num_cells * (1.0 - mask_ratio)))


def random_patch_mask(
    batch_size: int,
    grid_size: Sequence[int],
    mask_ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-sample random mask with exactly :func:`keep_count` visible cells in every sample.

    Each sample gets its own random permutation of the cells; the first ``keep_count`` cells are kept.
    (The HySparK code counts the kept cells over the whole batch, so with several crops per step every
    cell can end up visible; here the count holds per sample.)

    Args:
        batch_size: ``B``.
        grid_size: the coarsest grid, e.g. ``(6, 6, 6)`` for a 96^3 crop and 16^3 patches.
        mask_ratio: fraction of masked cells, e.g. 0.75.
        generator: makes the mask deterministic; drawn on the CPU, then moved to ``device``.
        device: where the mask lives.

    Returns:
        Bool tensor ``(B, 1, *grid_size)``, ``True`` = visible.
    """
    num_cells = 1
    for size in grid_size:
        num_cells *= int(size)
    keep = keep_count(num_cells, mask_ratio)
    order = torch.rand(batch_size, num_cells, generator=generator).argsort(dim=1)
    visible = torch.zeros(batch_size, num_cells, dtype=torch.bool)
    visible.scatter_(1, order[:, :keep], True)
    return visible.view(batch_size, 1, *grid_size).to(device)


def upsample_mask(mask: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
    """Nearest up-sampling of a cell mask to a finer grid whose size is an integer multiple of the mask's.

    Args:
        mask: ``(B, 1, *grid)`` bool.
        spatial_size: target size; every entry a multiple of the grid's (equal sizes return ``mask``).

    Returns:
        ``(B, 1, *spatial_size)`` bool.
    """
    grid = mask.shape[2:]
    if len(spatial_size) != len(grid):
        raise ValueError(f"mask grid {tuple(grid)} and spatial size {tuple(spatial_size)} differ in dimensions")
    for axis, (size, cells) in enumerate(zip(spatial_size, grid)):
        if size % cells:
            raise ValueError(
                f"spatial size {tuple(spatial_size)} is not a multiple of the mask grid {tuple(grid)}; "
                "crop sizes must be divisible by the encoder's total down-sampling"
            )
        if size != cells:
            mask = mask.repeat_interleave(size // cells, dim=axis + 2)
    return mask
