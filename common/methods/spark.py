"""SparK: sparse masked modelling of a hierarchical (CNN or hybrid) encoder; SparK-3D on MedNeXt, SparK 2D on ResNet.

Tian et al., "Designing BERT for Convolutional Networks: Sparse and Hierarchical Masked Modeling",
ICLR 2023. One step:

1. draw a mask on the coarsest grid (one cell per ``downsample_ratio`` patch), exact keep count per sample;
2. encode the visible region only, every scale seeing the up-sampled mask (:mod:`common.sparse`);
3. densify: optionally normalise each scale's visible features (SparK's sparse BatchNorm for ResNets), fill its
   masked positions with a learnable mask token and project to the decoder width;
4. decode with a light U-shaped decoder (:class:`~common.networks.light_decoder.LightDecoder`);
5. per-patch normalised MSE on the masked patches (:class:`~common.losses.MaskedPatchReconstructionLoss`).
"""

from __future__ import annotations

import torch
from torch import nn

from common.losses import MaskedPatchReconstructionLoss
from common.masking import random_patch_mask, upsample_mask
from common.methods.images import masked_reconstruction_images
from common.networks.light_decoder import LightDecoder
from common.networks.mednext import MedNeXtEncoder
from common.networks.resnet import ResNetEncoder
from common.sparse import encode_visible, resolve_backend, sparsify, visible_region
from common.sparse.layers import SparseBatchNorm2d, SparseBatchNorm3d


