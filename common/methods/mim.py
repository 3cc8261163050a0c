"""MiM: Mask in Mask, masked modelling on a hierarchy of masked volumes with cross-level alignment.

Zhuang et al., "MiM: Mask in Mask Self-Supervised Pre-Training for 3D Medical Image Analysis", IEEE TMI 2025.
One step on a batch of level-1 crops (:class:`MiMGeometry` gives their sizes):

1. level 1: the crop is resized to the encoder input and masked; the mask is drawn on the grid of regions the
   next level is cut from (exact keep count per volume) and up-sampled to the token grid;
2. level ``l + 1``: ``children_per_parent`` (gamma) of the *masked* regions of each level-``l`` crop, drawn
   without replacement, cut from that crop at its own resolution and resized to the encoder input, so a child
   is exactly its parent's region resampled; masked again; the finest level is masked token by token;
3. every level goes through the :class:`~common.networks.convvit.ConvViT3D` encoder (visible tokens only) and
   the MAE decoder; L_R = (1 / L) sum_l w_l L_R^l (eq. 3; w_l: :func:`level_weights`) of the per-patch
   normalised MSE on masked tokens;
4. L_C (eq. 4-6): the mean-pooled decoder features of each child, through an MLP head, against the region
   features of its parent (mean-pooled decoder features of each region, stop-gradient, through another head):
   InfoNCE whose positive is the region the child came from;
5. ``L = L_R + alpha * L_C`` (alpha = 0.1, eq. 10).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from common.losses import CrossLevelContrastiveLoss, MaskedPatchReconstructionLoss, unpatchify
from common.masking import keep_count, random_patch_mask, upsample_mask
from common.methods.images import masked_reconstruction_images
from common.networks.convvit import ConvViT3D
from common.networks.mae_decoder import MAEDecoder

PATCH_SIZE = 16
LEVEL_SCHEDULES = ("simultaneous", "coarse_to_fine", "fine_to_coarse")


@dataclass(frozen=True)
class MiMGeometry:
    """Sizes of the volumes of each level, in voxels at the pipeline's spacing.

    Args:
        crops: crop size of each level in original voxels, coarse to fine; level ``l + 1`` crops are regions
            of a level-``l`` crop, so ``crops[l]`` must be a multiple of ``crops[l + 1]``.
        inputs: size each level is resized to for the encoder; multiples of 16, and the grid of regions of a
            level (``crops[l] / crops[l + 1]``) must divide its token grid (``inputs[l] / 16``), so that a
            region is a block of whole tokens.
    """

    crops: tuple[tuple[int, int, int], ...]
    inputs: tuple[tuple[int, int, int], ...]

    def __post_init__(self) -> None:
        if len(self.crops) != len(self.inputs) or len(self.crops) < 2:
            raise ValueError(f"need one crop and one input size per level, at least 2 levels; got {self}")
        for level in range(len(self.crops)):
            tokens, regions = self.token_grid(level), self.region_grid(level)
            if any(s % PATCH_SIZE for s in self.inputs[level]):
                raise ValueError(f"level {level + 1} input {self.inputs[level]} is not a multiple of {PATCH_SIZE}")
            if level + 1 < len(self.crops) and any(c % f for c, f in zip(self.crops[level], self.crops[level + 1])):
                raise ValueError(f"level {level + 1} crop {self.crops[level]} is not a multiple of {self.crops[level + 1]}")
            if any(t % r for t, r in zip(tokens, regions)):
                raise ValueError(f"level {level + 1}: region grid {regions} does not divide the token grid {tokens}")

    @property
    def num_levels(self) -> int:
        return len(self.crops)

    def token_grid(self, level: int) -> tuple[int, ...]:
        """Encoder tokens of a 0-based level: ``inputs[level] / 16``."""
        return tuple(s // PATCH_SIZE for s in self.inputs[level])

    def region_grid(self, level: int) -> tuple[int, ...]:
        """Grid the mask of a 0-based level is drawn on: its children's regions, or its tokens at the finest level."""
        if level + 1 == len(self.crops):
            return self.token_grid(level)
        return tuple(c // f for c, f in zip(self.crops[level], self.crops[level + 1]))


MIM_GEOMETRIES: dict[str, MiMGeometry] = {
    # Official code: a 192^3 crop resized to 96^3; level 2 = 96^3 octants (groups of 3x3x3 level-1 tokens);
    # level 3 = single 16^3 level-2 tokens up-sampled to 96^3.
    "official": MiMGeometry(crops=((192,) * 3, (96,) * 3, (16,) * 3), inputs=((96,) * 3,) * 3),
    # Paper Table II: 384x384x192, 96^3, 16^3. Level 1 is resized by 1/3 to 128x128x64 (not 96^3) so that its
    # 4x4x2 regions of 96^3 are blocks of 2x2x2 whole tokens.
    "paper": MiMGeometry(crops=((384, 384, 192), (96,) * 3, (16,) * 3), inputs=((128, 128, 64), (96,) * 3, (96,) * 3)),
    # The official layout at 2/3 scale for CPU demos: 128^3 -> 64^3, 64^3 octants, 16^3 tokens -> 64^3.
    "cpu_demo": MiMGeometry(crops=((128,) * 3, (64,) * 3, (16,) * 3), inputs=((64,) * 3,) * 3),
}


def mim_geometry(geometry: str | Mapping | MiMGeometry) -> MiMGeometry:
    """A :class:`MiMGeometry` from a preset name (:data:`MIM_GEOMETRIES`), a ``{"crops": ..., "inputs": ...}``
    mapping (e.g. from a bundle config) or a geometry."""
    if isinstance(geometry, MiMGeometry):
        return geometry
    if isinstance(geometry, str):
        if geometry not in MIM_GEOMETRIES:
            raise ValueError(f"unknown MiM geometry {geometry!r}; presets: {sorted(MIM_GEOMETRIES)}")
        return MIM_GEOMETRIES[geometry]
    return MiMGeometry(**{key: tuple(tuple(size) for size in sizes) for key, sizes in geometry.items()})


def level_weights(schedule: str, num_levels: int, progress: float) -> list[float]:
    """Weights ``w_l`` of the levels' reconstruction losses, coarse to fine, at a point of training:
    ``L_R = (1 / L) sum_l w_l L_R^l`` (eq. 3 when every ``w_l`` is 1). Paper Table XII, "Learning process":

    ==================  ==========  ==========  ==========
    ``schedule``        L_R^1       L_R^2       L_R^3
    ==================  ==========  ==========  ==========
    ``simultaneous``    1 -> 1      1 -> 1      1 -> 1
    ``coarse_to_fine``  1 -> 1      2 -> 1      0 -> 1
    ``fine_to_coarse``  1 -> 1      0 -> 1      2 -> 1
    ==================  ==========  ==========  ==========

    Level 1's column is read as 1 -> 1 in every row: the text of the table gives it in the Fine -> Coarse row
    only, as if one cell spanned all rows. The table gives the end points only; the ramps between them take the
    official code's shapes (``Pretrain/utils/lr_sched.py`` 26-36, ``get_sin_weight_higher`` and
    ``get_cos_weight_lower``, applied in ``engine_pretrain.py`` 73-78), with ``p`` = ``progress``:

    - falling, 2 -> 1: ``1 + cos(pi p / 2)``;
    - rising, 0 -> 1: ``sin(pi p / 2)``.

    The official code takes ``p = epoch / epochs`` (the integer epoch, over all epochs, warm-up included), so its
    weights step once per epoch; here ``p`` is the fraction of iterations done
    (:class:`~common.engine.TrainingProgress`). The official ``coarse_to_fine`` ramps level 1 down and level 3 up
    and keeps level 2 at 1 (``fine_to_coarse`` the reverse), where Table XII ramps levels 2 and 3 and keeps level 1
    at 1: this follows the table. Between the end points the weights do not sum to ``L`` (e.g. 3.41 at
    ``p = 0.5``), as in the official code.

    Args:
        schedule: one of :data:`LEVEL_SCHEDULES`.
        num_levels: ``L``; the ramps are defined for Table XII's ``L = 3`` only.
        progress: fraction of training done, in [0, 1].

    Raises:
        ValueError: an unknown ``schedule``, ``progress`` outside [0, 1], or a ramp with ``num_levels != 3``.
    """
    if schedule not in LEVEL_SCHEDULES:
        raise ValueError(f"unknown level schedule {schedule!r}; choose one of {LEVEL_SCHEDULES}")
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress}")
    if schedule == "simultaneous":
        return [1.0] * num_levels
    if num_levels != 3:
        raise ValueError(f"{schedule!r} is defined for 3 levels (paper Table XII), not {num_levels}")
    falling, rising = 1.0 + math.cos(math.pi * progress / 2), math.sin(math.pi * progress / 2)
    return [1.0, falling, rising] if schedule == "coarse_to_fine" else [1.0, rising, falling]


