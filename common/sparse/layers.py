"""Sparse-aware layers: subclasses of PyTorch's layers that add no parameters and no buffers.

Each layer accepts three kinds of input:

* a dense tensor outside :func:`~common.sparse.context.visible_region`: exactly the dense parent;
* a dense tensor inside it (``masked`` back-end): the dense operation, with statistics taken over the
  visible positions only and the masked positions zeroed afterwards;
* a :class:`spconv.pytorch.SparseConvTensor` (``spconv`` back-end): computed on visible positions only.

Because the parameters are the parent's, :func:`~common.sparse.convert.sparsify` can turn a dense
network into a sparse one in place and its state dict loads unchanged into the dense network.
"""

from __future__ import annotations

import torch
from torch import nn

from common.layers import ChannelsFirstLayerNorm, depthwise_conv_input
from common.sparse.context import remask, visible_like
from common.sparse.spconv_ops import is_sparse, per_sample_statistics, sparse_conv, sparse_max_pool


class SparseLayer:
    """The back-end dispatch shared by every sparse layer; a layer says what it does per back-end.

    ``forward(x)`` calls one of

    * ``forward_sparse(x)`` for a :class:`spconv.pytorch.SparseConvTensor` (``spconv`` back-end);
    * :meth:`forward_dense` for a dense tensor with no active mask at its size: the dense parent's ``forward``;
    * ``forward_masked(x, mask)`` for a dense ``(B, C, *S)`` tensor inside
      :func:`~common.sparse.context.visible_region` (``masked`` back-end), with ``mask`` ``(B, 1, *S)`` bool.

    Listed before the PyTorch layer in the bases, so ``super()`` here is that layer.
    """

    def forward(self, x):
        if is_sparse(x):
            return self.forward_sparse(x)
        mask = visible_like(x)
        if mask is None:
            return self.forward_dense(x)
        return self.forward_masked(x, mask)

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)


class _SparseConv(SparseLayer):
    def forward_sparse(self, x):
        return sparse_conv(x, self)

    def forward_masked(self, x, mask):
        return remask(self.forward_dense(depthwise_conv_input(x, self)))


class SparseConv2d(_SparseConv, nn.Conv2d):
    """:class:`torch.nn.Conv2d` on visible positions."""


class SparseConv3d(_SparseConv, nn.Conv3d):
    """:class:`torch.nn.Conv3d` on visible positions (depth-wise and strided included)."""


class _SparseMaxPool(SparseLayer):
    def forward_sparse(self, x):
        return sparse_max_pool(x, self)

    def forward_masked(self, x, mask):
        pooled = self.forward_dense(x.masked_fill(~mask, float("-inf")))
        return torch.where(visible_like(pooled), pooled, 0.0)


class SparseMaxPool2d(_SparseMaxPool, nn.MaxPool2d):
    """:class:`torch.nn.MaxPool2d` over visible positions."""


class SparseMaxPool3d(_SparseMaxPool, nn.MaxPool3d):
    """:class:`torch.nn.MaxPool3d` over visible positions."""


def _on_visible_rows(x: torch.Tensor, mask: torch.Tensor, fn) -> torch.Tensor:
    """Apply ``fn`` to the ``(N, C)`` rows of the visible positions of a dense map; zeros elsewhere."""
    channels_last = x.movedim(1, -1)
    where = mask[:, 0]
    out = torch.zeros_like(channels_last).index_put((where,), fn(channels_last[where]))
    return out.movedim(-1, 1)


class _SparseBatchNorm(SparseLayer):
    """Batch statistics (and running statistics) over the visible positions of the whole batch."""

    def _check_input_dim(self, input):
        if input.dim() != 2:  # the (N, C) rows of the visible positions
            super()._check_input_dim(input)

    def forward_sparse(self, x):
        return x.replace_feature(self.forward_dense(x.features))

    def forward_masked(self, x, mask):
        return _on_visible_rows(x, mask, self.forward_dense)