class SparK(nn.Module):
    """Sparse masked modelling around any encoder that returns a list of feature maps, fine to coarse.

    Args:
        encoder: dense encoder with ``feature_channels`` and ``downsample_ratio`` attributes; made sparse
            in place, its parameter names unchanged (``encoder.*`` in this module's state dict).
        decoder_width: width of the decoder's coarsest block (768 in SparK and HySparK).
        num_levels: how many of the coarsest encoder maps feed the decoder (4: the 1/2 .. 1/16 maps;
            the full-resolution map is not used, see the bundles' docs).
        skip: ``"add"`` (SparK) or ``"concat"`` (HySparK), see :class:`LightDecoder`.
        mask_ratio: fraction of masked patches.
        sparse_backend: ``auto``, ``masked`` or ``spconv`` (:func:`common.sparse.resolve_backend`).
        in_channels: image channels (reconstructed channels).
        spatial_dims: 2 (slices) or 3 (volumes): the dimension of the densify layers and the decoder.
        densify_norm: normalise each scale's encoder map, statistics over the visible positions only, before the
            mask tokens fill it (SparK's ``densify_norms``: sparse BatchNorm for ResNets; HySparK has none).

    ``forward({"image": (B, C, *S)})`` returns ``{"loss", "loss/recon"}`` (and ``"images"`` with ``images=True``);
    ``S`` must be a multiple of ``encoder.downsample_ratio``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder_width: int = 768,
        num_levels: int = 4,
        skip: str = "add",
        mask_ratio: float = 0.75,
        sparse_backend: str = "auto",
        in_channels: int = 1,
        spatial_dims: int = 3,
        densify_norm: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = sparsify(encoder)
        self.patch_size = encoder.downsample_ratio
        self.mask_ratio = mask_ratio
        self.sparse_backend = sparse_backend
        self.num_levels = num_levels
        channels = list(reversed(encoder.feature_channels))[:num_levels]  # coarse to fine
        widths = [decoder_width // 2**i for i in range(num_levels)]
        token_shape = [1] * spatial_dims
        self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, c, *token_shape)) for c in channels)
        for token in self.mask_tokens:
            nn.init.trunc_normal_(token, std=0.02, a=-0.02, b=0.02)
        batch_norm = SparseBatchNorm2d if spatial_dims == 2 else SparseBatchNorm3d
        self.densify_norms = nn.ModuleList(batch_norm(c) for c in channels) if densify_norm else None
        # SparK: 1x1 projection at the coarsest scale, 3x3 at the finer ones.
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.densify = nn.ModuleList(
            conv(c, w, kernel_size=1 if i == 0 else 3, padding=0 if i == 0 else 1)
            for i, (c, w) in enumerate(zip(channels, widths))
        )
        num_upsamples = self.patch_size.bit_length() - 1
        if 2**num_upsamples != self.patch_size:
            raise ValueError(f"the encoder's down-sampling must be a power of two, got {self.patch_size}")
        self.decoder = LightDecoder(decoder_width, num_upsamples, skip, out_channels=in_channels, spatial_dims=spatial_dims)
        self.loss = MaskedPatchReconstructionLoss(self.patch_size)

    def mask(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A fresh ``(B, 1, *grid)`` visible mask for ``image``."""
        grid = [s // self.patch_size for s in image.shape[2:]]
        return random_patch_mask(image.shape[0], grid, self.mask_ratio, generator, image.device)

    def reconstruct(self, image: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Decoder output ``(B, C, *S)`` (per-patch normalised units) from the visible part of ``image``.

        Args:
            image: ``(B, C, *S)``.
            visible: ``(B, 1, *grid)`` bool, ``True`` where a patch is kept; ``grid = S / patch_size``.
        """
        # 2. encode the visible patches only: the encoder returns features[j] (B, C_j, *S_j), finest first,
        #    exactly zero at masked positions; keep the num_levels coarsest, coarse to fine: features[i] is
        #    (B, C_i, *grid * 2^i), C_i the i-th of reversed(encoder.feature_channels).
        backend = resolve_backend(self.sparse_backend, image.device)
        features = list(reversed(encode_visible(self.encoder, image, visible, backend)))[: self.num_levels]

        # 3. densify each scale i: (optional) normalise with statistics over the visible positions, fill the
        #    masked positions with the mask token (1, C_i, 1, ...) and project C_i -> decoder_width / 2^i.
        if self.densify_norms is not None:
            with visible_region(visible):
                features = [norm(feature) for norm, feature in zip(self.densify_norms, features)]
        to_decoder = []
        for feature, token, project in zip(features, self.mask_tokens, self.densify):
            where = upsample_mask(visible, feature.shape[2:])  # (B, 1, *S_i) bool
            to_decoder.append(project(torch.where(where, feature, token.to(feature.dtype))))

        # 4. decode coarse to fine, to_decoder[0] (B, decoder_width, *grid) first, skips added or fused at
        #    every finer scale: (B, C, *S).
        return self.decoder(to_decoder)

    def forward(self, batch: dict, images: bool = False) -> dict:
        """``{"loss", "loss/recon"}`` of ``batch["image"]`` (B, C, *S); with ``images``, also the first sample's
        ``"images"`` (:meth:`images`, each (1, C, *S)), which only a snapshot needs."""
        image = batch["image"]  # (B, C, *S)
        # 1. mask: visible (B, 1, *grid) bool, True where a patch is kept, grid = S / patch_size.
        visible = self.mask(image)
        # 2.-4. encode the visible patches, densify, decode (:meth:`reconstruct`): prediction (B, C, *S).
        prediction = self.reconstruct(image, visible)
        # 5. loss on the masked patches only: MSE against the per-patch normalised image, a scalar.
        loss = self.loss(prediction, image, visible)
        result = {"loss": loss, "loss/recon": loss.detach()}
        if images:
            result["images"] = self.images(image[:1], prediction[:1], visible[:1])
        return result

    def images(self, image: torch.Tensor, prediction: torch.Tensor, visible: torch.Tensor) -> dict[str, torch.Tensor]:
        """``input``, ``masked``, ``reconstruction`` and ``target`` (:func:`masked_reconstruction_images`)."""
        return masked_reconstruction_images(image, prediction, visible, self.loss)


class SparK3D(SparK):
    """SparK-3D, HySparK's CNN baseline: SparK on MONAI's MedNeXt encoder with additive skips.

    Args:
        variant: MedNeXt size (``S``: 32 channels, 2 blocks per stage, expansion 2).
        kernel_size: MedNeXt depth-wise kernel.
        in_channels: image channels.
        **kwargs: :class:`SparK` options (``mask_ratio``, ``decoder_width``, ``sparse_backend`` ...).
    """

    def __init__(self, variant: str = "S", kernel_size: int = 3, in_channels: int = 1, **kwargs) -> None:
        super().__init__(MedNeXtEncoder(variant, in_channels, kernel_size), skip="add", in_channels=in_channels, **kwargs)


class SparK2D(SparK):
    """SparK on a 2D ResNet, as Wolf et al. (2023) pre-train ResNet-50 on CT slices with SparK's official recipe.

    SparK's ResNet set-up (Tian et al., Sec. 3 and the official ``pretrain`` code): 32 x 32 patches (the
    ResNet's 1/32 down-sampling; a 7 x 7 mask grid at 224), mask ratio 0.6, the four stage maps (1/4 .. 1/32)
    densified with a sparse BatchNorm, a mask token and a projection, the light decoder of width 768 with
    additive skips.

    Args:
        depth: ResNet depth (50 in the study).
        in_channels: image channels (1: grey CT slices).
        mask_ratio: fraction of masked patches (0.6).
        **kwargs: :class:`SparK` options (``decoder_width``, ``sparse_backend`` ...).

    ``forward({"image": (B, C, H, W)})``, ``H`` and ``W`` multiples of 32.
    """

    def __init__(self, depth: int = 50, in_channels: int = 1, mask_ratio: float = 0.6, **kwargs) -> None:
        super().__init__(
            ResNetEncoder(depth, spatial_dims=2, in_channels=in_channels),
            skip="add",
            mask_ratio=mask_ratio,
            in_channels=in_channels,
            spatial_dims=2,
            densify_norm=True,
            **kwargs,
        )