@dataclass
class Level:
    """The volumes of one level: ``crop`` ``(N, C, *crops[l])`` in original voxels, ``input`` ``(N, C,
    *inputs[l])`` for the encoder, ``visible`` ``(N, 1, *token_grid)`` and ``region_visible`` ``(N, 1,
    *region_grid)`` bool masks, and ``parent_region`` ``(N,)``: the region of the parent each volume was cut
    from (``None`` at level 1). Volume ``n`` of level ``l + 1`` is child ``n % gamma`` of parent ``n // gamma``."""

    crop: torch.Tensor
    input: torch.Tensor
    visible: torch.Tensor
    region_visible: torch.Tensor
    parent_region: torch.Tensor | None


def _mlp_head(in_features: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, out_features), nn.GELU(), nn.Linear(out_features, out_features))


def _resize(volume: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(volume.shape[2:]) == tuple(size):
        return volume
    return F.interpolate(volume, size=tuple(size), mode="trilinear", align_corners=False)


class MiM(nn.Module):
    """MiM pre-training.

    Args:
        in_channels: image channels.
        encoder: :class:`ConvViT3D` sizes (``widths``, ``depths``, ``num_heads``; the paper's by default).
        decoder_width, decoder_depth, decoder_heads: the MAE decoder (576, 8, 16).
        geometry: a preset name, mapping or geometry (:func:`mim_geometry`).
        mask_ratio: fraction of masked regions / tokens, one for every level (0.6, paper Table II) or one per
            level, coarse to fine (the official code's 0.5, 0.6, 0.5).
        children_per_parent: gamma, volumes drawn from each parent's masked regions (4).
        contrast_weight: alpha (0.1).
        contrast_dim: width D of the context / region heads (2048).
        temperature: InfoNCE temperature tau (0.2, see the bundle's docs).
        contrast_loss: ``infonce`` or ``byol`` (:class:`CrossLevelContrastiveLoss`).
        level_schedule: reconstruction weighting over training, one of :data:`LEVEL_SCHEDULES`.

    ``forward({"image": (B, C, *crops[0])})`` returns ``loss``, ``loss/recon``, ``loss/contrast``,
    ``loss/recon_level{l}``, ``loss/contrast_level{l}_{l+1}``, and with ``images=True`` also ``images`` (input,
    masked and reconstruction of every level). :attr:`progress` (fraction of training done, set by
    :class:`common.engine.TrainingProgress`) drives ``level_schedule``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        encoder: Mapping | None = None,
        decoder_width: int = 576,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        geometry: str | Mapping | MiMGeometry = "official",
        mask_ratio: float | Sequence[float] = 0.6,
        children_per_parent: int = 4,
        contrast_weight: float = 0.1,
        contrast_dim: int = 2048,
        temperature: float = 0.2,
        contrast_loss: str = "infonce",
        level_schedule: str = "simultaneous",
    ) -> None:
        super().__init__()
        self.geometry = mim_geometry(geometry)
        self.patch_size = PATCH_SIZE
        levels = self.geometry.num_levels
        self.mask_ratios = (mask_ratio,) * levels if isinstance(mask_ratio, (int, float)) else tuple(mask_ratio)
        if len(self.mask_ratios) != levels:
            raise ValueError(f"need one mask_ratio or one per level ({levels}), got {mask_ratio}")
        self.children_per_parent = children_per_parent
        self.contrast_weight = contrast_weight
        level_weights(level_schedule, levels, 0.0)  # validates the name and the number of levels
        self.level_schedule = level_schedule
        self.progress = 0.0
        for level in range(levels - 1):
            regions = math.prod(self.geometry.region_grid(level))
            masked = regions - keep_count(regions, self.mask_ratios[level])
            if masked < children_per_parent:
                raise ValueError(
                    f"level {level + 1} masks {masked} of its {regions} regions, fewer than children_per_parent="
                    f"{children_per_parent}; lower children_per_parent or raise its mask_ratio"
                )
        self.encoder = ConvViT3D(in_channels, **(encoder or {}))
        self.decoder = MAEDecoder(
            self.encoder.feature_channels[-1], decoder_width, decoder_depth, decoder_heads, PATCH_SIZE**3 * in_channels
        )
        cross_levels = self.geometry.num_levels - 1
        self.context_heads = nn.ModuleList(_mlp_head(decoder_width, contrast_dim) for _ in range(cross_levels))
        self.region_heads = nn.ModuleList(_mlp_head(decoder_width, contrast_dim) for _ in range(cross_levels))
        self.reconstruction_loss = MaskedPatchReconstructionLoss(PATCH_SIZE)
        self.contrastive_loss = CrossLevelContrastiveLoss(temperature, contrast_loss)

    def sample_levels(self, image: torch.Tensor, generator: torch.Generator | None = None) -> list[Level]:
        """The masked volumes of every level for a batch of level-1 crops ``(B, C, *crops[0])``.

        Masks and children are random (from ``generator`` when given, drawn on the CPU); level ``l`` holds
        ``B * gamma^(l-1)`` volumes.
        """
        if tuple(image.shape[2:]) != tuple(self.geometry.crops[0]):
            raise ValueError(f"MiM expects level-1 crops of {self.geometry.crops[0]}, got {tuple(image.shape[2:])}")
        levels, crop, parent_region = [], image, None
        for level in range(self.geometry.num_levels):
            regions = self.geometry.region_grid(level)
            region_visible = random_patch_mask(crop.shape[0], regions, self.mask_ratios[level], generator, crop.device)
            visible = upsample_mask(region_visible, self.geometry.token_grid(level))
            levels.append(Level(crop, _resize(crop, self.geometry.inputs[level]), visible, region_visible, parent_region))
            if level + 1 < self.geometry.num_levels:
                crop, parent_region = self._cut_children(crop, region_visible, generator)
        return levels

    def _cut_children(
        self, crop: torch.Tensor, region_visible: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``gamma`` masked regions of each crop, drawn without replacement: ``(N * gamma, C, *region)`` crops and
        their region indices ``(N * gamma,)`` (raster order of the region grid)."""
        masked = ~region_visible.flatten(1)
        scores = torch.rand(masked.shape, generator=generator).to(crop.device).masked_fill(~masked, -1.0)
        chosen = scores.topk(self.children_per_parent, dim=1).indices
        x, y, z = region_visible.shape[2:]
        regions = rearrange(crop, "n c (x p) (y q) (z r) -> n (x y z) c p q r", x=x, y=y, z=z)
        children = regions[torch.arange(crop.shape[0], device=crop.device)[:, None], chosen]
        return children.flatten(0, 1), chosen.flatten()

    def encode_decode(self, image: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode the visible tokens of ``image`` ``(N, C, *S)`` and decode every token: ``(prediction (N, C, *S)``
        in per-patch normalised units, ``decoder features (N, L, decoder_width))``."""
        latent = self.encoder(image, visible)[-1]
        prediction, features = self.decoder(latent, visible)
        return unpatchify(prediction, PATCH_SIZE, image), features

    def reconstruct(self, image: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """The prediction ``(N, C, *S)`` of :meth:`encode_decode` alone (single-level reconstruction, export)."""
        return self.encode_decode(image, visible)[0]

    def mask(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A token-level mask ``(B, 1, *S/16)`` for a single-level reconstruction of ``image`` (export, viewing),
        at level 1's mask ratio (the level that sees whole crops)."""
        grid = [s // PATCH_SIZE for s in image.shape[2:]]
        return random_patch_mask(image.shape[0], grid, self.mask_ratios[0], generator, image.device)

    def images(self, image: torch.Tensor, prediction: torch.Tensor, visible: torch.Tensor) -> dict[str, torch.Tensor]:
        """``input``, ``masked``, ``reconstruction`` and ``target`` of one level (:func:`masked_reconstruction_images`)."""
        return masked_reconstruction_images(image, prediction, visible, self.reconstruction_loss)

    def _region_features(self, features: torch.Tensor, level: int) -> torch.Tensor:
        """Mean decoder features ``(N, R, W)`` of the regions of a level from its token features ``(N, L, W)``."""
        tokens, regions = self.geometry.token_grid(level), self.geometry.region_grid(level)
        block = [t // r for t, r in zip(tokens, regions)]
        grid = features.view(features.shape[0], *tokens, features.shape[-1])
        pattern = "n (x p) (y q) (z r) w -> n (x y z) (p q r) w"
        return rearrange(grid, pattern, p=block[0], q=block[1], r=block[2]).mean(dim=2)

    def _cross_level_loss(
        self, level: int, parent_features: torch.Tensor, child_features: torch.Tensor, child: Level
    ) -> torch.Tensor:
        """Step 4, L_C between 0-based ``level`` and the next (eq. 4-6), a scalar.

        Args:
            level: the parent level.
            parent_features: the parent level's decoder features ``(N, L, W)``.
            child_features: the next level's decoder features ``(N gamma, L', W)``.
            child: the next level, whose ``parent_region`` ``(N gamma,)`` names each child's positive.
        """
        # regions (N, R, D): each region's mean parent feature (stop-gradient) through the region head.
        regions = self.region_heads[level](self._region_features(parent_features.detach(), level))
        # context (N, gamma, D): each child's mean feature through the context head, grouped by parent.
        parents = regions.shape[0]
        context = self.context_heads[level](child_features.mean(dim=1)).view(parents, self.children_per_parent, -1)
        labels = child.parent_region.view(parents, self.children_per_parent)  # (N, gamma), each in 0..R-1
        return self.contrastive_loss(context, regions, labels)

    def forward(self, batch: dict, images: bool = False) -> dict:
        """The losses of the docstring above for ``batch["image"]`` (B, C, *crops[0]); with ``images``, also the
        first sample's ``"images"`` of every level, which only a snapshot needs."""
        # 1.-2. the masked volumes of every level: level l holds N_l = B gamma^(l-1) volumes, input (N_l, C,
        #       *inputs[l]) and visible (N_l, 1, *token_grid(l)).
        levels = self.sample_levels(batch["image"])
        # 3. encode and decode every level: prediction (N_l, C, *inputs[l]), features (N_l, L_l, decoder_width);
        #    L_R = (1 / L) sum_l w_l L_R^l, the level schedule's weights (eq. 3 when "simultaneous", Table XII).
        outputs = [self.encode_decode(level.input, level.visible) for level in levels]
        recon = [
            self.reconstruction_loss(prediction, level.input, level.visible)
            for level, (prediction, _) in zip(levels, outputs)
        ]
        weights = level_weights(self.level_schedule, len(levels), self.progress)
        recon_loss = sum(w * r for w, r in zip(weights, recon)) / len(recon)
        # 4. L_C, the mean over the pairs of consecutive levels (eq. 7).
        contrast = [
            self._cross_level_loss(index, outputs[index][1], outputs[index + 1][1], levels[index + 1])
            for index in range(len(levels) - 1)
        ]
        contrast_loss = sum(contrast) / len(contrast)
        # 5. L = L_R + alpha L_C (eq. 10).
        result = {f"loss/recon_level{index}": loss.detach() for index, loss in enumerate(recon, start=1)}
        result.update({f"loss/contrast_level{i}_{i + 1}": loss.detach() for i, loss in enumerate(contrast, start=1)})
        result["loss"] = recon_loss + self.contrast_weight * contrast_loss
        result["loss/recon"] = recon_loss.detach()
        result["loss/contrast"] = contrast_loss.detach()
        if images:
            result["images"] = {}
            for index, (level, (prediction, _)) in enumerate(zip(levels, outputs), start=1):
                shown = self.images(level.input[:1], prediction[:1], level.visible[:1])
                result["images"].update(
                    {f"level{index}_{name}": shown[name] for name in ("input", "masked", "reconstruction")}
                )
        return result
