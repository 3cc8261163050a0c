"""The ``spconv`` back-end: feature maps that store and compute only their visible positions.

A sparse feature map is a :class:`spconv.pytorch.SparseConvTensor` whose rows are the visible
positions in lexicographic ``(batch, *spatial)`` order, the order of :func:`torch.nonzero`. Every
operation here keeps that order, so a residual addition is a plain addition of features and the
coarsest map of a batch masked with the same keep count per sample reshapes to ``(B, keep, C)`` tokens.

Dense-channel submanifold convolutions (the bulk of the compute) run on spconv's kernels
(``ConvAlgo.Native`` on the CPU, spconv's default implicit GEMM on CUDA). spconv has no grouped
convolution, so depth-wise and strided convolutions and max-pooling run on a rulebook (pairs of
input / output rows per kernel offset) with gather-multiply-scatter in PyTorch, whose backward
re-gathers instead of storing one copy of the features per kernel offset.
"""

from __future__ import annotations

import itertools
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from spconv.pytorch import SparseConvTensor as SparseTensor
    from spconv.pytorch.conv import SparseConvolution

Rulebook = list[tuple[torch.Tensor, torch.Tensor]]


# spconv 2.3.8's CUDA builds, each with cumm 0.7.11 of the same CUDA: wheels for Python 3.9-3.13 on PyPI. The pinned
# spconv-cu120 2.3.6 of requirements.txt has wheels for Python 3.7-3.11 only.
SPCONV_CUDA_BUILDS = ((12, 1), (12, 4), (12, 6))


def spconv_install_command(cuda_version: str | None) -> str:
    """The ``pip install`` of the spconv build matching torch's CUDA version (``torch.version.cuda``).

    The newest spconv 2.3.8 build whose CUDA is not newer than torch's; for a CPU build of torch or an older CUDA,
    the pinned build of ``requirements.txt`` on Python <= 3.11 and the oldest 2.3.8 build on newer Pythons.
    """
    version = tuple(int(part) for part in cuda_version.split(".")[:2]) if cuda_version else (0, 0)
    build = max((b for b in SPCONV_CUDA_BUILDS if b <= version), default=None)
    if build is None and sys.version_info < (3, 12):
        return "pip install spconv-cu120==2.3.6 cumm-cu120==0.4.11"
    tag = "cu{}{}".format(*(build or SPCONV_CUDA_BUILDS[0]))
    return f"pip install spconv-{tag}==2.3.8 cumm-{tag}==0.7.11"


def import_spconv() -> ModuleType:
    """``spconv.pytorch``, imported on first use: its import takes about 9 s, which every process that never
    runs the ``spconv`` back-end (fine-tuning, inference, the ``masked`` back-end) is spared.

    Raises:
        ImportError: spconv is not installed or does not import; the message names the build to install.
    """
    with warnings.catch_warnings():  # spconv 2.3.6 decorates with the deprecated torch.cuda.amp.custom_fwd
        warnings.simplefilter("ignore", FutureWarning)
        try:
            import spconv.pytorch
        except ImportError as error:
            install = spconv_install_command(torch.version.cuda)
            raise ImportError(
                f"the 'spconv' sparse back-end needs spconv, which does not import ({error}): {install}, "
                "or choose sparse_backend 'masked' or 'auto' (in a bundle: --sparse_backend masked)"
            ) from error
    # spconv 2.3.6's ``SparseConvTensor.__iadd__`` assigns to the read-only ``features`` property and always
    # raises; the out-of-place add (``x += y`` rebinds ``x``) lets residual blocks written with ``+=`` (MONAI's
    # ResNet) run sparse.
    spconv.pytorch.SparseConvTensor.__iadd__ = spconv.pytorch.SparseConvTensor.__add__
    return spconv.pytorch


def spconv_available() -> bool:
    """Whether the ``spconv`` back-end can run, i.e. :func:`import_spconv` succeeds (the first call imports it)."""
    try:
        import_spconv()
    except ImportError:
        return False
    return True


def is_sparse(x: object) -> bool:
    """Whether ``x`` is a sparse feature map of this back-end (none exists before spconv is imported)."""
    module = sys.modules.get("spconv.pytorch")
    return module is not None and isinstance(x, module.SparseConvTensor)


