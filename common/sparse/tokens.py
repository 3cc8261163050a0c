"""Feature map <-> token sequence, keeping only the visible cells (the ViT stage of a hybrid encoder)."""

from __future__ import annotations

import torch

from common.sparse.context import visible_like
from common.sparse.spconv_ops import is_sparse


def _equal_counts(visible_per_sample: torch.Tensor) -> int:
    counts = visible_per_sample.unique()
    if counts.numel() != 1:
        raise ValueError(f"every sample needs the same number of visible cells to form tokens, got {counts.tolist()}")
    return int(counts)


def to_tokens(x) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """Tokens of the visible cells of a map (all cells when no mask is active).

    Args:
        x: a dense ``(B, C, *grid)`` map, or a sparse one of the ``spconv`` back-end.

    Returns:
        ``(tokens (B, n, C), positions (B, n) flat cell indices in increasing order, grid)``.
    """
    if is_sparse(x):
        grid = tuple(x.spatial_shape)
        batch = x.indices[:, 0].long()
        n = _equal_counts(torch.bincount(batch, minlength=x.batch_size))
        flat = torch.zeros_like(batch)
        for axis, size in enumerate(grid):
            flat = flat * size + x.indices[:, axis + 1].long()
        return x.features.view(x.batch_size, n, -1), flat.view(x.batch_size, n), grid
    grid = tuple(x.shape[2:])
    cells = x.flatten(2).transpose(1, 2)
    mask = visible_like(x)
    if mask is None:
        positions = torch.arange(cells.shape[1], device=x.device).expand(x.shape[0], -1)
        return cells, positions, grid
    visible = mask.flatten(1)
    n = _equal_counts(visible.sum(1))
    positions = visible.nonzero()[:, 1].view(x.shape[0], n)
    return cells[visible].view(x.shape[0], n, -1), positions, grid


def from_tokens(tokens: torch.Tensor, like):
    """Inverse of :func:`to_tokens`: a map shaped like ``like``, zeros at the masked cells."""
    if is_sparse(like):
        return like.replace_feature(tokens.reshape(-1, tokens.shape[-1]))
    batch, channels, grid = like.shape[0], tokens.shape[-1], like.shape[2:]
    mask = visible_like(like)
    if mask is None:
        return tokens.transpose(1, 2).reshape(batch, channels, *grid)
    cells = tokens.new_zeros(batch, mask[0].numel(), channels).index_put((mask.flatten(1),), tokens.reshape(-1, channels))
    return cells.transpose(1, 2).reshape(batch, channels, *grid)
