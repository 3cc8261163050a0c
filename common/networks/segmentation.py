"""3D segmentation networks of the downstream bundles, chosen by one config key (``arch``).

All three are MONAI's own networks; this module only fixes the configurations the papers fine-tune:

* ``swin_unetr``: Swin UNETR (Hatamizadeh et al. 2022), ``feature_size`` 48 as in the BTCV fine-tuning
  of Tang et al. (CVPR 2022); the encoder HySparK / MiM transfer into.
* ``unetr``: UNETR (Hatamizadeh et al. 2022) on a ViT-B/16 (hidden 768, MLP 3072, 12 heads, 12 layers,
  patch 16), ``feature_size`` 16; the encoder GL-MAE / MAE3D transfer into.
* ``mednext``: MedNeXt (Roy et al. 2023), variant given by ``mednext_variant``; the network SparK-3D
  (``spark3d_pretrain``) pre-trains the encoder of.
* ``hyspark``: HySparK's hybrid MedNeXt + ViT encoder under a MedNeXt-style decoder
  (:class:`~common.networks.hybrid.HybridSegmentationNet`), initialised from ``hyspark_pretrain``.
* ``mim``: MiM's 3D ConvViT under a Swin UNETR-style decoder of UNETR blocks
  (:class:`~common.networks.convvit.ConvViTSegmentationNet`), initialised from ``mim_pretrain``.

:data:`PRETRAINED_ENCODER_RENAME` says where a pre-training method's ``encoder.*`` tensors go.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from monai.networks.nets import UNETR, SwinUNETR
from monai.networks.nets.mednext import create_mednext
from torch import nn

from common.lora import add_lora
from common.networks.convvit import PAPER_CONVVIT, ConvViTSegmentationNet
from common.networks.hybrid import PAPER_HYBRID, HybridSegmentationNet

SEGMENTATION_ARCHS = ("swin_unetr", "unetr", "mednext", "hyspark", "mim")

# Pre-training checkpoint prefix -> segmentation network prefix (``common.transfer.load_pretrained(rename=...)``).
PRETRAINED_ENCODER_RENAME = {"mednext": {"encoder.": ""}, "hyspark": {"encoder.": "encoder."}, "mim": {"encoder.": "encoder."}}


# The encoder submodule of each network: what ``pretrained`` initialises and ``lora_rank`` adapts.
ENCODER_MODULES = {"swin_unetr": "swinViT", "unetr": "vit", "hyspark": "encoder", "mim": "encoder"}


def adapt_encoder(network: nn.Module, arch: str, lora_rank: int = 0) -> nn.Module:
    """Freeze the encoder of a :func:`segmentation_network` and give it LoRA adapters of rank ``lora_rank``
    (:func:`common.lora.add_lora`; the decoder stays fully trainable). ``lora_rank`` 0 returns ``network``
    unchanged.

    Raises:
        ValueError: ``lora_rank`` > 0 for ``mednext``, whose encoder is not one submodule.
    """
    if lora_rank and arch not in ENCODER_MODULES:
        raise ValueError(f"lora_rank needs an encoder submodule; arch {arch!r} has none (LoRA: {sorted(ENCODER_MODULES)})")
    return add_lora(network, lora_rank, target=ENCODER_MODULES.get(arch))


def segmentation_network(
    arch: str = "swin_unetr",
    in_channels: int = 1,
    out_channels: int = 14,
    roi_size: Sequence[int] = (96, 96, 96),
    feature_size: int | None = None,
    mednext_variant: str = "S",
    hybrid_config: Mapping | None = None,
    convvit_config: Mapping | None = None,
) -> nn.Module:
    """Build the segmentation network named by ``arch``.

    Args:
        arch: one of :data:`SEGMENTATION_ARCHS`.
        in_channels: input channels (1 for CT).
        out_channels: classes including background (14 for BTCV).
        roi_size: training crop / sliding-window size; UNETR needs it (its position embedding is fixed).
        feature_size: width of Swin UNETR / UNETR / the ``mim`` decoder (paper defaults 48 / 16 / 48 when
            ``None``); MedNeXt's width is fixed by its variant (32).
        mednext_variant: MedNeXt size, ``S``, ``B``, ``M`` or ``L`` (kernel 3).
        hybrid_config: sizes of the ``hyspark`` encoder (:func:`~common.networks.hybrid.hybrid_config`);
            the paper's when ``None``. Must match the pre-training checkpoint.
        convvit_config: sizes of the ``mim`` encoder (:func:`~common.networks.convvit.convvit_config`), likewise.

    Returns:
        A network mapping ``(B, in_channels, *roi_size)`` to logits ``(B, out_channels, *roi_size)``.
    """
    if arch == "swin_unetr":
        return SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=feature_size or 48)
    if arch == "unetr":
        return UNETR(
            in_channels=in_channels,
            out_channels=out_channels,
            img_size=tuple(roi_size),
            feature_size=feature_size or 16,
            hidden_size=768,
            mlp_dim=3072,
            num_heads=12,
            proj_type="conv",
            norm_name="instance",
            res_block=True,
        )
    if arch == "mednext":
        return create_mednext(mednext_variant, spatial_dims=3, in_channels=in_channels, out_channels=out_channels)
    if arch == "hyspark":
        return HybridSegmentationNet(in_channels, out_channels, **(hybrid_config or PAPER_HYBRID))
    if arch == "mim":
        return ConvViTSegmentationNet(in_channels, out_channels, feature_size or 48, **(convvit_config or PAPER_CONVVIT))
    raise ValueError(f"unknown segmentation arch {arch!r}; choose one of {SEGMENTATION_ARCHS}")
