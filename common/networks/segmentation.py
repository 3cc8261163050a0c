"""3D segmentation networks of the downstream bundles, chosen by one config key (``arch``).

All three are MONAI's own networks; this module only fixes the configurations the papers fine-tune:

* ``swin_unetr``: Swin UNETR (Hatamizadeh et al. 2022), ``feature_size`` 48 as in the BTCV fine-tuning
  of Tang et al. (CVPR 2022); the encoder HySparK / MiM transfer into.
* ``unetr``: UNETR (Hatamizadeh et al. 2022) on a ViT-B/16 (hidden 768, MLP 3072, 12 heads, 12 layers,
  patch 16; ``encoder_config`` for other widths), ``feature_size`` 16; the encoder GL-MAE / MAE3D
  (``glmae_pretrain``, ``mae3d_pretrain``) transfer into.
* ``mednext``: MedNeXt (Roy et al. 2023), variant given by ``mednext_variant``; the network SparK-3D
  (``spark3d_pretrain``) pre-trains the encoder of.
* ``hyspark``: HySparK's hybrid MedNeXt + ViT encoder under a MedNeXt-style decoder
  (:class:`~common.networks.hybrid.HybridSegmentationNet`), initialised from ``hyspark_pretrain``.
* ``mim``: MiM's 3D ConvViT under a Swin UNETR-style decoder of UNETR blocks
  (:class:`~common.networks.convvit.ConvViTSegmentationNet`), initialised from ``mim_pretrain``.
* ``mim_official``: the network the official MiM code fine-tunes: the same ConvViT with a fifth, 1/32 stage and
  layer-normed skips under a Swin UNETR decoder (:class:`~common.networks.convvit_unetr.ConvViTUNETR`), initialised
  from ``mim_pretrain`` too.

:data:`PRETRAINED_ENCODER_RENAME` says where a pre-training method's ``encoder.*`` tensors go.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from monai.networks.nets import UNETR, SwinUNETR
from monai.networks.nets.mednext import create_mednext
from torch import nn

from common.lora import add_lora
from common.networks.convvit import PAPER_CONVVIT, ConvViTSegmentationNet, convvit_config
from common.networks.convvit_unetr import ConvViTUNETR
from common.networks.hybrid import PAPER_HYBRID, HybridSegmentationNet, hybrid_config
from common.networks.spec import NetworkSpec
from common.networks.vit import VIT_SIZES, vit_config

SEGMENTATION_ARCHS = ("swin_unetr", "unetr", "mednext", "hyspark", "mim", "mim_official")

# Pre-training checkpoint prefix -> segmentation network prefix (``common.transfer.load_pretrained(rename=...)``).
# GL-MAE / MAE3D: the student ViT; its cls token (``encoder.cls_token``) has no place in UNETR and is left out.
PRETRAINED_ENCODER_RENAME = {
    "mednext": {"encoder.": ""},
    "hyspark": {"encoder.": "encoder."},
    "mim": {"encoder.": "encoder."},
    "mim_official": {"encoder.": "encoder."},
    "unetr": {"encoder.vit.": "vit."},
}


# Pre-training bundle -> the segmentation arch its ``model.pt`` fine-tunes in (``btcv_segmentation --arch``);
# ``mim_pretrain``'s also fine-tunes in ``mim_official``.
PRETRAINING_ARCHS = {
    "hyspark_pretrain": "hyspark",
    "spark3d_pretrain": "mednext",
    "mim_pretrain": "mim",
    "glmae_pretrain": "unetr",
    "mae3d_pretrain": "unetr",
}


# The encoder submodule of each network: what ``pretrained`` initialises and ``lora_rank`` adapts.
ENCODER_MODULES = {
    "swin_unetr": "swinViT", "unetr": "vit", "hyspark": "encoder", "mim": "encoder", "mim_official": "encoder"
}


def adapt_encoder(network: nn.Module, arch: str, lora_rank: int = 0, freeze_encoder: bool = False) -> nn.Module:
    """Freeze the encoder of a :func:`segmentation_network`, with LoRA adapters of rank ``lora_rank``
    (:func:`common.lora.add_lora`) or without any (``freeze_encoder``: linear evaluation, GL-MAE Table 2 / 4
    "Linear"); the decoder stays fully trainable. ``lora_rank`` 0 and ``freeze_encoder`` false (end-to-end
    fine-tuning) return ``network`` unchanged.

    Raises:
        ValueError: ``lora_rank`` > 0 or ``freeze_encoder`` for ``mednext``, whose encoder is not one submodule;
            both at once.
    """
    if (lora_rank or freeze_encoder) and arch not in ENCODER_MODULES:
        raise ValueError(
            f"lora_rank / freeze_encoder need an encoder submodule; arch {arch!r} has none (it works for {sorted(ENCODER_MODULES)})"
        )
    if lora_rank and freeze_encoder:
        raise ValueError("choose lora_rank (frozen encoder + adapters) or freeze_encoder (frozen, no adapters), not both")
    if freeze_encoder:
        network.get_submodule(ENCODER_MODULES[arch]).requires_grad_(False)
        return network
    return add_lora(network, lora_rank, target=ENCODER_MODULES.get(arch))


def segmentation_encoder_config(arch: str, cpu_demo_scale: bool = False) -> dict | None:
    """Encoder sizes of ``arch`` for :func:`segmentation_network`'s ``encoder_config``: the paper's, or the small
    ones the bundles use without a GPU.

    ``hyspark``, ``mim`` / ``mim_official`` and ``unetr`` share theirs with the pre-training bundles
    (:func:`~common.networks.hybrid.hybrid_config`, :func:`~common.networks.convvit.convvit_config`,
    :func:`~common.networks.vit.vit_config`), so a CPU demo checkpoint fine-tunes into a network of the same shape.

    Args:
        arch: one of :data:`SEGMENTATION_ARCHS`.
        cpu_demo_scale: the CPU demo sizes instead of the paper's.

    Returns:
        The encoder's keyword arguments, or ``None`` for ``swin_unetr`` and ``mednext``, whose width is set by
        ``feature_size`` / ``mednext_variant`` instead.

    Raises:
        ValueError: ``arch`` is not one of :data:`SEGMENTATION_ARCHS`.
    """
    if arch == "hyspark":
        return hybrid_config(cpu_demo_scale)
    if arch in ("mim", "mim_official"):
        return convvit_config(cpu_demo_scale)
    if arch == "unetr":
        return vit_config(cpu_demo_scale)
    if arch in ("swin_unetr", "mednext"):
        return None
    raise ValueError(f"unknown segmentation arch {arch!r}; choose one of {SEGMENTATION_ARCHS}")


def segmentation_network(
    arch: str = "swin_unetr",
    in_channels: int = 1,
    out_channels: int = 14,
    roi_size: Sequence[int] = (96, 96, 96),
    feature_size: int | None = None,
    mednext_variant: str = "S",
    encoder_config: Mapping | None = None,
) -> nn.Module:
    """Build the segmentation network named by ``arch``.

    Args:
        arch: one of :data:`SEGMENTATION_ARCHS`.
        in_channels: input channels (1 for CT).
        out_channels: classes including background (14 for BTCV).
        roi_size: training crop / sliding-window size; UNETR needs it (its position embedding is fixed).
        feature_size: width of Swin UNETR / UNETR / the ``mim`` decoder (paper defaults 48 / 16 / 48 when
            ``None``); the ``mim_official`` decoder's is its encoder's last width / 8 (48 for the paper's, 12 for
            the CPU demo's; ``None`` takes it); MedNeXt's width is fixed by its variant (32).
        mednext_variant: MedNeXt size, ``S``, ``B``, ``M`` or ``L`` (kernel 3).
        encoder_config: the sizes of ``arch``'s encoder (:func:`segmentation_encoder_config`): for ``hyspark``
            :func:`~common.networks.hybrid.hybrid_config`'s, for ``mim`` / ``mim_official``
            :func:`~common.networks.convvit.convvit_config`'s, for ``unetr`` the ViT's ``hidden_size``, ``mlp_dim``
            and ``num_heads`` (:func:`~common.networks.vit.vit_config`; its ``num_layers``, if given, must be 12,
            as UNETR reads 12 layers); the paper's when ``None`` (ViT-B for ``unetr``). Unused by ``swin_unetr``
            and ``mednext``. Must match the pre-training checkpoint.

    Returns:
        A network mapping ``(B, in_channels, *roi_size)`` to logits ``(B, out_channels, *roi_size)``.

    Raises:
        ValueError: ``arch`` is not one of :data:`SEGMENTATION_ARCHS`; a ``unetr`` ``encoder_config`` of other
            than 12 layers; a ``mim_official`` ``feature_size`` other than its encoder's last width / 8.
    """
    if arch == "swin_unetr":
        return SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=feature_size or 48)
    if arch == "unetr":
        vit = dict(encoder_config or VIT_SIZES["base"])
        if vit.pop("num_layers", 12) != 12:
            raise ValueError(
                f"UNETR reads the hidden states of a 12-layer ViT; encoder_config {encoder_config} has another depth"
            )
        return UNETR(
            in_channels=in_channels,
            out_channels=out_channels,
            img_size=tuple(roi_size),
            feature_size=feature_size or 16,
            **vit,
            proj_type="conv",
            norm_name="instance",
            res_block=True,
        )
    if arch == "mednext":
        return create_mednext(mednext_variant, spatial_dims=3, in_channels=in_channels, out_channels=out_channels)
    if arch == "hyspark":
        return HybridSegmentationNet(in_channels, out_channels, **(encoder_config or PAPER_HYBRID))
    if arch == "mim":
        convvit = encoder_config or PAPER_CONVVIT
        return ConvViTSegmentationNet(in_channels, out_channels, feature_size or 48, **convvit)
    if arch == "mim_official":
        return ConvViTUNETR(in_channels, out_channels, feature_size, **(encoder_config or PAPER_CONVVIT))
    raise ValueError(f"unknown segmentation arch {arch!r}; choose one of {SEGMENTATION_ARCHS}")


def segmentation_spec(
    channel_def: Mapping,
    arch: str = "swin_unetr",
    in_channels: int = 1,
    roi_size: Sequence[int] = (96, 96, 96),
    feature_size: int | None = None,
    mednext_variant: str = "S",
    encoder_config: Mapping | None = None,
    lora_rank: int = 0,
    pixdim: Sequence[float] = (1.5, 1.5, 1.5),
    modality: Mapping | None = None,
    intensity: str = "abdomen",
) -> NetworkSpec:
    """The :class:`~common.networks.spec.NetworkSpec` of a segmentation network: what ``btcv_segmentation`` saves
    with its weights and rebuilds for inference, for any task (its labels, its image channels, its preprocessing).

    Args:
        channel_def: output channel index -> label (the task's labels, ``metadata.json``'s ``channel_def`` for
            BTCV); one output per label.
        arch, in_channels, roi_size, feature_size, mednext_variant, encoder_config: :func:`segmentation_network`;
            ``encoder_config`` ``None`` is the paper's sizes.
        lora_rank: rank of the LoRA adapters in the encoder (:func:`adapt_encoder`); 0 for none.
        pixdim: the voxel spacing (mm) the network was trained at, which inference resamples to.
        modality: input channel index -> name (the task's ``modality`` / ``channel_names``), one per input channel;
            ``None``: not recorded (checkpoints saved before tasks: ``in_channels`` CT channels).
        intensity: the intensity normalisation inference applies: a CT window of
            :data:`common.transforms.CT_WINDOWS`, or ``"zscore"`` (MRI;
            :func:`common.transforms.ct.intensity_transform`).

    Raises:
        ValueError: ``modality`` lists other than ``in_channels`` channels.
    """
    if modality is not None and len(modality) != in_channels:
        raise ValueError(f"modality {dict(modality)} lists {len(modality)} channels, in_channels is {in_channels}")
    labels = {str(index): name for index, name in channel_def.items()}
    network_settings = {
        "arch": arch,
        "in_channels": in_channels,
        "out_channels": len(labels),
        "roi_size": list(roi_size),
        "feature_size": feature_size,
        "mednext_variant": mednext_variant,
        "encoder_config": encoder_config,
    }
    arguments = {
        "channel_def": labels,
        **{key: value for key, value in network_settings.items() if key != "out_channels"},
        "lora_rank": lora_rank,
        "pixdim": list(pixdim),
        "modality": None if modality is None else {str(index): name for index, name in modality.items()},
        "intensity": intensity,
    }
    return NetworkSpec(
        factory="common.networks.segmentation_spec",
        arguments=arguments,
        network=lambda: segmentation_network(**network_settings),
        adapters=lambda network: adapt_encoder(network, arch, lora_rank),
        preprocessing={"pixdim": list(pixdim), "intensity": intensity},
        input_shape=list(roi_size),
    )
