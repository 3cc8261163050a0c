"""Masked image modelling: patches of an image, and the reconstruction loss on the masked ones."""

from __future__ import annotations

import torch
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

        Returns:
            ``()``, ``L = sum_{p masked} mean_v (y_pv - t_pv)^2 / #masked`` (SparK Sec. 3.4, MAE's normalized
            pixels), in float32.
        """
        target, _, _ = self.normalized_target(image)
        per_patch = (patchify(prediction, self.patch_size).float() - target).square().mean(dim=-1)
        masked = (~visible).flatten(1).to(per_patch.dtype)
        return (per_patch * masked).sum() / masked.sum().clamp_min(1)
