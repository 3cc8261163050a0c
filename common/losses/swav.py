"""SwAV: Sinkhorn-Knopp codes and the swapped prediction between multi-crop views."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.losses.distributed import all_reduced


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """SwAV's codes: a soft, equipartitioned assignment of a batch to the prototypes (Caron et al., NeurIPS 2020).

    Eq. 3 and Appendix A.1: ``Q = exp(C^T Z / epsilon)`` (prototypes x samples) is scaled towards the
    transportation polytope (each prototype holding ``1/K`` of the mass, each sample ``1/B``) by alternating
    normalisations, ``iterations`` times: every prototype row to the same total, then every sample column to the
    same total. Uniform constants cancel between the steps, so the rows are scaled to 1 and the columns to 1: the
    returned codes sum to 1 per sample, and each prototype holds about ``B / K`` of the batch (exactly before the
    last sample step). Under ``torch.distributed`` the prototype totals run over the global batch, as the
    official ``distributed_sinkhorn``; single-process otherwise. Computed in float32 without gradient; the
    scores' maximum (over all processes) is subtracted before the exponential, a constant factor that the first
    normalisation removes, so a small ``epsilon`` cannot overflow.

    Args:
        scores: ``(B, K)``, ``C^T z`` of every sample: cosine similarities of the L2-normalised embeddings with the
            L2-normalised prototypes.
        epsilon: entropy regularisation (0.05); smaller gives sharper codes.
        iterations: Sinkhorn-Knopp iterations (3).

    Returns:
        ``(B, K)`` codes ``q``, rows summing to 1.
    """
    if scores.dim() != 2:
        raise ValueError(f"sinkhorn_knopp expects scores of shape (B, K), got {tuple(scores.shape)}")
    scores = scores.float()
    global_max = all_reduced(scores.max(), op="MAX")
    codes = torch.exp((scores - global_max) / epsilon).t()  # (K, B)
    for _ in range(iterations):
        codes /= all_reduced(codes.sum(dim=1, keepdim=True))
        codes /= codes.sum(dim=0, keepdim=True)
    return codes.t()


class SwAVLoss(nn.Module):
    """SwAV's swapped prediction (Caron et al., NeurIPS 2020, eq. 1-2) over multi-crop views.

    For every view ``s`` used for assignment (the global views), the codes ``q_s`` of its scores
    (:func:`sinkhorn_knopp`, no gradient) are predicted from every other view ``t`` by
    ``p_t = softmax(z_t^T C / tau)``: ``l(z_t, q_s) = -sum_k q_s^(k) log p_t^(k)`` (eq. 2). As in the official code
    the terms are averaged over the batch, over the ``V - 1`` predicting views of each assigned view, then over the
    assigned views: ``L = 1/|S| sum_s 1/(V-1) sum_{t != s} mean_b l(z_t, q_s)``.

    Args:
        temperature: ``tau`` of the predictions (0.1).
        epsilon: ``epsilon`` of :func:`sinkhorn_knopp` (0.05).
        sinkhorn_iterations: iterations of :func:`sinkhorn_knopp` (3).
    """

    def __init__(self, temperature: float = 0.1, epsilon: float = 0.05, sinkhorn_iterations: int = 3) -> None:
        super().__init__()
        if temperature <= 0 or epsilon <= 0:
            raise ValueError(f"temperature and epsilon must be positive, got {temperature}, {epsilon}")
        if sinkhorn_iterations < 1:
            raise ValueError(f"sinkhorn_iterations must be a positive integer, got {sinkhorn_iterations!r}")
        self.temperature = temperature
        self.epsilon = epsilon
        self.sinkhorn_iterations = sinkhorn_iterations

    def forward(self, scores: torch.Tensor, assigned_views: int = 2) -> torch.Tensor:
        """
        Args:
            scores: ``(B, V, K)``, prototype scores ``z^T C`` of ``V`` views of each of ``B`` images, the views
                used for assignment first (SwAV: the 2 global crops, then the local crops).
            assigned_views: how many leading views get codes (``crops_for_assign``: 2).

        Returns:
            ``()``, the swapped-prediction loss ``L`` (eq. 1-2) averaged as above, in float32.
        """
        num_views = scores.shape[1]
        if not 1 <= assigned_views <= num_views or num_views < 2:
            raise ValueError(
                f"SwAVLoss needs at least 2 views and 1 <= assigned_views <= views; got {num_views} views, "
                f"assigned_views={assigned_views}"
            )
        log_predictions = F.log_softmax(scores.float() / self.temperature, dim=-1)  # (B, V, K)
        loss = scores.new_zeros((), dtype=torch.float32)
        for view in range(assigned_views):
            codes = sinkhorn_knopp(scores[:, view].detach(), self.epsilon, self.sinkhorn_iterations)  # (B, K)
            others = torch.cat([log_predictions[:, :view], log_predictions[:, view + 1 :]], dim=1)
            loss = loss - torch.einsum("bk,btk->bt", codes, others).mean()
        return loss / assigned_views
