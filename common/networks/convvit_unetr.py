"""MiM's official 5-level segmentation network: :class:`~common.networks.convvit.ConvViT3D` under a Swin UNETR decoder.

The official MiM fine-tuning code (github.com/JiaxinZhuang/MiM, commit 79130387) builds ``ConvViT3dUNETR`` for
``--model_name MiM`` (``Finetune/networks/net.py`` lines 13 and 237-243, from ``Pretrain/networks/convvit3d_unetr.py``)
with ``feature_size`` 48 (``Finetune/configs/downstream_configs.yaml`` line 29). Its backbone
(``Pretrain/models_convvit3d_seg.py``: ``ConvViT3d``, lines 165-373, widths ``[48, 96, 192, 384, 768]``, lines
376-394) adds a fifth, 1/32 stage to the four ConvViT stages, ``fpn``: ``Conv3d(k=2, s=2)``, SyncBatchNorm, GELU on
the ViT output (lines 235-240 and 365), and returns all five maps layer-normed over channels without affine
parameters (``proj_out``, lines 305-318, with ``normalize=True`` from ``convvit3d_unetr.py`` lines 105 and 293). The
decoder is MONAI's Swin UNETR decoder (``convvit3d_unetr.py`` lines 141-240 and 292-305): a ``UnetrBasicBlock`` on
the image, on each of stages 1-3 (``encoder1`` .. ``encoder4``) and on the 1/32 map (``encoder10``), the 1/16 map
entering the decoder as it is, five ``UnetrUpBlock`` and a ``UnetOutBlock``.

The encoder here is the one ``mim_pretrain`` pre-trains, whole: its 1/16 map is the ViT output with the stage 1-3
projections added, then LayerNorm-ed (MCMAE's fusion; the official pre-training model has both,
``Pretrain/models_convmae3d_v4.py`` lines 44-46 and 70), where the official fine-tuning backbone leaves both out and
gives its ViT a learnt position embedding, a relative position bias and layer scale (``models_convvit3d_seg.py``
lines 195-196, 227-232 and 388-391).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from torch import nn

from common.networks.convvit import ConvViT3D


def channel_layer_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm of a ``(B, C, *S)`` map over ``C`` without affine parameters (Swin UNETR's ``proj_out``)."""
    return F.layer_norm(x.movedim(1, -1), x.shape[1:2]).movedim(-1, 1)


class ConvViTUNETR(nn.Module):
    """MiM's official fine-tuning network (``ConvViT3dUNETR``): 5 encoder levels, layer-normed skips.

    With ``f = feature_size`` and ``w = widths``, for an input ``(B, in_channels, *S)`` (paper: ``f`` 48,
    ``w`` (48, 96, 192, 384), ``S`` 96^3):

    * full scale: the image -> ``skips[0]`` -> ``(B, f, *S)`` (48 @ 96^3);
    * 1/2: stage 1 ``(B, w[0], *S/2)``, normed -> ``skips[1]`` -> ``(B, f, *S/2)`` (48 @ 48^3);
    * 1/4: stage 2 ``(B, w[1], *S/4)``, normed -> ``skips[2]`` -> ``(B, 2f, *S/4)`` (96 @ 24^3);
    * 1/8: stage 3 ``(B, w[2], *S/8)``, normed -> ``skips[3]`` -> ``(B, 4f, *S/8)`` (192 @ 12^3);
    * 1/16: stage 4 (the ViT) ``(B, w[3], *S/16)``, normed, is the skip itself: ``w[3] = 8f`` (384 @ 6^3);
    * 1/32: ``stage5`` (``Conv3d(k=2, s=2)``, BatchNorm, GELU) on stage 4 -> ``(B, 2 w[3], *S/32)``, normed ->
      ``bottleneck`` -> ``(B, 16f, *S/32)`` (768 @ 3^3), the decoder's input;

    then ``ups[4]`` .. ``ups[0]`` (``UnetrUpBlock``: transposed convolution x2, concatenation with the skip,
    residual block) go 16f -> 8f -> 4f -> 2f -> f -> f back to full resolution and ``head`` (1x1x1) gives the
    logits. "normed": :func:`channel_layer_norm`.

    ``encoder`` is the pre-trained ConvViT (``mim_pretrain``'s ``encoder.*``, all of it); ``stage5`` (the official
    backbone's ``fpn``, not pre-trained) is kept outside it, so it trains under ``freeze_encoder`` and LoRA.

    Args:
        in_channels: image channels.
        out_channels: classes including background.
        feature_size: decoder width ``f`` at full resolution. The 1/16 map enters the decoder without a block,
            so ``8 f`` must equal ``widths[-1]``; ``None`` takes ``widths[-1] // 8`` (48 for the paper's encoder).
        widths, depths, num_heads: the encoder (:class:`~common.networks.convvit.ConvViT3D`).

    Forward: ``(B, in_channels, *S)``, ``S`` divisible by 32 -> logits ``(B, out_channels, *S)``.

    Raises:
        ValueError: ``8 * feature_size != widths[-1]``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 14,
        feature_size: int | None = None,
        widths: Sequence[int] = (48, 96, 192, 384),
        depths: Sequence[int] = (2, 2, 2, 11),
        num_heads: int = 12,
    ) -> None:
        super().__init__()
        feature_size = feature_size or widths[-1] // 8
        if 8 * feature_size != widths[-1]:
            raise ValueError(
                f"the official MiM network feeds the 1/16 map ({widths[-1]} channels) to the decoder as it is, so "
                f"feature_size must be {widths[-1]} / 8; got {feature_size}"
            )
        self.encoder = ConvViT3D(in_channels, widths, depths, num_heads)
        deep = 2 * widths[-1]
        self.stage5 = nn.Sequential(
            nn.Conv3d(widths[-1], deep, kernel_size=2, stride=2), nn.BatchNorm3d(deep), nn.GELU()
        )
        sizes = [feature_size * 2 ** max(i - 1, 0) for i in range(6)]  # f, f, 2f, 4f, 8f, 16f: full .. 1/32
        block = dict(spatial_dims=3, kernel_size=3, norm_name="instance", res_block=True)
        self.skips = nn.ModuleList(
            UnetrBasicBlock(in_channels=c_in, out_channels=c_out, stride=1, **block)
            for c_in, c_out in zip([in_channels, *widths[:-1]], sizes)
        )
        self.bottleneck = UnetrBasicBlock(in_channels=deep, out_channels=sizes[5], stride=1, **block)
        self.ups = nn.ModuleList(
            UnetrUpBlock(in_channels=sizes[i + 1], out_channels=sizes[i], upsample_kernel_size=2, **block)
            for i in range(5)
        )
        self.head = UnetOutBlock(3, feature_size, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        *stages, vit, deep = map(channel_layer_norm, [*features, self.stage5(features[-1])])
        skips = [skip(f) for skip, f in zip(self.skips, [x, *stages])] + [vit]
        y = self.bottleneck(deep)
        for up, skip in zip(reversed(self.ups), reversed(skips)):
            y = up(y, skip)
        return self.head(y)
