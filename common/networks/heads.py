"""The heads of the contrastive methods on pooled features: the MLPs ``Linear - [BatchNorm1d] - ReLU - Linear`` and
SwAV's prototypes."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def projection_mlp(in_features: int, hidden_features: int, out_features: int, batch_norm: bool = True) -> nn.Sequential:
    """A two-layer MLP ``(B, in_features)`` -> ``(B, out_features)``.

    With ``batch_norm``: BYOL's projector and predictor (Grill et al., Sec. 3.3: 4096 hidden, 256 out) and SwAV's
    projection head (Caron et al., official ``projection_head``: 2048 hidden, 128 out). Without: MoCo v2's head
    (Chen et al. 2020: 2048 hidden, 128 out), which replaced MoCo v1's single ``fc``.
    """
    norm = [nn.BatchNorm1d(hidden_features)] if batch_norm else []
    return nn.Sequential(
        nn.Linear(in_features, hidden_features), *norm, nn.ReLU(inplace=True), nn.Linear(hidden_features, out_features)
    )


class SwAVPrototypes(nn.Module):
    """SwAV's ``K`` prototypes ``C`` (Caron et al., NeurIPS 2020): a bias-free linear layer on the unit sphere whose
    weight gets no gradient during the first ``freeze_iterations`` training forwards.

    As in the official code, the prototypes are L2-normalised before every training forward's scores (the same as
    normalising them after every optimizer step); in evaluation they are left as they are. While frozen, the scores
    use the detached weight, so its ``.grad`` stays ``None`` and the optimizer skips it (the official code drops the
    gradient after the backward pass). The module holds no counter: the method counts its training forwards (a buffer
    saved with its checkpoint) and asks :meth:`frozen`. The weight is initialised as ``nn.Linear``'s and saved as
    ``weight``, as ``nn.Linear``'s is.

    Args:
        embedding_dim: the embeddings' width ``D`` (SwAV: 128).
        num_prototypes: ``K`` (the 2D study: 500).
        freeze_iterations: training forwards during which the prototypes get no gradient (SwAV: 313).
    """

    def __init__(self, embedding_dim: int, num_prototypes: int, freeze_iterations: int = 0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_prototypes, embedding_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.freeze_iterations = freeze_iterations

    def frozen(self, iteration: int | torch.Tensor) -> bool:
        """Whether a training forward after ``iteration`` earlier ones leaves the prototypes without gradient."""
        return int(iteration) < self.freeze_iterations

    @torch.no_grad()
    def normalize(self) -> None:
        """Project every prototype back onto the unit sphere (in place)."""
        self.weight.copy_(F.normalize(self.weight, dim=1))

    def forward(self, embeddings: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """
        Args:
            embeddings: ``(N, D)`` L2-normalised embeddings ``z``.
            frozen: score with the detached weight (no gradient into the prototypes); see :meth:`frozen`.

        Returns:
            ``(N, K)`` scores ``z^T C``, the cosine similarities with the prototypes once they are normalised.
        """
        if self.training:
            self.normalize()
        return F.linear(embeddings, self.weight.detach() if frozen else self.weight)
