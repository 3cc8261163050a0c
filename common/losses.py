"""Losses of the self-supervised methods; each class cites the equation it implements."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, C, *S)`` -> ``(B, L, p^d * C)``: one row per ``patch_size``-sided patch, cells in raster order."""
    if x.dim() == 5:
        return rearrange(x, "b c (d p) (h q) (w r) -> b (d h w) (p q r c)", p=patch_size, q=patch_size, r=patch_size)
    return rearrange(x, "b c (h q) (w r) -> b (h w) (q r c)", q=patch_size, r=patch_size)


def unpatchify(patches: torch.Tensor, patch_size: int, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`patchify` for a map shaped like ``like``."""
    grid = [s // patch_size for s in like.shape[2:]]
    if like.dim() == 5:
        return rearrange(
            patches, "b (d h w) (p q r c) -> b c (d p) (h q) (w r)",
            d=grid[0], h=grid[1], w=grid[2], p=patch_size, q=patch_size, r=patch_size,
        )
    return rearrange(patches, "b (h w) (q r c) -> b c (h q) (w r)", h=grid[0], w=grid[1], q=patch_size, r=patch_size)


class MaskedPatchReconstructionLoss(nn.Module):
    """Mean squared error on per-patch normalised voxels, over the masked patches only.

    SparK (Tian et al., ICLR 2023, Sec. 3.4) and MAE (He et al., CVPR 2022, "normalized pixels"):
    for every patch ``p`` with voxels ``x_p``, target ``t_p = (x_p - mean(x_p)) / sqrt(var(x_p) + eps)``
    and ``L = sum_{p masked} mean_v (y_pv - t_pv)^2 / #masked``. ``var`` is the unbiased variance, as in
    both official codes.

    Args:
        patch_size: side of a patch in voxels (the encoder's total down-sampling, 16 for HySparK).
        eps: added to the variance (1e-6).
    """

    def __init__(self, patch_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.eps = eps

    def normalized_target(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(target (B, L, P), mean (B, L, 1), std (B, L, 1))`` of the patches of ``image``."""
        patches = patchify(image, self.patch_size)
        mean = patches.mean(dim=-1, keepdim=True)
        std = (patches.var(dim=-1, keepdim=True) + self.eps).sqrt()
        return (patches - mean) / std, mean, std

    def forward(self, prediction: torch.Tensor, image: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """
        Args:
            prediction: ``(B, C, *S)``, the decoder output.
            image: ``(B, C, *S)``, the unmasked input.
            visible: ``(B, 1, *grid)`` bool, ``True`` = visible patch; ``grid = S / patch_size``.
        """
        target, _, _ = self.normalized_target(image)
        per_patch = (patchify(prediction, self.patch_size).float() - target).square().mean(dim=-1)
        masked = (~visible).flatten(1).to(per_patch.dtype)
        return (per_patch * masked).sum() / masked.sum().clamp_min(1)


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
        """
        context, regions = F.normalize(context.float(), dim=-1), F.normalize(regions.float(), dim=-1)
        similarity = torch.einsum("ngd,nrd->ngr", context, regions)
        if self.kind == "byol":
            return (2 - 2 * similarity.gather(-1, labels[..., None])).mean()
        return F.cross_entropy((similarity / self.temperature).flatten(0, 1), labels.flatten())


class GlobalGuidedConsistencyLoss(nn.Module):
    """GL-MAE's global-guided consistency (Zhuang et al., GL-MAE, eq. 8-10): the student's projected class
    embedding of a masked view must predict the momentum teacher's of a complete global view.

    With teacher logits ``t`` and student logits ``s`` (``K`` = projection width),
    ``P_t = softmax((t - c) / tau_t)``, ``P_s = softmax(s / tau_s)`` and ``H(P_t, P_s) = -sum_k P_t log P_s``,
    averaged over every (student view, teacher view) pair of the same volume: global-to-global when the student
    views are the masked global views, global-to-local when they are the masked local views. The teacher side
    is centred by ``c``, an exponential moving average of the teacher logits (DINO, Caron et al., ICCV 2021,
    Sec. 3.1), and sharpened by ``tau_t < tau_s``; GL-MAE does not give these values, the defaults are DINO's.

    Args:
        num_prototypes: ``K`` (GL-MAE: 512).
        student_temperature: ``tau_s`` (0.1).
        teacher_temperature: ``tau_t`` (0.04).
        center_momentum: momentum of ``c`` (0.9); 1 keeps ``c = 0`` (no centring).
    """

    def __init__(
        self,
        num_prototypes: int = 512,
        student_temperature: float = 0.1,
        teacher_temperature: float = 0.04,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if student_temperature <= 0 or teacher_temperature <= 0:
            raise ValueError(f"temperatures must be positive, got {student_temperature}, {teacher_temperature}")
        if not 0 <= center_momentum <= 1:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, num_prototypes))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """
        Args:
            student: ``(B, S, K)`` logits of ``S`` masked views of each of ``B`` volumes.
            teacher: ``(B, T, K)`` logits of the ``T`` complete global views of the same volumes (no gradient).
        """
        target = F.softmax((teacher.float() - self.center) / self.teacher_temperature, dim=-1)
        log_prediction = F.log_softmax(student.float() / self.student_temperature, dim=-1)
        return -torch.einsum("btk,bsk->bst", target, log_prediction).mean()

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        """``c <- m c + (1 - m) mean(teacher)`` over the batch and views (DINO eq. 4), the mean taken over every
        process's batch under DDP, as DINO does; call once per step."""
        mean = teacher.float().flatten(0, -2).mean(dim=0, keepdim=True)
        if dist.is_available() and dist.is_initialized():
            mean = _all_reduced(mean) / dist.get_world_size()
        self.center.mul_(self.center_momentum).add_(mean, alpha=1 - self.center_momentum)


def _all_reduced(tensor: torch.Tensor, op: str = "SUM") -> torch.Tensor:
    """``tensor`` reduced in place (``op``: a ``torch.distributed.ReduceOp`` name) over the processes of the default
    group when one is initialised (DDP), else ``tensor`` itself."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=getattr(dist.ReduceOp, op))
    return tensor


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
    global_max = _all_reduced(scores.max(), op="MAX")
    codes = torch.exp((scores - global_max) / epsilon).t()  # (K, B)
    for _ in range(iterations):
        codes /= _all_reduced(codes.sum(dim=1, keepdim=True))
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
        """
        logits = self.logits(query, key, queue)
        return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


class BYOLLoss(nn.Module):
    """BYOL's normalised regression, symmetrised (Grill et al., NeurIPS 2020, Eq. 2 and 4).

    ``L(p, z) = ||p / ||p|| - z / ||z|| ||^2 = 2 - 2 cos(p, z)`` between the online prediction ``p`` of one view
    and the target projection ``z`` of the other (no gradient into ``z``), summed over both directions:
    ``L_total = mean_b [L(p1, z2) + L(p2, z1)]``, in [0, 8]. (The study's official code logs
    ``-2 cos(p1, z2) - 2 cos(p2, z1)``: the same gradient, shifted by 4.)
    """

    @staticmethod
    def regression(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``2 - 2 cos(p, z)`` per sample: ``(B, D), (B, D) -> (B,)``."""
        return 2 - 2 * F.cosine_similarity(prediction.float(), target.detach().float(), dim=-1)

    def forward(
        self, predictions: tuple[torch.Tensor, torch.Tensor], targets: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """
        Args:
            predictions: ``(p1, p2)``, the online predictions of view 1 and view 2, each ``(B, D)``.
            targets: ``(z1, z2)``, the target projections of view 1 and view 2, each ``(B, D)``.
        """
        (p1, p2), (z1, z2) = predictions, targets
        return (self.regression(p1, z2) + self.regression(p2, z1)).mean()


def embedding_std(embeddings: torch.Tensor) -> torch.Tensor:
    """Collapse check of the contrastive methods: per-dimension standard deviation over the batch of the
    L2-normalised embeddings, averaged over the dimensions (SimSiam, Chen & He, CVPR 2021, Sec. 4.1).

    ``(B, D)`` -> a scalar: 0 when every sample maps to the same vector (collapse), about ``1 / sqrt(D)`` when the
    embeddings spread over the unit sphere (e.g. 0.088 for ``D = 128``, 0.0625 for ``D = 256``). No gradient.
    """
    with torch.no_grad():
        return F.normalize(embeddings.detach().float(), dim=-1).std(dim=0).mean()
