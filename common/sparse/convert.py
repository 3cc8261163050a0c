"""Turn a dense network into a sparse one, pick a back-end, and run an encoder on the visible region."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch
from torch import nn

from common.layers import ChannelsFirstLayerNorm
from common.masking import upsample_mask
from common.sparse import layers
from common.sparse.context import visible_region
from common.sparse.spconv_ops import (
    import_spconv,
    is_sparse,
    spconv_available,
    spconv_install_command,
    to_dense,
    to_sparse,
)

logger = logging.getLogger(__name__)

SPARSE_BACKENDS = ("auto", "masked", "spconv")

_SPARSE_CLASS: dict[type, type] = {
    nn.Conv2d: layers.SparseConv2d,
    nn.Conv3d: layers.SparseConv3d,
    nn.MaxPool2d: layers.SparseMaxPool2d,
    nn.MaxPool3d: layers.SparseMaxPool3d,
    nn.BatchNorm2d: layers.SparseBatchNorm2d,
    nn.BatchNorm3d: layers.SparseBatchNorm3d,
    nn.SyncBatchNorm: layers.SparseSyncBatchNorm,
    nn.GroupNorm: layers.SparseGroupNorm,
    nn.InstanceNorm2d: layers.SparseInstanceNorm2d,
    nn.InstanceNorm3d: layers.SparseInstanceNorm3d,
    ChannelsFirstLayerNorm: layers.SparseChannelsFirstLayerNorm,
    nn.GELU: layers.SparseGELU,
    nn.ReLU: layers.SparseReLU,
    nn.LeakyReLU: layers.SparseLeakyReLU,
    nn.Dropout: layers.SparseDropout,
}
_UNSUPPORTED = (nn.modules.conv._ConvTransposeNd, nn.modules.pooling._AvgPoolNd, nn.Upsample)


def sparsify(module: nn.Module) -> nn.Module:
    """Make every spatial layer of ``module`` sparse-aware, in place (SparK's dense-to-sparse conversion).

    Each supported layer's class is swapped for its sparse subclass from :mod:`common.sparse.layers`;
    parameters, buffers and names are untouched, so the state dict stays that of the dense network.
    Layers that act on tokens (``nn.Linear``, ``nn.LayerNorm``) are left as they are.

    Raises:
        NotImplementedError: ``module`` holds a spatial layer without a sparse counterpart.
    """
    for name, child in module.named_modules():
        if type(child) in _SPARSE_CLASS:
            child.__class__ = _SPARSE_CLASS[type(child)]
        elif isinstance(child, _UNSUPPORTED):
            raise NotImplementedError(f"{name}: {type(child).__name__} has no sparse counterpart")
    return module


@functools.cache
def auto_backend_on_cuda() -> str:
    """``spconv`` when it imports, else ``masked``, which the first call (once per process) logs as a warning
    naming the spconv build to install."""
    if spconv_available():
        return "spconv"
    logger.warning(
        "spconv is not installed or does not import: sparse_backend 'auto' runs the 'masked' back-end on CUDA "
        "(same numbers, no sparse speed-up). For the spconv back-end install the build matching torch's CUDA: %s",
        spconv_install_command(torch.version.cuda),
    )
    return "masked"


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """``auto`` -> ``spconv`` on CUDA (true sparsity pays there) when spconv imports, ``masked`` elsewhere.

    ``spconv`` on the CPU is allowed (``ConvAlgo.Native``): slower, but it computes the same numbers.

    Raises:
        ValueError: ``backend`` is not one of :data:`SPARSE_BACKENDS`.
        ImportError: ``backend`` is ``spconv`` and spconv does not import; the message names the build to install.
    """
    if backend not in SPARSE_BACKENDS:
        raise ValueError(f"sparse_backend must be one of {SPARSE_BACKENDS}, got {backend!r}")
    if backend == "auto":
        return auto_backend_on_cuda() if torch.device(device).type == "cuda" else "masked"
    if backend == "spconv":
        import_spconv()
    return backend


def encode_visible(
    encoder: Callable[..., list], image: torch.Tensor, mask: torch.Tensor, backend: str
) -> list[torch.Tensor]:
    """Run a sparsified encoder on the visible part of ``image`` only.

    Args:
        encoder: a :func:`sparsify`-ed module returning a list of feature maps.
        image: ``(B, C, *S)``.
        mask: ``(B, 1, *grid)`` bool, ``True`` = visible; ``S`` a multiple of ``grid``.
        backend: ``masked`` or ``spconv`` (see :func:`resolve_backend`).

    Returns:
        The encoder's feature maps as dense ``(B, C_i, *S_i)`` tensors, exactly zero at masked positions.
    """
    visible = upsample_mask(mask, image.shape[2:])
    if backend == "spconv":
        return [to_dense(f) if is_sparse(f) else f for f in encoder(to_sparse(image, visible))]
    if backend != "masked":
        raise ValueError(f"backend must be 'masked' or 'spconv' here, got {backend!r}")
    with visible_region(mask):
        return encoder(image * visible)
