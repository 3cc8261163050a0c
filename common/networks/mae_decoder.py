"""MAE's light transformer decoder for token encoders (He et al., "Masked Autoencoders Are Scalable Vision
Learners", CVPR 2022, Sec. 3 "MAE decoder")."""

from __future__ import annotations

import torch
from monai.networks.blocks import TransformerBlock
from torch import nn

from common.layers import sincos_position_embedding


class MAEDecoder(nn.Module):
    """Embed the visible tokens, fill the masked cells with a learnable mask token, add a fixed sin-cos position
    embedding, run transformer blocks, predict the voxels of every cell.

    Args:
        in_width: width of the encoder tokens.
        width: decoder width (MiM: 576; divisible by 6 for the 3D position embedding).
        depth: transformer blocks (MiM: 8).
        num_heads: attention heads (MiM: 16).
        patch_voxels: predicted values per cell, ``patch_size^3 * channels`` (MiM: 16^3).
        mlp_ratio: MLP width / ``width``.

    ``forward(latent, visible)``: ``latent`` ``(B, in_width, *grid)`` (masked cells are ignored), ``visible``
    ``(B, 1, *grid)`` bool. Returns ``(prediction (B, L, patch_voxels), features (B, L, width))`` for the ``L``
    cells in raster order; ``features`` are the normed last hidden states, which MiM's cross-level alignment
    reads.
    """

    def __init__(
        self,
        in_width: int,
        width: int = 576,
        depth: int = 8,
        num_heads: int = 16,
        patch_voxels: int = 16**3,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(in_width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.normal_(self.mask_token, std=0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(width, int(width * mlp_ratio), num_heads, qkv_bias=True, use_flash_attention=True)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.predict = nn.Linear(width, patch_voxels)

    def forward(self, latent: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.embed(latent.flatten(2).transpose(1, 2))
        tokens = torch.where(visible.flatten(1)[..., None], tokens, self.mask_token.to(tokens.dtype))
        position = sincos_position_embedding(latent.shape[2:], tokens.shape[-1], tokens.device)
        tokens = tokens + position.to(tokens.dtype)
        for block in self.blocks:
            tokens = block(tokens)
        features = self.norm(tokens)
        return self.predict(features), features
