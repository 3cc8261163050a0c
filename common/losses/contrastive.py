"""Contrastive losses: a query must pick its positive among negatives (MoCo's InfoNCE, MiM's cross-level loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class InfoNCELoss(nn.Module):
    """MoCo's InfoNCE with a queue of negative keys (He et al., CVPR 2020, Eq. 1; MoCo v2, Chen et al. 2020).

    For each query ``q`` with its positive key ``k+`` (the other view of the same image, from the momentum
    encoder) and the ``K`` keys ``k_i`` of the queue (earlier batches), all L2-normalised:
    ``L_q = -log( exp(q.k+ / tau) / (exp(q.k+ / tau) + sum_i exp(q.k_i / tau)) )``, i.e. cross entropy of the
    logits ``[q.k+, q.k_1, ..., q.k_K] / tau`` to class 0, averaged over the batch. The queries and keys are
    normalised here (the queue is stored normalised); no gradient flows into the keys or the queue.
    (MiM's :class:`CrossLevelContrastiveLoss` is the same cross entropy with per-sample negatives, no queue.)

    Args:
        temperature: ``tau`` (MoCo v2: 0.2).
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def logits(self, query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        """``(B, 1 + K)`` logits ``[q.k+, q.queue] / tau``; column 0 is the positive."""
        query = F.normalize(query.float(), dim=-1)
        key = F.normalize(key.detach().float(), dim=-1)
        positive = (query * key).sum(dim=-1, keepdim=True)
        negatives = query @ queue.detach().float().T
        return torch.cat([positive, negatives], dim=1) / self.temperature

    def forward(self, query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        """
        Args:
            query: ``(B, D)`` query embeddings (with gradient).
            key: ``(B, D)`` positive keys of the same images from the momentum encoder.
            queue: ``(K, D)`` L2-normalised negative keys.

        Returns:
            ``()``, ``L_q`` (Eq. 1) averaged over the batch, in float32.
        """
        logits = self.logits(query, key, queue)
        return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


class CrossLevelContrastiveLoss(nn.Module):
    """MiM's cross-level alignment L_C (Zhuang et al., MiM, eq. 4-6): each finer volume's context vector must
    pick, among the regions of the coarser volume it was drawn from, the region it came from.

    ``infonce`` (eq. 4-6): ``-log( exp(cos(c_j, r_{k_j}) / tau) / sum_k exp(cos(c_j, r_k) / tau) )``, averaged
    over the finer volumes ``j``, with ``r_k`` the coarser volume's region features and ``k_j`` the region ``j``
    was drawn from (the positive; the other regions of the same coarser volume are the negatives).
    ``byol`` (the paper's ablation): ``2 - 2 cos(c_j, r_{k_j})``, positives only.

    Args:
        temperature: ``tau`` of ``infonce``.
        kind: ``infonce`` or ``byol``.
    """

    KINDS = ("infonce", "byol")

    def __init__(self, temperature: float = 0.2, kind: str = "infonce") -> None:
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"unknown contrastive loss {kind!r}; choose one of {self.KINDS}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.kind = kind

    def forward(self, context: torch.Tensor, regions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """
        Args:
            context: ``(N, G, D)``, the context vectors of the ``G`` finer volumes of each of ``N`` coarser ones.
            regions: ``(N, R, D)``, the features of the ``R`` regions of each coarser volume.
            labels: ``(N, G)`` long, the region each finer volume was drawn from.

        Returns:
            ``()``, ``L_C`` averaged over the ``N * G`` finer volumes: the cross entropy of eq. 4-6 (``infonce``)
            or ``2 - 2 cos`` to the positive region (``byol``), in float32.
        """
        context, regions = F.normalize(context.float(), dim=-1), F.normalize(regions.float(), dim=-1)
        similarity = torch.einsum("ngd,nrd->ngr", context, regions)
        if self.kind == "byol":
            return (2 - 2 * similarity.gather(-1, labels[..., None])).mean()
        return F.cross_entropy((similarity / self.temperature).flatten(0, 1), labels.flatten())