def to_sparse(x: torch.Tensor, visible: torch.Tensor) -> SparseTensor:
    """Keep the visible positions of a dense ``(B, C, *S)`` map; ``visible`` is ``(B, 1, *S)`` bool."""
    where = visible[:, 0]
    indices = where.nonzero().int().contiguous()  # nonzero() may return column-major strides; spconv assumes rows
    return import_spconv().SparseConvTensor(x.movedim(1, -1)[where], indices, list(x.shape[2:]), x.shape[0])


def to_dense(x: SparseTensor) -> torch.Tensor:
    """Scatter a sparse map back to ``(B, C, *S)`` with zeros at the masked positions."""
    features = x.features
    dense = features.new_zeros(x.batch_size, *x.spatial_shape, features.shape[1])
    dense = dense.index_put(tuple(x.indices.long().T), features)
    return dense.movedim(-1, 1)


def visible_mask(x: SparseTensor) -> torch.Tensor:
    """The ``(B, 1, *S)`` bool mask of the positions ``x`` holds."""
    mask = torch.zeros(x.batch_size, *x.spatial_shape, dtype=torch.bool, device=x.indices.device)
    mask[tuple(x.indices.long().T)] = True
    return mask.unsqueeze(1)


def _cached(x: SparseTensor, key: str, build):
    """Memoise per-map index structures in the map's ``indice_dict`` (shared by all maps of one scale)."""
    if key not in x.indice_dict:
        x.indice_dict[key] = build()
    return x.indice_dict[key]


