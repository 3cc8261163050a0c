"""BYOL: bootstrap your own latent, on 2D slices (Grill et al., NeurIPS 2020).

One of the contrastive methods of the 2D study (Wolf et al. 2023), without negatives. One step on a batch of
``B`` slices, each with two augmented views (:func:`common.transforms.views2d.two_view_train_transforms`):

1. the online network, encoder ``f`` (ResNet-50, pooled 2048), projector ``g`` (2048-4096-256) and predictor
   ``q`` (256-4096-256), both MLPs ``Linear - BN - ReLU - Linear``, predicts ``p = q(g(f(v)))`` of each view;
2. the target network, encoder and projector as exponential moving averages of the online ones
   (Sec. 3.1, ``xi <- tau xi + (1 - tau) theta``, ``tau`` from 0.996 to 1 on a cosine, by
   :meth:`BYOL.update_teacher` through :class:`common.engine.MomentumTeacher`), projects the other view,
   ``z' = g'(f'(v'))``, without gradient;
3. the symmetrised normalised regression of each prediction onto the other view's target projection
   (:class:`~common.losses.BYOLLoss`, Eq. 2 and 4).

Each view goes through the networks as its own batch, as in the study's official code (PyTorch Lightning Bolts),
so BatchNorm statistics are per view. Only the parameters are averaged; the target's BatchNorm statistics are its
own, as in the official code.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from common.losses import BYOLLoss, embedding_std
from common.methods.momentum import momentum_update
from common.networks.heads import projection_mlp
from common.networks.resnet import ResNetEncoder
from common.transforms.views2d import VIEWS

class BYOL(nn.Module):
    """BYOL pre-training of a 2D ResNet on pairs of views.

    Args:
        depth: ResNet depth of :class:`~common.networks.resnet.ResNetEncoder` (50).
        in_channels: image channels (1).
        hidden_features: hidden width of the projector and the predictor (4096).
        projection_dim: output width of the projector and the predictor (256).

    ``forward({"views": (B, 2, C, H, W)})`` returns ``loss`` (symmetrised, in [0, 8]), ``loss/regression_12`` and
    ``loss/regression_21`` (``2 - 2 cos`` of view 1's prediction to view 2's target, and back, batch means) and
    the statistics ``stat/embedding_std`` (:func:`~common.losses.embedding_std` of the online projections: 0 when
    collapsed, about ``1/sqrt(projection_dim)`` = 0.0625 when spread) and ``stat/positive_similarity`` (mean
    cosine of predictions and targets).
    """

    def __init__(
        self, depth: int = 50, in_channels: int = 1, hidden_features: int = 4096, projection_dim: int = 256
    ) -> None:
        super().__init__()
        self.encoder = ResNetEncoder(depth=depth, spatial_dims=2, in_channels=in_channels)
        self.projector = projection_mlp(self.encoder.feature_channels[-1], hidden_features, projection_dim)
        self.predictor = projection_mlp(projection_dim, hidden_features, projection_dim)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.byol = BYOLLoss()

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """``xi <- tau xi + (1 - tau) theta`` for the target encoder and projector (Sec. 3.1)."""
        momentum_update((self.target_encoder, self.target_projector), (self.encoder, self.projector), momentum)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        views = batch[VIEWS]
        if views.dim() != 5 or views.shape[1] != 2:
            raise ValueError(f"BYOL expects '{VIEWS}' of shape (B, 2, C, H, W), got {tuple(views.shape)}")
        projections = [self.projector(self.encoder.pooled(views[:, i])) for i in range(2)]
        predictions = [self.predictor(z) for z in projections]
        with torch.no_grad():
            targets = [self.target_projector(self.target_encoder.pooled(views[:, i])) for i in range(2)]
        loss = self.byol(predictions, targets)
        with torch.no_grad():
            regression_12 = self.byol.regression(predictions[0], targets[1]).mean()
            regression_21 = self.byol.regression(predictions[1], targets[0]).mean()
        return {
            "loss": loss,
            "loss/regression_12": regression_12,
            "loss/regression_21": regression_21,
            "stat/embedding_std": embedding_std(torch.cat(projections)),
            "stat/positive_similarity": 1 - loss.detach() / 4,
        }
