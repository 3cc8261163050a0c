"""MAE3D: a ViT masked autoencoder on 3D CT crops, the baseline of GL-MAE's tables.

He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022, in 3D as Chen et al., "Masked Image
Modeling Advances 3D Medical Image Analysis", WACV 2023: mask random 16^3 tokens, encode the visible ones
(:class:`~common.networks.vit.MaskedViT`), fill the masked cells with a mask token in a light transformer decoder
(:class:`~common.networks.mae_decoder.MAEDecoder`), and score the per-patch normalised voxels of the masked
tokens only (:class:`~common.losses.MaskedPatchReconstructionLoss`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from common.losses import MaskedPatchReconstructionLoss, unpatchify
from common.masking import random_patch_mask
from common.methods.images import masked_reconstruction_images
from common.networks.mae_decoder import MAEDecoder
from common.networks.vit import PATCH_SIZE, VIT_SIZES, MaskedViT, token_grid


def scatter_visible(tokens: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Visible tokens ``(B, N, W)`` (raster order) back on their grid: ``(B, W, *grid)``, zeros at masked cells."""
    batch, width = tokens.shape[0], tokens.shape[-1]
    grid = visible.shape[2:]
    full = tokens.new_zeros(batch, visible[0].numel(), width)
    full[visible.flatten(1)] = tokens.reshape(-1, width)
    return full.transpose(1, 2).reshape(batch, width, *grid)


class MAE3D(nn.Module):
    """MAE3D pre-training: ``forward({"image": (B, C, *S)})`` returns ``loss`` = ``loss/recon`` (and
    ``images`` with ``images=True``).

    Args:
        in_channels: image channels.
        img_size: crop size the encoder's position embedding is learnt for (96^3); other sizes interpolate it.
        encoder: :class:`MaskedViT` sizes (``hidden_size``, ``mlp_dim``, ``num_layers``, ``num_heads``; ViT-B).
        decoder_width, decoder_depth, decoder_heads: the MAE decoder (384, 8, 12; see the bundle's docs).
        mask_ratio: fraction of masked tokens (0.75).
    """

    def __init__(
        self,
        in_channels: int = 1,
        img_size: Sequence[int] = (96, 96, 96),
        encoder: Mapping | None = None,
        decoder_width: int = 384,
        decoder_depth: int = 8,
        decoder_heads: int = 12,
        mask_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        self.patch_size = PATCH_SIZE
        self.mask_ratio = mask_ratio
        self.encoder = MaskedViT(in_channels, img_size, PATCH_SIZE, **(encoder or VIT_SIZES["base"]))
        self.decoder = MAEDecoder(
            self.encoder.hidden_size, decoder_width, decoder_depth, decoder_heads, PATCH_SIZE**3 * in_channels
        )
        self.reconstruction_loss = MaskedPatchReconstructionLoss(PATCH_SIZE)

    def mask(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random token mask ``(B, 1, *S/16)`` (``True`` = visible) with the same count in every sample."""
        return random_patch_mask(image.shape[0], token_grid(image.shape[2:]), self.mask_ratio, generator, image.device)

    def encode_decode(self, image: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prediction (B, C, *S)`` in per-patch normalised units, ``cls token (B, hidden_size))`` from the
        visible tokens of ``image`` ``(B, C, *S)`` under ``visible`` ``(B, 1, *S/16)``."""
        # 2a. encode the visible tokens only: tokens (B, 1 + N_visible, hidden_size), the cls token first.
        tokens = self.encoder(image, visible)
        # 2b. put the visible tokens back on their grid (B, hidden_size, *S/16), decode every token (the decoder
        #     fills the masked cells with its mask token): (B, L, 16^3 C) -> prediction (B, C, *S).
        prediction, _ = self.decoder(scatter_visible(tokens[:, 1:], visible), visible)
        return unpatchify(prediction, PATCH_SIZE, image), tokens[:, 0]

    def reconstruct(self, image: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """The prediction of :meth:`encode_decode` alone (export, viewing)."""
        return self.encode_decode(image, visible)[0]

    def images(self, image: torch.Tensor, prediction: torch.Tensor, visible: torch.Tensor) -> dict[str, torch.Tensor]:
        """``input``, ``masked``, ``reconstruction`` and ``target`` (:func:`masked_reconstruction_images`)."""
        return masked_reconstruction_images(image, prediction, visible, self.reconstruction_loss)

    def forward(self, batch: dict, images: bool = False) -> dict:
        """``{"loss", "loss/recon"}`` of ``batch["image"]`` (B, C, *S); with ``images``, also the first sample's
        ``"images"`` (:meth:`images`, each (1, C, *S)), which only a snapshot needs."""
        image = batch["image"]  # (B, C, *S)
        # 1. mask: visible (B, 1, *S/16) bool, True where a token is kept, the same count in every sample.
        visible = self.mask(image)
        # 2. encode the visible tokens, decode every token (:meth:`encode_decode`): prediction (B, C, *S).
        prediction = self.reconstruct(image, visible)
        # 3. loss on the masked tokens only: MSE against the per-patch normalised image, a scalar.
        loss = self.reconstruction_loss(prediction, image, visible)
        result = {"loss": loss, "loss/recon": loss.detach()}
        if images:
            result["images"] = self.images(image[:1], prediction[:1], visible[:1])
        return result
