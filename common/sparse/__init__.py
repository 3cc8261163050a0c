"""Sparse-aware layers with two back-ends: ``masked`` (dense ops + re-masking) and ``spconv`` (true sparsity)."""

from common.sparse.context import remask, visible_like, visible_region
from common.sparse.convert import SPARSE_BACKENDS, encode_visible, resolve_backend, sparsify
from common.sparse.spconv_ops import is_sparse, spconv_available, to_dense, to_sparse, visible_mask

__all__ = [
    "SPARSE_BACKENDS",
    "encode_visible",
    "is_sparse",
    "remask",
    "resolve_backend",
    "sparsify",
    "spconv_available",
    "to_dense",
    "to_sparse",
    "visible_like",
    "visible_mask",
    "visible_region",
]
