"""Low-rank adaptation (LoRA) of a pre-trained encoder for parameter-efficient fine-tuning.

LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022, eq. 3) keeps a
pre-trained weight ``W0`` (``out x in``) frozen and learns a low-rank update::

    h = W0 x + (alpha / r) * B A x,    A: (r, in), B: (out, r),  A random, B = 0 at init

so the adapted network equals the original one at initialisation. MiM (Tables XIII-XIV) fine-tunes the
encoder with ranks 4 / 8 / 16 this way.

Layers covered (exact types only, inside the ``target`` submodule):

* ``nn.Linear``: MONAI ``SABlock`` (``attn.qkv``, ``attn.out_proj``), ``MLPBlock`` (``mlp.linear1``,
  ``mlp.linear2``), SwinUNETR ``WindowAttention`` (``qkv``, ``proj``) and ``PatchMerging.reduction``.
  Computed as the paper writes it: ``F.linear(x, W0, b) + scale * B (A x)``.
* ``nn.Conv3d`` of any kernel size, stride, dilation, padding mode and ``groups``: 3x3x3, 1x1x1 and
  depth-wise (``groups == channels``) convolutions, the patch embeddings of SwinUNETR and MONAI's ``ViT``.
  A convolution is a linear map of its unfolded input patches with the matrix
  ``W0.view(out, in / groups * kd * kh * kw)``; LoRA factorises the update of that matrix, ``dW = B A``
  with ``A: (r, in / groups * kd * kh * kw)``, ``B: (out, r)``, and the layer convolves with
  ``W0 + scale * dW`` (one convolution; the backward pass computes one weight gradient per adapted
  convolution, as full fine-tuning does). For a depth-wise convolution the rows of that matrix are the
  per-channel kernels, so the update keeps every channel's kernel change in one shared ``r``-dimensional
  space of kernels; ranks above ``min(out, in / groups * kd * kh * kw)`` are allowed but add nothing.

Not covered (left frozen inside the target; list them in ``trainable`` to train them fully):
norms, biases of other layers, position embeddings and class tokens (bare parameters); subclasses
of ``nn.Linear`` / ``nn.Conv3d`` (e.g. ``nn.MultiheadAttention.out_proj``, whose weight
``nn.MultiheadAttention`` reads directly, bypassing the layer's ``forward``), ``nn.MultiheadAttention``
itself, ``nn.ConvTranspose3d`` (decoders) and the sparse convolutions of ``common.sparse``.

Why not PEFT: ``peft`` 0.21.2 (the newest release) hard-requires ``transformers``, ``accelerate``,
``huggingface_hub``, ``tokenizers``, ``safetensors`` and 11 more packages (about 180 MB, no
torchvision), and on ``nn.Conv3d`` it cannot merge 1x1x1 kernels (huggingface/peft#3768, fixed after
0.21.2), rejects depth-wise convolutions unless the rank is a multiple of ``groups`` and cannot
merge any ``groups > 1`` convolution. This module is the 3D-encoder subset we need.

Adapters are attached in place: the layer's class is switched to :class:`LoRALinear` /
:class:`LoRAConv3d` (subclasses of the original class), which adds the parameters ``lora_A`` and
``lora_B`` to it. No parameter is renamed, so after :func:`add_lora` the state dict holds the original
keys unchanged plus ``<layer>.lora_A`` and ``<layer>.lora_B`` per adapted layer, e.g.
``swinViT.layers1.0.blocks.0.attn.qkv.weight`` and ``swinViT.layers1.0.blocks.0.attn.qkv.lora_A``.
After :func:`merge_lora` the state dict has exactly the original keys again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


class _LoRA:
    """Mixin of the adapted layers: the update ``dW = scale * B A`` of the weight ``W0`` and its merge."""

    weight: nn.Parameter
    lora_A: nn.Parameter
    lora_B: nn.Parameter
    scale: float
    plain: type[nn.Module]

    @classmethod
    def attach(cls, layer: nn.Module, rank: int, alpha: float) -> None:
        """Turn ``layer`` (of class ``cls.plain``) into a LoRA layer in place.

        ``A`` (``rank x fan_in``) gets the Kaiming-uniform init of ``nn.Linear`` (as PEFT and Microsoft's
        ``loralib``; the paper says "random Gaussian"), ``B`` (``out x rank``) is zero.
        """
        weight = layer.weight
        layer.__class__ = cls
        layer.lora_A = nn.Parameter(weight.new_empty(rank, weight[0].numel()))
        nn.init.kaiming_uniform_(layer.lora_A, a=math.sqrt(5))
        layer.lora_B = nn.Parameter(weight.new_zeros(weight.shape[0], rank))
        layer.scale = alpha / rank

    def delta_weight(self) -> torch.Tensor:
        """``scale * B A`` reshaped like ``weight``."""
        return (self.scale * self.lora_B @ self.lora_A).view_as(self.weight)

    def merge(self) -> None:
        """Fold the update into ``weight`` and turn the layer back into its plain class."""
        with torch.no_grad():
            self.weight += self.delta_weight()
        del self.lora_A, self.lora_B, self.scale
        self.__class__ = self.plain


class LoRALinear(_LoRA, nn.Linear):
    """``nn.Linear`` with a LoRA update: ``y = W0 x + b + scale * B (A x)``, x: ``(..., in)``, y: ``(..., out)``."""

    plain = nn.Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + self.scale * F.linear(F.linear(x, self.lora_A), self.lora_B)


class LoRAConv3d(_LoRA, nn.Conv3d):
    """``nn.Conv3d`` convolving with ``W0 + scale * (B A).view_as(W0)``, x: ``(N, in, D, H, W)``."""

    plain = nn.Conv3d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight + self.delta_weight(), self.bias)


_ADAPTERS: dict[type[nn.Module], type[_LoRA]] = {nn.Linear: LoRALinear, nn.Conv3d: LoRAConv3d}


def add_lora(
    model: nn.Module,
    rank: int,
    alpha: float | None = None,
    target: str | None = None,
    trainable: Sequence[str] = (),
) -> nn.Module:
    """Add rank-``rank`` LoRA adapters to the ``nn.Linear`` / ``nn.Conv3d`` layers of ``model.<target>``.

    Call it after loading the pre-trained weights (a pre-trained checkpoint still loads afterwards, with
    ``strict=False`` or :func:`common.transfer.load_pretrained`, the ``lora_A`` / ``lora_B`` keys then
    being reported missing), and build the optimizer from the parameters with ``requires_grad``.

    Args:
        model: the downstream network, modified in place.
        rank: LoRA rank ``r``; 0 returns ``model`` unchanged (nothing frozen, no adapter).
        alpha: the update is scaled by ``alpha / rank``. Default ``rank``: scale 1 at every rank, the ratio of
            PEFT's defaults (``r=8, lora_alpha=8``), so a rank sweep (4 / 8 / 16) does not also sweep the
            update's effective learning rate, which a fixed ``alpha`` scales by ``1 / r``. The paper fixes
            ``alpha`` to the first rank tried and keeps it for every rank (Microsoft's ``loralib`` default is
            ``alpha=1``); pass a fixed ``alpha`` to follow it.
        target: dotted name of the submodule to adapt (``"encoder"``, ``"swinViT"``, ``"vit"``); None adapts
            the whole model. Every original parameter of the target is frozen; parameters outside it
            (the new head, the decoder) are left as they are, i.e. trainable.
        trainable: name substrings (matched against ``model.named_parameters()``) of parameters to keep
            trainable inside the target too, e.g. ``("norm",)``; with ``target=None`` name the head here.

    Returns:
        ``model`` itself. Its state dict keeps every original key and adds ``<layer>.lora_A`` /
        ``<layer>.lora_B``.

    Raises:
        ValueError: negative rank, the target already has adapters, or it has no layer to adapt.
    """
    if rank < 0:
        raise ValueError(f"LoRA rank must be >= 0, got {rank}")
    if rank == 0:
        return model
    root = model if target is None else model.get_submodule(target)
    where = f"'{target}'" if target else type(model).__name__
    if any(isinstance(module, _LoRA) for module in root.modules()):
        raise ValueError(f"{where} already has LoRA adapters; call merge_lora first")
    layers = [module for module in root.modules() if type(module) in _ADAPTERS]
    if not layers:
        raise ValueError(f"{where} has no nn.Linear or nn.Conv3d layer to adapt")

    alpha = float(rank if alpha is None else alpha)
    root.requires_grad_(False)
    for layer in layers:
        _ADAPTERS[type(layer)].attach(layer, rank, alpha)
    patterns = (trainable,) if isinstance(trainable, str) else tuple(trainable)
    for name, parameter in model.named_parameters():
        if any(pattern in name for pattern in patterns):
            parameter.requires_grad_(True)
    logger.info(
        "LoRA rank %d, alpha %g on %d layers of %s: %s", rank, alpha, len(layers), where, describe_trainable(model)
    )
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (``W0 + (alpha / r) B A``) and remove it, in place.

    The result is a plain network (``nn.Linear`` / ``nn.Conv3d`` layers) with exactly the original state
    dict keys, for export and inference; ``requires_grad`` flags are left as they are. A model without
    adapters is returned unchanged.
    """
    for module in model.modules():
        if isinstance(module, _LoRA):
            module.merge()
    return model


def trainable_parameter_share(model: nn.Module) -> tuple[int, int]:
    """(number of trainable parameters, number of parameters), shared parameters counted once."""
    parameters = list(model.parameters())
    return sum(p.numel() for p in parameters if p.requires_grad), sum(p.numel() for p in parameters)


def describe_trainable(model: nn.Module) -> str:
    """One line, e.g. ``"trainable 1.23 M of 45.60 M parameters (2.7 %)"``."""
    trainable, total = trainable_parameter_share(model)
    percent = 100 * trainable / max(total, 1)
    return f"trainable {trainable / 1e6:.2f} M of {total / 1e6:.2f} M parameters ({percent:.1f} %)"
