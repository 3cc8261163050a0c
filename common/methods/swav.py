"""SwAV: swapping assignments between multi-crop views of a 2D slice (Caron et al., NeurIPS 2020).

The contrastive method without pairwise comparisons of the 2D study (Wolf et al. 2023). One step on a batch of
``B`` slices, each with ``G`` global and ``L`` local crops (multi-crop):

0. multi-crop (:func:`~common.transforms.views2d.multi_crop_train_transforms`): 2 global crops of 224 and 6 local
   crops of 96 per slice;
1. every crop goes through the ResNet encoder (pooled, 2048) and the projection head (2048-2048-128, BN, ReLU);
   the embeddings ``z`` are L2-normalised;
2. their scores against ``K`` L2-normalised prototypes ``C`` (:class:`~common.networks.heads.SwAVPrototypes`, a
   bias-free linear layer): ``z^T C``;
3. codes ``q`` of the global crops by Sinkhorn-Knopp (:func:`~common.losses.sinkhorn_knopp`, eq. 3), and the
   swapped prediction of each global crop's codes from every other crop (:class:`~common.losses.SwAVLoss`,
   eq. 1-2).

As in the official code, the prototypes are L2-normalised in every training forward (the same as normalising them
after every optimizer step) and receive no gradient during the first ``freeze_prototypes_iterations`` training
forwards (the official code drops their gradient after the backward pass; here the scores use the detached weight,
so their ``.grad`` stays ``None`` and the optimizer skips them: ``multi_gpu_train.json`` therefore sets
``find_unused_parameters``). The forwards are counted by the method's ``iterations`` buffer, saved with the
checkpoint, so a resumed run keeps the schedule; with gradient accumulation they count micro-batches.

No feature queue: the study trains with batches of 128 and no queue (official code: ``queue_length`` 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.losses import SwAVLoss, embedding_std
from common.networks.heads import SwAVPrototypes, projection_mlp
from common.networks.resnet import ResNetEncoder
from common.transforms.views2d import GLOBAL_VIEWS, LOCAL_VIEWS


class SwAV(nn.Module):
    """SwAV pre-training of a 2D ResNet on multi-crop views.

    Args:
        depth: ResNet depth of :class:`~common.networks.resnet.ResNetEncoder` (50).
        in_channels: image channels (1).
        hidden_features: hidden width of the projection head (2048).
        embedding_dim: output width of the projection head, the prototypes' dimension (128).
        num_prototypes: ``K`` (the study: 500).
        temperature: ``tau`` of the predictions (0.1).
        epsilon: Sinkhorn-Knopp regularisation (0.05).
        sinkhorn_iterations: Sinkhorn-Knopp iterations (3).
        freeze_prototypes_iterations: training forwards during which the prototypes get no gradient (313).

    ``forward({"global_views": (B, G, C, H, W), "local_views": (B, L, C, h, w)})`` (``local_views`` optional,
    ``G + L >= 2``) returns ``loss``, ``loss/swav`` and the collapse checks ``stat/embedding_std`` (per-dimension
    standard deviation over the batch of the L2-normalised embeddings of all crops, averaged over dimensions:
    about ``1/sqrt(embedding_dim)`` when spread, 0 when collapsed), ``stat/prototype_entropy`` (entropy of the
    batch-mean prediction over the prototypes divided by ``log K``: 1 when all prototypes are used evenly, 0 when
    one takes every crop) and ``stat/prototypes_frozen`` (1 while frozen).
    """

    def __init__(
        self,
        depth: int = 50,
        in_channels: int = 1,
        hidden_features: int = 2048,
        embedding_dim: int = 128,
        num_prototypes: int = 500,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        freeze_prototypes_iterations: int = 313,
    ) -> None:
        super().__init__()
        self.encoder = ResNetEncoder(depth=depth, spatial_dims=2, in_channels=in_channels)
        self.projector = projection_mlp(self.encoder.feature_channels[-1], hidden_features, embedding_dim)
        self.prototypes = SwAVPrototypes(embedding_dim, num_prototypes, freeze_prototypes_iterations)
        self.swav = SwAVLoss(temperature, epsilon, sinkhorn_iterations)
        self.register_buffer("iterations", torch.zeros((), dtype=torch.long))

    def embed(self, views: torch.Tensor) -> torch.Tensor:
        """``(B, n, C, H, W)`` crops of one size -> pooled encoder features ``(B, n, 2048)``, one encoder pass."""
        return self.encoder.pooled(views.flatten(0, 1)).unflatten(0, views.shape[:2])

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        global_views = batch[GLOBAL_VIEWS]
        crops = [global_views] + ([batch[LOCAL_VIEWS]] if batch.get(LOCAL_VIEWS) is not None else [])
        frozen = self.training and self.prototypes.frozen(self.iterations)
        if self.training:
            self.iterations += 1
        features = torch.cat([self.embed(views) for views in crops], dim=1)  # (B, V, 2048)
        embeddings = F.normalize(self.projector(features.flatten(0, 1)), dim=-1)  # (B * V, D)
        scores = self.prototypes(embeddings, frozen).unflatten(0, features.shape[:2])  # (B, V, K)
        loss = self.swav(scores, assigned_views=global_views.shape[1])
        with torch.no_grad():
            mean_prediction = F.softmax(scores.float() / self.swav.temperature, dim=-1).flatten(0, 1).mean(dim=0)
            entropy = -(mean_prediction * mean_prediction.clamp_min(1e-12).log()).sum() / math.log(scores.shape[-1])
        return {
            "loss": loss,
            "loss/swav": loss.detach(),
            "stat/embedding_std": embedding_std(embeddings),
            "stat/prototype_entropy": entropy,
            "stat/prototypes_frozen": float(frozen),
        }
