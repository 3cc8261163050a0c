"""MoCo v2: momentum contrast with a queue of negative keys, on 2D slices (He et al., CVPR 2020; Chen et al. 2020).

One of the contrastive methods of the 2D study (Wolf et al. 2023). One step on a batch of ``B`` slices, each with
two augmented views (:func:`common.transforms.views2d.two_view_train_transforms`):

1. the query encoder (ResNet-50, pooled 2048) and its MLP head (2048-2048-128, ReLU; MoCo v2's "MLP head") embed
   view 1 into L2-normalised queries ``q``;
2. the key encoder and head, momentum copies of the query ones (Eq. 2, ``theta_k <- m theta_k + (1 - m) theta_q``,
   ``m = 0.999``, by :meth:`MoCoV2.update_teacher` through :class:`common.engine.MomentumTeacher`), embed view 2
   into keys ``k`` without gradient;
3. InfoNCE of each query against its key and the ``K`` keys of earlier batches in the queue
   (:class:`~common.losses.InfoNCELoss`, Eq. 1, ``tau = 0.2``); then the batch's keys replace the oldest in the
   queue (:class:`KeyQueue`).

Only the parameters are averaged; the key encoder's BatchNorm statistics are its own (as in MoCo's code).
Under ``torch.distributed`` the queue receives the keys of all processes, so it stays the same everywhere. MoCo's
shuffling BN (keys computed on a batch permuted across GPUs, so BatchNorm cannot leak which sample is the
positive) is not implemented: within one process it does nothing, and the study's official code ran on one GPU.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from common.losses import InfoNCELoss, embedding_std
from common.methods.momentum import momentum_update
from common.networks.heads import projection_mlp
from common.networks.resnet import ResNetEncoder
from common.transforms.views2d import VIEWS

def gathered(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` of every process concatenated along dim 0 when ``torch.distributed`` is initialised, else itself.
    No gradient (``all_gather``)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class KeyQueue(nn.Module):
    """MoCo's dictionary: a first-in first-out queue of ``size`` L2-normalised keys of width ``dim``.

    Starts with random unit vectors (as MoCo's code); :meth:`push` writes a batch of keys over the oldest ones,
    at a pointer that wraps around. Keys and pointer are buffers: they are saved with the checkpoint.

    Args:
        size: ``K``, the number of negative keys (MoCo: 65536).
        dim: the key width (128).
    """

    def __init__(self, size: int = 65536, dim: int = 128) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"KeyQueue size must be a positive integer, got {size!r}")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        """Enqueue ``keys`` ``(N, dim)`` (all processes' under ``torch.distributed``), dequeueing the oldest ``N``.
        ``N > size`` keeps the newest ``size``."""
        keys = gathered(keys.detach()).to(self.keys.dtype)[-len(self.keys) :]
        index = (self.pointer + torch.arange(len(keys), device=self.keys.device)) % len(self.keys)
        self.keys[index] = keys
        self.pointer.copy_((self.pointer + len(keys)) % len(self.keys))


class MoCoV2(nn.Module):
    """MoCo v2 pre-training of a 2D ResNet on pairs of views.

    Args:
        depth: ResNet depth of :class:`~common.networks.resnet.ResNetEncoder` (50).
        in_channels: image channels (1).
        hidden_features: hidden width of the MLP head (2048).
        embedding_dim: key / query width (128).
        queue_size: ``K``, negative keys in the queue (65536).
        temperature: ``tau`` of InfoNCE (MoCo v2: 0.2).

    ``forward({"views": (B, 2, C, H, W)})`` returns ``loss``, ``loss/infonce`` and the statistics
    ``stat/embedding_std`` (:func:`~common.losses.embedding_std` of the queries: 0 when collapsed, about
    ``1/sqrt(embedding_dim)`` = 0.088 when spread), ``stat/positive_similarity`` (mean ``q.k+``),
    ``stat/negative_similarity`` (mean ``q.k_i`` over the queue) and ``stat/key_accuracy`` (fraction of queries
    whose positive key scores above every negative). In training mode the keys then enter the queue.
    """

    def __init__(
        self,
        depth: int = 50,
        in_channels: int = 1,
        hidden_features: int = 2048,
        embedding_dim: int = 128,
        queue_size: int = 65536,
        temperature: float = 0.2,
    ) -> None:
        super().__init__()
        self.encoder = ResNetEncoder(depth=depth, spatial_dims=2, in_channels=in_channels)
        self.projector = projection_mlp(self.encoder.feature_channels[-1], hidden_features, embedding_dim, batch_norm=False)
        self.key_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.queue = KeyQueue(queue_size, embedding_dim)
        self.infonce = InfoNCELoss(temperature)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """``theta_k <- m theta_k + (1 - m) theta_q`` for the key encoder and head (Eq. 2)."""
        momentum_update((self.key_encoder, self.key_projector), (self.encoder, self.projector), momentum)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        views = batch[VIEWS]
        if views.dim() != 5 or views.shape[1] != 2:
            raise ValueError(f"MoCoV2 expects '{VIEWS}' of shape (B, 2, C, H, W), got {tuple(views.shape)}")
        queries = F.normalize(self.projector(self.encoder.pooled(views[:, 0])), dim=1)
        with torch.no_grad():
            keys = F.normalize(self.key_projector(self.key_encoder.pooled(views[:, 1])), dim=1)
        negatives = self.queue.keys.clone()  # the backward pass needs them after the queue has moved on
        loss = self.infonce(queries, keys, negatives)
        with torch.no_grad():
            similarity = self.infonce.logits(queries, keys, negatives) * self.infonce.temperature
            accuracy = (similarity.argmax(dim=1) == 0).float().mean()
        if self.training:
            self.queue.push(keys)
        return {
            "loss": loss,
            "loss/infonce": loss.detach(),
            "stat/embedding_std": embedding_std(queries),
            "stat/positive_similarity": similarity[:, 0].mean(),
            "stat/negative_similarity": similarity[:, 1:].mean(),
            "stat/key_accuracy": accuracy,
        }
