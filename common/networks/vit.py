"""The 3D ViT encoder of GL-MAE and MAE3D: MONAI's ViT, with a cls token, encoding visible tokens only.

The encoder is MONAI's :class:`~monai.networks.nets.ViT` (conv patch embedding, learnable position embedding,
MONAI ``TransformerBlock`` s, final LayerNorm) held as ``self.vit``, so its tensors have exactly the names of
UNETR's ``vit.*`` and transfer by name. Two things MONAI's ViT does not do are added around it:

* MAE's visible-token encoding (He et al., CVPR 2022, Sec. 3): masked tokens are dropped before the blocks;
* views of any size: the position embedding, learnt on the grid of ``img_size``, is interpolated trilinearly to
  the input's token grid (GL-MAE's 160^3 global views against 96^3 local views; DINO's
  ``interpolate_pos_encoding`` in 3D).

MONAI's :class:`~monai.networks.nets.MaskedAutoEncoderViT` is not used: it draws its own masks inside
``forward`` (no generator, no mask shared with a teacher or with the loss), has a fixed input size, and its
tensor names do not match UNETR's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import trunc_normal_
from monai.networks.nets import ViT
from torch import nn

PATCH_SIZE = 16

# ViT-B/16 (Dosovitskiy et al. 2021; GL-MAE's main encoder and UNETR's) and ViT-T (GL-MAE's small variant).
VIT_SIZES = {
    "base": {"hidden_size": 768, "mlp_dim": 3072, "num_layers": 12, "num_heads": 12},
    "tiny": {"hidden_size": 192, "mlp_dim": 768, "num_layers": 12, "num_heads": 3},
}
# A ViT small enough to pre-train on the 2-core CPU in minutes (the demo runs); 12 blocks, as UNETR reads
# the hidden states of blocks 3, 6 and 9.
CPU_DEMO_VIT = {"hidden_size": 96, "mlp_dim": 384, "num_layers": 12, "num_heads": 4}


def vit_config(cpu_demo_scale: bool = False, size: str = "base") -> dict:
    """ViT sizes shared by the pre-training bundles and the ``unetr`` fine-tuning arch: :data:`VIT_SIZES`
    ``[size]``, or :data:`CPU_DEMO_VIT` at CPU demo scale (both sides must agree for weights to transfer)."""
    if size not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {size!r}; choose one of {sorted(VIT_SIZES)}")
    return dict(CPU_DEMO_VIT if cpu_demo_scale else VIT_SIZES[size])


def token_grid(spatial_size: Sequence[int], patch_size: int = PATCH_SIZE) -> tuple[int, ...]:
    """Tokens along each axis of an input of ``spatial_size`` voxels."""
    return tuple(int(s) // patch_size for s in spatial_size)


def interpolate_position_embedding(embedding: torch.Tensor, grid: Sequence[int], new_grid: Sequence[int]) -> torch.Tensor:
    """Resample a position embedding ``(1, prod(grid), W)`` (cells in raster order) to ``(1, prod(new_grid), W)``
    by trilinear interpolation of each channel over the token grid (``align_corners=False``)."""
    grid, new_grid = tuple(grid), tuple(new_grid)
    if grid == new_grid:
        return embedding
    volume = embedding.transpose(1, 2).reshape(1, embedding.shape[-1], *grid)
    volume = F.interpolate(volume.float(), size=new_grid, mode="trilinear", align_corners=False)
    return volume.flatten(2).transpose(1, 2).to(embedding.dtype)


class MaskedViT(nn.Module):
    """ViT encoder of the visible tokens of a 3D image, with a cls token in front.

    Args:
        in_channels: image channels.
        img_size: the input size the position embedding is learnt for (GL-MAE / MAE3D: the 96^3 local views);
            other sizes interpolate it.
        patch_size: token side in voxels (16).
        hidden_size, mlp_dim, num_layers, num_heads: transformer sizes (:data:`VIT_SIZES`).

    ``forward(image, visible=None)``: ``image`` ``(B, C, *S)`` with ``S`` a multiple of ``patch_size``;
    ``visible`` ``(B, 1, *S / patch_size)`` bool with the same number of visible tokens in every sample, or
    ``None`` for all tokens. Returns the normed tokens ``(B, 1 + N, hidden_size)``: the cls token, then the ``N``
    visible tokens in raster order.
    """

    def __init__(
        self,
        in_channels: int = 1,
        img_size: Sequence[int] = (96, 96, 96),
        patch_size: int = PATCH_SIZE,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.grid = token_grid(img_size, patch_size)
        self.vit = ViT(
            in_channels,
            img_size=tuple(img_size),
            patch_size=patch_size,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            proj_type="conv",
            pos_embed_type="learnable",
        )
        for block in self.vit.blocks:  # PyTorch's fused attention; the same weights and outputs
            block.attn.use_flash_attention = True
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        trunc_normal_(self.cls_token, mean=0.0, std=0.02, a=-2.0, b=2.0)

    @property
    def hidden_size(self) -> int:
        return self.cls_token.shape[-1]

    def forward(self, image: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        embedding = self.vit.patch_embedding
        tokens = embedding.patch_embeddings(image)
        grid = tuple(tokens.shape[2:])
        tokens = tokens.flatten(2).transpose(1, 2)
        tokens = tokens + interpolate_position_embedding(embedding.position_embeddings, self.grid, grid).to(tokens.dtype)
        if visible is not None:
            keep = visible.flatten(1)
            tokens = tokens[keep].view(tokens.shape[0], -1, tokens.shape[-1])
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        for block in self.vit.blocks:
            tokens = block(tokens)
        return self.vit.norm(tokens)