class SparseBatchNorm2d(_SparseBatchNorm, nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` with statistics over visible positions."""


class SparseBatchNorm3d(_SparseBatchNorm, nn.BatchNorm3d):
    """:class:`torch.nn.BatchNorm3d` with statistics over visible positions."""


class SparseSyncBatchNorm(_SparseBatchNorm, nn.SyncBatchNorm):
    """:class:`torch.nn.SyncBatchNorm` with statistics over visible positions."""


def _masked_group_norm(x: torch.Tensor, mask: torch.Tensor, groups: int, eps: float) -> torch.Tensor:
    """Per-sample, per-group normalisation of a dense map with statistics over ``mask`` only."""
    batch, channels = x.shape[:2]
    grouped = x.reshape(batch, groups, channels // groups, -1)
    weights = mask.reshape(batch, 1, 1, -1).to(x.dtype)
    count = weights.sum((2, 3), keepdim=True).clamp_min(1) * (channels // groups)
    mean = (grouped * weights).sum((2, 3), keepdim=True) / count
    var = ((grouped - mean).square() * weights).sum((2, 3), keepdim=True) / count
    return ((grouped - mean) * torch.rsqrt(var + eps)).reshape(x.shape)


def _affine(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, channel_dim: int) -> torch.Tensor:
    if weight is None:
        return x
    shape = [1] * x.dim()
    shape[channel_dim] = -1
    return x * weight.view(shape) + bias.view(shape)


class _SparseGroupStatistics(SparseLayer):
    """Per-sample statistics over the visible positions of each of the ``statistics_groups`` channel groups, then the affine."""

    def forward_sparse(self, x):
        centered, inv_std = per_sample_statistics(x, self.statistics_groups, self.eps)
        normed = (centered * inv_std).reshape(x.features.shape)
        return x.replace_feature(_affine(normed, self.weight, self.bias, 1))

    def forward_masked(self, x, mask):
        normed = _masked_group_norm(x, mask, self.statistics_groups, self.eps)
        return _affine(normed, self.weight, self.bias, 1) * mask


class SparseGroupNorm(_SparseGroupStatistics, nn.GroupNorm):
    """:class:`torch.nn.GroupNorm` whose per-sample statistics use visible positions only.

    MedNeXt normalises with ``GroupNorm(C, C)``, i.e. per-channel instance statistics; masked positions
    would otherwise pull every mean towards zero.
    """

    @property
    def statistics_groups(self) -> int:
        return self.num_groups


class _SparseInstanceNorm(_SparseGroupStatistics):
    """Instance statistics over visible positions (no running statistics in the sparse modes)."""

    @property
    def statistics_groups(self) -> int:
        return self.num_features

    def forward_sparse(self, x):
        self._check_no_running_stats()
        return super().forward_sparse(x)

    def forward_masked(self, x, mask):
        self._check_no_running_stats()
        return super().forward_masked(x, mask)

    def _check_no_running_stats(self) -> None:
        if self.track_running_stats:
            raise NotImplementedError("sparse InstanceNorm with running statistics is not supported")


class SparseInstanceNorm2d(_SparseInstanceNorm, nn.InstanceNorm2d):
    """:class:`torch.nn.InstanceNorm2d` over visible positions."""


class SparseInstanceNorm3d(_SparseInstanceNorm, nn.InstanceNorm3d):
    """:class:`torch.nn.InstanceNorm3d` over visible positions."""


class SparseChannelsFirstLayerNorm(SparseLayer, ChannelsFirstLayerNorm):
    """:class:`~common.layers.ChannelsFirstLayerNorm`: per position, so only re-masking is needed."""

    def forward_sparse(self, x):
        return x.replace_feature(nn.functional.layer_norm(x.features, self.normalized_shape, self.weight, self.bias, self.eps))

    def forward_masked(self, x, mask):
        return self.forward_dense(x) * mask


class _SparsePointwise(SparseLayer):
    """Element-wise layers that keep zeros at zero (activations, dropout): applied to the stored features only."""

    def forward_sparse(self, x):
        return x.replace_feature(self.forward_dense(x.features))

    def forward_masked(self, x, mask):
        return self.forward_dense(x)


class SparseGELU(_SparsePointwise, nn.GELU):
    """:class:`torch.nn.GELU` on visible positions."""


class SparseReLU(_SparsePointwise, nn.ReLU):
    """:class:`torch.nn.ReLU` on visible positions."""


class SparseLeakyReLU(_SparsePointwise, nn.LeakyReLU):
    """:class:`torch.nn.LeakyReLU` on visible positions."""


class SparseDropout(_SparsePointwise, nn.Dropout):
    """:class:`torch.nn.Dropout` on visible positions."""