def downsampled(x: SparseTensor, stride: Sequence[int], out_shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the strided output grid whose stride window holds a visible input.

    With a mask drawn on the coarsest grid this is exactly the mask at the output scale.

    Returns:
        ``(indices (M, 1 + ndim) int32, parent (N,) int64)``: the output positions in lexicographic
        order, and for every input row the output row whose window contains it.
    """

    def build():
        coords = x.indices.long()
        coarse = torch.cat([coords[:, :1], coords[:, 1:] // torch.as_tensor(stride, device=coords.device)], 1)
        sizes = [x.batch_size, *out_shape]
        linear = torch.zeros_like(coarse[:, 0])
        for axis, size in enumerate(sizes):
            linear = linear * size + coarse[:, axis]
        unique, parent = torch.unique(linear, sorted=True, return_inverse=True)
        out = torch.empty(unique.numel(), len(sizes), dtype=torch.long, device=coords.device)
        for axis in reversed(range(len(sizes))):
            out[:, axis] = unique % sizes[axis]
            unique = unique // sizes[axis]
        return out.int(), parent

    return _cached(x, f"down:{tuple(stride)}", build)


def rulebook(
    x: SparseTensor,
    out_indices: torch.Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> Rulebook:
    """For every kernel offset, the (input row, output row) pairs a convolution connects.

    Output position ``o`` reads input ``o * stride - padding + offset * dilation`` (PyTorch's
    convolution arithmetic), when that input is visible.
    """

    def build():
        device = x.indices.device
        lookup = torch.full((x.batch_size, *x.spatial_shape), -1, dtype=torch.long, device=device)
        lookup[tuple(x.indices.long().T)] = torch.arange(x.indices.shape[0], device=device)
        out = out_indices.long()
        batch, origin = out[:, 0], out[:, 1:] * torch.as_tensor(stride, device=device)
        origin = origin - torch.as_tensor(padding, device=device)
        shape = torch.as_tensor(x.spatial_shape, device=device)
        out_rows = torch.arange(out.shape[0], device=device)
        pairs = []
        for offset in itertools.product(*(range(k) for k in kernel_size)):
            pos = origin + torch.as_tensor(offset, device=device) * torch.as_tensor(dilation, device=device)
            inside = ((pos >= 0) & (pos < shape)).all(1)
            rows = lookup[(batch[inside], *pos[inside].T)]
            hit = rows >= 0
            pairs.append((rows[hit], out_rows[inside][hit]))
        return pairs

    key = f"rulebook:{tuple(kernel_size)}:{tuple(stride)}:{tuple(padding)}:{tuple(dilation)}:{out_indices.shape[0]}"
    return _cached(x, key, build)


class _RulebookConv(torch.autograd.Function):
    """``out[o] += in[i] * W_k`` (depth-wise, ``W`` is ``(K, C)``) or ``in[i] @ W_k`` (``W`` is ``(K, C_in, C_out)``).

    Only the input features and the weight are saved; the backward pass gathers again per offset.
    """

    @staticmethod
    def forward(ctx, features, weight, pairs, num_out, depthwise):
        weight_c = weight.to(features.dtype)
        out = features.new_zeros(num_out, weight.shape[-1])
        for k, (rows_in, rows_out) in enumerate(pairs):
            gathered = features[rows_in]
            out.index_add_(0, rows_out, gathered * weight_c[k] if depthwise else gathered @ weight_c[k])
        ctx.save_for_backward(features, weight)
        ctx.pairs, ctx.depthwise = pairs, depthwise
        return out

    @staticmethod
    def backward(ctx, grad_out):
        features, weight = ctx.saved_tensors
        grad_out = grad_out.to(features.dtype)
        weight_c = weight.to(features.dtype)
        grad_features = torch.zeros_like(features) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for k, (rows_in, rows_out) in enumerate(ctx.pairs):
            grad = grad_out[rows_out]
            if grad_features is not None:
                grad_features.index_add_(0, rows_in, grad * weight_c[k] if ctx.depthwise else grad @ weight_c[k].T)
            if grad_weight is not None:
                gathered = features[rows_in]
                grad_weight[k] += ((gathered * grad).sum(0) if ctx.depthwise else gathered.T @ grad).to(weight.dtype)
        return grad_features, grad_weight, None, None, None


def rulebook_conv(x: SparseTensor, conv: torch.nn.modules.conv._ConvNd) -> SparseTensor:
    """A depth-wise or strided convolution of a sparse map, computed on visible positions only."""
    if any(s > 1 for s in conv.stride):
        out_shape = [
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, k, s, p, d in zip(x.spatial_shape, conv.kernel_size, conv.stride, conv.padding, conv.dilation)
        ]
        out_indices, _ = downsampled(x, conv.stride, out_shape)
    else:
        out_shape, out_indices = x.spatial_shape, x.indices
    pairs = rulebook(x, out_indices, conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    depthwise = conv.groups > 1
    # (C_out, C_in / groups, *k) -> (K, C) depth-wise or (K, C_in, C_out) dense.
    kernel = conv.weight.flatten(2).permute(2, 1, 0)
    kernel = kernel[:, 0] if depthwise else kernel
    features = _RulebookConv.apply(x.features, kernel, pairs, out_indices.shape[0], depthwise)
    if conv.bias is not None:
        features = features + conv.bias.to(features.dtype)
    if out_indices is x.indices:
        return x.replace_feature(features)
    return import_spconv().SparseConvTensor(features, out_indices, out_shape, x.batch_size)


_SUBM_OPS: dict[tuple, SparseConvolution] = {}


def submanifold_conv(x: SparseTensor, conv: torch.nn.modules.conv._ConvNd) -> SparseTensor:
    """A stride-1 dense-channel convolution on spconv's submanifold kernels, with ``conv``'s own weights.

    Submanifold = outputs only at the visible inputs, which for a "same"-padded convolution equals the
    dense convolution of the zero-filled map at the visible positions.
    """
    ndim = len(conv.kernel_size)
    same = tuple(d * (k - 1) // 2 for k, d in zip(conv.kernel_size, conv.dilation))
    if tuple(conv.padding) != same or any(k % 2 == 0 for k in conv.kernel_size):
        raise NotImplementedError(f"sparse {type(conv).__name__} needs an odd kernel with 'same' padding, got {conv}")
    spconv = import_spconv()
    from spconv.core import ConvAlgo

    algo = ConvAlgo.Native if x.features.device.type == "cpu" else None
    key = (ndim, conv.in_channels, conv.out_channels, tuple(conv.kernel_size), tuple(conv.dilation), algo)
    if key not in _SUBM_OPS:
        op_class = spconv.SubMConv3d if ndim == 3 else spconv.SubMConv2d
        _SUBM_OPS[key] = op_class(
            conv.in_channels, conv.out_channels, conv.kernel_size, dilation=conv.dilation, bias=False,
            indice_key=f"subm:{tuple(conv.kernel_size)}:{tuple(conv.dilation)}:{algo}", algo=algo,
        )
    # PyTorch's (C_out, C_in, *k) -> spconv's (C_out, *k, C_in).
    weight = conv.weight.permute(0, *range(2, ndim + 2), 1).contiguous().to(x.features.dtype)
    out = _SUBM_OPS[key]._conv_forward(torch.is_grad_enabled(), x, weight, None)
    if conv.bias is not None:
        out = out.replace_feature(out.features + conv.bias.to(out.features.dtype))
    return out


def sparse_conv(x: SparseTensor, conv: torch.nn.modules.conv._ConvNd) -> SparseTensor:
    """Dispatch a convolution of a sparse map to the cheapest exact kernel."""
    pointwise = all(k == 1 for k in conv.kernel_size) and all(s == 1 for s in conv.stride)
    if conv.groups == 1 and pointwise:
        weight = conv.weight.flatten(1).to(x.features.dtype)
        bias = None if conv.bias is None else conv.bias.to(x.features.dtype)
        return x.replace_feature(F.linear(x.features, weight, bias))
    if conv.groups == 1 and all(s == 1 for s in conv.stride):
        return submanifold_conv(x, conv)
    if conv.groups == 1 or conv.groups == conv.in_channels == conv.out_channels:
        return rulebook_conv(x, conv)
    raise NotImplementedError(f"sparse convolution with groups={conv.groups} is not supported: {conv}")


def sparse_max_pool(x: SparseTensor, pool: torch.nn.modules.pooling._MaxPoolNd) -> SparseTensor:
    """Max over the visible positions of each pooling window, at the visible positions of the output scale.

    Windows may overlap and be padded (ResNet's 3x3 stride-2 pooling): the output rows are those of the
    down-sampled mask (:func:`downsampled`), and each takes the maximum of the visible inputs its window
    reaches through the :func:`rulebook`, as the ``masked`` back-end's pooling of a ``-inf``-filled map does.
    """
    ndim = len(x.spatial_shape)
    kernel, stride, padding, dilation = (
        tuple(value) if isinstance(value, Sequence) else (value,) * ndim
        for value in (pool.kernel_size, pool.stride or pool.kernel_size, pool.padding, pool.dilation)
    )
    if pool.ceil_mode:
        raise NotImplementedError(f"sparse max-pooling does not support ceil_mode, got {pool}")
    out_shape = [
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, k, s, p, d in zip(x.spatial_shape, kernel, stride, padding, dilation)
    ]
    out_indices, _ = downsampled(x, stride, out_shape)
    pairs = rulebook(x, out_indices, kernel, stride, padding, dilation)
    rows_in = torch.cat([rows for rows, _ in pairs])
    rows_out = torch.cat([rows for _, rows in pairs])
    features = x.features
    pooled = features.new_empty((out_indices.shape[0], features.shape[1])).scatter_reduce(
        0, rows_out[:, None].expand(-1, features.shape[1]), features[rows_in], reduce="amax", include_self=False
    )
    return import_spconv().SparseConvTensor(pooled, out_indices, out_shape, x.batch_size)


def per_sample_statistics(x: SparseTensor, groups: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-norm statistics of every sample over its visible positions only.

    Returns:
        ``(centered (N, groups, C / groups), inv_std (N, groups, 1))``, broadcast back to the rows.
    """
    features = x.features
    rows, channels = features.shape
    grouped = features.view(rows, groups, channels // groups)
    batch = x.indices[:, 0].long()
    count = torch.bincount(batch, minlength=x.batch_size).clamp_min(1).to(features.dtype) * (channels // groups)
    total = grouped.new_zeros(x.batch_size, groups).index_add_(0, batch, grouped.sum(-1))
    centered = grouped - (total / count[:, None])[batch][..., None]
    squares = grouped.new_zeros(x.batch_size, groups).index_add_(0, batch, centered.square().sum(-1))
    inv_std = torch.rsqrt(squares / count[:, None] + eps)[batch][..., None]
    return centered, inv_std
