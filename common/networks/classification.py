"""3D volume classifiers of the downstream bundles: a pre-trainable encoder, global average pooling, an MLP head.

``arch`` picks the encoder; each is built exactly as the network it is pre-trained or fine-tuned in, so that
its weights transfer by name:

* ``swin``: Swin UNETR's encoder, MONAI's :class:`~monai.networks.nets.swin_unetr.SwinTransformer` with the
  arguments :class:`~monai.networks.nets.SwinUNETR` gives it (patch 2, window 7, depths 2-2-2-2, heads
  3-6-12-24, ``feature_size`` 48); the coarsest map, ``16 * feature_size`` channels at 1/32, is pooled.
* ``vit``: MONAI's :class:`~monai.networks.nets.ViT` as UNETR builds it (ViT-B/16: hidden 768, MLP 3072,
  12 heads, 12 layers, patch 16, conv patch embedding, no class token); its output tokens are mean-pooled.
* ``hyspark``: HySparK's :class:`~common.networks.hybrid.HybridEncoder`; its ViT map at 1/16 is pooled.
* ``mim``: MiM's :class:`~common.networks.convvit.ConvViT3D`; its fused ViT map at 1/16 is pooled.

The head is ``LayerNorm -> Linear -> GELU -> Dropout -> Linear`` on the pooled ``(B, C)`` features: the
LayerNorm puts the four encoders' features on one scale, the hidden layer (``C`` wide by default) lets the
head combine them before the class logits.

:data:`CLASSIFICATION_ENCODER_RENAME` says where the encoder tensors of a checkpoint go, for
:func:`common.transfer.load_pretrained`: a pre-training method's ``encoder.*`` (every method of the
collection keeps its encoder there; GL-MAE / MAE3D keep their ViT under ``encoder.vit.*``), and for ``swin`` /
``vit`` also a fine-tuned Swin UNETR's ``swinViT.*`` or UNETR's ``vit.*`` (e.g. a ``btcv_segmentation`` model).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from monai.networks.nets import ViT
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import nn

from common.lora import add_lora
from common.networks.convvit import ConvViT3D, convvit_config
from common.networks.vit import PATCH_SIZE, VIT_SIZES, vit_config
from common.networks.hybrid import HybridEncoder, hybrid_config
from common.networks.spec import NetworkSpec

CLASSIFICATION_ARCHS = ("swin", "vit", "hyspark", "mim")

# Checkpoint name prefix -> classifier name prefix (``common.transfer.load_pretrained(rename=...)``).
CLASSIFICATION_ENCODER_RENAME = {
    "swin": {"encoder.": "encoder.", "swinViT.": "encoder."},
    "vit": {"encoder.": "encoder.", "vit.": "encoder.", "encoder.vit.": "encoder."},
    "hyspark": {"encoder.": "encoder."},
    "mim": {"encoder.": "encoder."},
}


def classification_encoder_config(arch: str, cpu_demo_scale: bool = False) -> dict:
    """Encoder sizes of ``arch``: the paper's, or the small ones the bundles use without a GPU.

    ``hyspark`` and ``mim`` share theirs with the pre-training bundles (:func:`~common.networks.hybrid_config`,
    :func:`~common.networks.convvit.convvit_config`), so a CPU demo checkpoint fine-tunes into a classifier of
    the same shape, and ``vit`` likewise with ``glmae_pretrain`` / ``mae3d_pretrain``
    (:func:`~common.networks.vit.vit_config`). ``swin`` uses ``feature_size`` 12 on a CPU (as ``btcv_segmentation``).

    Raises:
        ValueError: ``arch`` is not one of :data:`CLASSIFICATION_ARCHS`.
    """
    if arch == "swin":
        return {"feature_size": 12 if cpu_demo_scale else 48}
    if arch == "vit":
        return {"patch_size": PATCH_SIZE, **vit_config(cpu_demo_scale)}
    if arch == "hyspark":
        return hybrid_config(cpu_demo_scale)
    if arch == "mim":
        return convvit_config(cpu_demo_scale)
    raise ValueError(f"unknown classification arch {arch!r}; choose one of {CLASSIFICATION_ARCHS}")


class ClassificationHead(nn.Sequential):
    """``LayerNorm -> Linear -> GELU -> Dropout -> Linear``: ``(B, in_channels)`` features -> ``(B, num_classes)``.

    Args:
        in_channels: feature width ``C``.
        num_classes: number of classes.
        hidden_channels: width of the hidden layer (``C`` when ``None``).
        dropout: dropout probability before the last layer.
    """

    def __init__(self, in_channels: int, num_classes: int, hidden_channels: int | None = None, dropout: float = 0.0):
        hidden_channels = hidden_channels or in_channels
        super().__init__(
            nn.LayerNorm(in_channels),
            nn.Linear(in_channels, hidden_channels),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_channels, num_classes),
        )


class EncoderClassifier(nn.Module):
    """An encoder's coarsest features, averaged over space, then :class:`ClassificationHead`.

    Args:
        encoder: returns a list of ``(B, C_i, *S_i)`` maps, fine to coarse (hierarchical encoders), or with
            ``tokens=True`` a tuple whose first item is ``(B, N, C)`` tokens (MONAI's ``ViT``).
        feature_channels: ``C`` of the coarsest map, or of the tokens.
        num_classes, hidden_channels, dropout: the head.
        tokens: the encoder returns tokens, not maps.

    ``forward``: ``(B, C_in, *S)`` -> logits ``(B, num_classes)``; :meth:`features` gives the pooled ``(B, C)``.
    The encoder stays at ``self.encoder`` (its state dict under ``encoder.``), the head at ``self.head``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        feature_channels: int,
        num_classes: int,
        hidden_channels: int | None = None,
        dropout: float = 0.0,
        tokens: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = ClassificationHead(feature_channels, num_classes, hidden_channels, dropout)
        self.tokens = tokens

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Global average of the coarsest encoder output: ``(B, C_in, *S)`` -> ``(B, C)``."""
        output = self.encoder(x)
        if self.tokens:
            return output[0].mean(dim=1)
        return output[-1].flatten(2).mean(dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _swin(in_channels: int, roi_size: Sequence[int], feature_size: int = 48, **options) -> tuple[nn.Module, int, bool]:
    encoder = SwinTransformer(
        in_chans=in_channels,
        embed_dim=feature_size,
        window_size=(7, 7, 7),
        patch_size=(2, 2, 2),
        depths=(2, 2, 2, 2),
        num_heads=(3, 6, 12, 24),
        **options,
    )
    return encoder, 16 * feature_size, False


def _vit(in_channels: int, roi_size: Sequence[int], **options) -> tuple[nn.Module, int, bool]:
    options = {"patch_size": PATCH_SIZE, **VIT_SIZES["base"], **options}
    encoder = ViT(in_channels, img_size=tuple(roi_size), proj_type="conv", classification=False, **options)
    return encoder, options["hidden_size"], True


def _hyspark(in_channels: int, roi_size: Sequence[int], **options) -> tuple[nn.Module, int, bool]:
    encoder = HybridEncoder(in_channels, **options)
    return encoder, encoder.feature_channels[-1], False


def _mim(in_channels: int, roi_size: Sequence[int], **options) -> tuple[nn.Module, int, bool]:
    encoder = ConvViT3D(in_channels, **options)
    return encoder, encoder.feature_channels[-1], False


_ENCODERS: dict[str, Callable[..., tuple[nn.Module, int, bool]]] = {
    "swin": _swin,
    "vit": _vit,
    "hyspark": _hyspark,
    "mim": _mim,
}


def classification_network(
    arch: str = "swin",
    in_channels: int = 1,
    num_classes: int = 3,
    roi_size: Sequence[int] = (96, 96, 96),
    encoder_config: Mapping | None = None,
    hidden_channels: int | None = None,
    dropout: float = 0.0,
) -> EncoderClassifier:
    """Build the volume classifier named by ``arch``.

    Args:
        arch: one of :data:`CLASSIFICATION_ARCHS`.
        in_channels: image channels (1 for CT).
        num_classes: number of classes.
        roi_size: input size; ``vit`` needs it (its position embedding is learned for one grid), the others
            take any size divisible by 32 (``swin``) or 16 (``hyspark``, ``mim``).
        encoder_config: keyword arguments of the encoder, e.g. ``{"feature_size": 12}`` for ``swin`` or
            :func:`classification_encoder_config` ``(arch, cpu_demo_scale)``; the paper's sizes when ``None``.
            Must match the checkpoint the encoder is initialised from.
        hidden_channels, dropout: the head (see :class:`ClassificationHead`).

    Returns:
        An :class:`EncoderClassifier` mapping ``(B, in_channels, *roi_size)`` to logits ``(B, num_classes)``.

    Raises:
        ValueError: ``arch`` is not one of :data:`CLASSIFICATION_ARCHS`.
    """
    if arch not in _ENCODERS:
        raise ValueError(f"unknown classification arch {arch!r}; choose one of {CLASSIFICATION_ARCHS}")
    encoder, channels, tokens = _ENCODERS[arch](in_channels, roi_size, **(encoder_config or {}))
    return EncoderClassifier(encoder, channels, num_classes, hidden_channels, dropout, tokens)


def classification_spec(
    channel_def: Mapping,
    arch: str = "mim",
    in_channels: int = 1,
    roi_size: Sequence[int] = (96, 96, 96),
    encoder_config: Mapping | None = None,
    dropout: float = 0.0,
    lora_rank: int = 0,
    pixdim: Sequence[float] = (1.5, 1.5, 1.5),
) -> NetworkSpec:
    """The :class:`~common.networks.spec.NetworkSpec` of a volume classifier: what ``ct_classification3d`` saves
    with its weights and rebuilds for inference.

    Args:
        channel_def: output index -> class name (``metadata.json``'s ``channel_def``); one logit per class.
        arch, in_channels, roi_size, encoder_config, dropout: :func:`classification_network`; ``encoder_config``
            ``None`` is the paper's sizes.
        lora_rank: rank of the LoRA adapters in the encoder (:func:`common.lora.add_lora`); 0 for none.
        pixdim: the voxel spacing (mm) the network was trained at, which inference resamples to before resizing
            the body crop to ``roi_size``.
    """
    labels = {str(index): name for index, name in channel_def.items()}
    encoder = dict(encoder_config) if encoder_config is not None else classification_encoder_config(arch)
    arguments = {
        "channel_def": labels,
        "arch": arch,
        "in_channels": in_channels,
        "roi_size": list(roi_size),
        "encoder_config": encoder,
        "dropout": dropout,
        "lora_rank": lora_rank,
        "pixdim": list(pixdim),
    }
    return NetworkSpec(
        factory="common.networks.classification_spec",
        arguments=arguments,
        network=lambda: classification_network(arch, in_channels, len(labels), roi_size, encoder, dropout=dropout),
        adapters=lambda network: add_lora(network, lora_rank, target="encoder"),
        preprocessing={"roi_size": list(roi_size), "pixdim": list(pixdim)},
        input_shape=list(roi_size),
    )
