"""Tiny self-supervised methods for tests of the training machinery: deterministic, without batch statistics."""

import torch
import torch.nn.functional as F
from torch import nn


class ToyAutoencoder(nn.Module):
    """A tiny conv autoencoder: the reconstruction loss (the mean over the batch, so its gradient is the mean of the
    samples'), its named part and, when asked, the images to look at.

    Args:
        loss_scale: factor of the back-propagated loss.
        spatial_dims: 3 for ``(B, 1, D, H, W)`` volumes, 2 for ``(B, 1, H, W)`` images.
    """

    def __init__(self, loss_scale: float = 1.0, spatial_dims: int = 3):
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.encoder = conv(1, 4, 3, padding=1)
        self.decoder = conv(4, 1, 1)
        self.loss_scale = loss_scale
        self.batch_keys: set[str] = set()

    def forward(self, batch: dict, images: bool = False) -> dict:
        self.batch_keys = set(batch)
        image = batch["image"]
        reconstruction = self.decoder(torch.relu(self.encoder(image)))
        recon = F.mse_loss(reconstruction, image)
        result = {"loss": self.loss_scale * recon, "loss/recon": recon.detach()}
        if images:
            result["images"] = {"input": image, "reconstruction": reconstruction}
        return result
