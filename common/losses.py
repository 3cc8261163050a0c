"""Losses of the self-supervised methods; each class cites the equation it implements."""

from __future__ import annotations

import torch
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
        """``c <- m c + (1 - m) mean(teacher)`` over the batch and views (DINO eq. 4); call once per step."""
        mean = teacher.float().flatten(0, -2).mean(dim=0, keepdim=True)
        self.center.mul_(self.center_momentum).add_(mean, alpha=1 - self.center_momentum)
