"""How the papers' authors released their weights, and where each tensor goes in this collection's methods.

One :class:`Source` per release layout, used by :mod:`tools.convert_checkpoint`. A source names the pre-training
bundle whose method the weights convert into, where the weights sit in the file, and two tables:

* :class:`Rule` s: a release name prefix (a regular expression matched at the start of the name) and what it
  becomes, the rest of the name kept; the first rule that matches wins, so specific rules come first. A rule may
  carry an exact value transform (e.g. an RGB stem convolution made grey, see :func:`grey_stem`).
* :class:`Dropped` s: release tensors that have no counterpart *by design*, with the reason; a fixed tensor the
  collection's network recomputes (sin-cos position embeddings) is compared with what the network uses
  (:func:`sincos_check`).

Names are matched after :func:`common.transfer.extract_state_dict` has found the tensors (under ``model`` /
``state_dict`` ...) and stripped the ``module.`` prefix of DistributedDataParallel.

Where the layouts come from (read in the official repositories):

* HySparK (github.com/FengheTan9/HySparK, ``models/network/hyspark_model.py``, ``main.py``): the released file is
  ``sparse_encoder.state_dict()``: ``embeddings.*`` (stem, ``layer1..5`` MedNeXt blocks, ``expend1..4`` widening
  convolutions) and ``mae.*`` (timm ViT blocks, ``norm``, a fixed sin-cos ``pos_embed`` (1, 216, 384) and a
  ``mask_token``).
* MiM (github.com/JiaxinZhuang/MiM, ``Pretrain/models_convmae3d_v4.py``, ``vision_transformer.py``):
  ``{"model": ..., "args": argparse.Namespace}``; ``patch_embed1..4`` (conv + LayerNorm), ``patch_embed5``
  (linear token embedding), ``blocks1..3`` (MCMAE ``CBlock3d``: ``attn`` is the 5^3 depth-wise convolution),
  ``blocks4`` (timm ViT blocks), ``stage{1,2,3}_output_decode``, ``norm``, a fixed ``pos_embed`` and the MAE
  decoder (``decoder_embed``, ``mask_token``, ``decoder_pos_embed``, ``decoder_blocks``, ``decoder_norm``,
  ``decoder_pred``).
* GL-MAE (github.com/JiaxinZhuang/GL-MAE, ``Finetune/models_3dvit.py`` ``load_pretrained_checkpoint``): DINO-style
  ``{"student": ..., "teacher": ...}``; the student's ViT under ``module.backbone.``: ``cls_token``, ``pos_embed``
  (1, 217, 768) with the cls token's slot first, ``patch_embed.proj``, timm ``blocks`` with qkv biases, ``norm``.
* SparK 2D as released by the 2D study (github.com/Wolfda95/SSL-MedicalImagining-CL-MAE, ``Downstream/*.ipynb``):
  ``{"module": <ResNet-50 state dict>}`` with timm / torchvision names (``conv1``, ``bn1``, ``layer1.0.conv1`` ...,
  ``downsample.0/1``; MONAI's :class:`~monai.networks.nets.ResNet` uses the same names).
* MoCo v2, BYOL and SwAV of the 2D study (its ``Pre-Training/Contrastive_Learning/pl_bolts`` code): PyTorch
  Lightning checkpoints ``{"state_dict": ...}`` of lightning-bolts modules: MoCo ``encoder_q.`` / ``encoder_k.``
  (torchvision ResNet-50 whose ``fc`` is the MLP head), ``queue`` (128, K); BYOL ``online_network.encoder.`` /
  ``.projector.model.`` / ``.predictor.model.`` and their ``target_network`` copies; SwAV ``model.`` (ResNet-50,
  ``projection_head``, ``prototypes``).

The 2D study fed its grey CT slices as three identical channels (``gray_to_rgb`` in its notebooks), so its stems are
RGB convolutions; this collection's ResNets take one channel (:func:`grey_stem`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from common.layers import sincos_position_embedding
from common.transforms.slices import IMAGENET_GREY_INTENSITY

# A value transform: (release tensor, the tensor of the method it replaces, the whole release state) -> new value.
Transform = Callable[[torch.Tensor, torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor]

# timm's ViT ``Block`` -> MONAI's ``TransformerBlock`` (same qkv layout: 3 x heads x head width).
TIMM_TO_MONAI_BLOCK = {
    "norm1": "norm1",
    "attn.qkv": "attn.qkv",
    "attn.proj": "attn.out_proj",
    "norm2": "norm2",
    "mlp.fc1": "mlp.linear1",
    "mlp.fc2": "mlp.linear2",
}
FIXED_SINCOS = "fixed sin-cos position embedding (not learnt); the network computes its own, in the official order"


@dataclass(frozen=True)
class Rule:
    """Release tensors whose name starts with ``pattern`` (a regular expression) are renamed to ``replacement``
    (``\\1`` ... refer to its groups) followed by the rest of the name, and their value passed through
    ``transform`` when one is given."""

    pattern: str
    replacement: str
    transform: Transform | None = None

    def rename(self, name: str) -> str | None:
        """The new name of ``name``, or ``None`` when the rule does not apply to it."""
        match = re.match(self.pattern, name)
        return None if match is None else match.expand(self.replacement) + name[match.end() :]


@dataclass(frozen=True)
class Dropped:
    """Release tensors whose name starts with ``pattern`` that have no counterpart by design, and ``reason``.

    ``check`` compares such a tensor with what the collection's network uses instead and returns a message when
    they differ (the conversion then warns), or ``None`` when they are equal (the report says so).
    """

    pattern: str
    reason: str
    check: Callable[[torch.Tensor], str | None] | None = None

    def applies(self, name: str) -> bool:
        return re.match(self.pattern, name) is not None


@dataclass(frozen=True)
class Source:
    """A release layout and its conversion into the method of a pre-training bundle.

    Args:
        name: the ``--source`` name.
        bundle: the pre-training bundle whose ``network_spec`` (``configs/train.json``) the weights convert into.
        layout: one line on the released file.
        rules: renaming rules, tried in order.
        dropped: release tensors left out by design.
        container: a top-level key holding the weights besides :data:`common.transfer.STATE_DICT_KEYS`
            (``"student"``, ``"module"``).
        required: name prefix of the method's tensors that the release must provide in full (the encoder: what
            the downstream bundles load with ``--pretrained``).
        settings: ``train.json`` values the release was trained with that its converted ``network_spec`` must carry
            (``(id, value)`` pairs): the 2D releases' input normalisation, which inference repeats.
    """

    name: str
    bundle: str
    layout: str
    rules: tuple[Rule, ...]
    dropped: tuple[Dropped, ...] = ()
    container: str | None = None
    required: str = "encoder."
    settings: tuple[tuple[str, object], ...] = ()

    def rename(self, name: str) -> tuple[Rule, str] | None:
        """The first rule that applies to the release name ``name`` and the new name, or ``None``."""
        for rule in self.rules:
            new = rule.rename(name)
            if new is not None:
                return rule, new
        return None


def prefix(old: str, new: str, transform: Transform | None = None) -> Rule:
    """Rename the literal prefix ``old`` to ``new``."""
    return Rule(re.escape(old), new, transform)


def timm_blocks(old: str, new: str) -> tuple[Rule, ...]:
    """timm ViT blocks under ``old`` (``old<i>.attn.proj.weight`` ...) -> MONAI ``TransformerBlock`` s under ``new``."""
    return tuple(
        Rule(rf"{re.escape(old)}(\d+)\.{re.escape(timm)}\.", rf"{new}\1.{monai}.")
        for timm, monai in TIMM_TO_MONAI_BLOCK.items()
    )


def grey_stem(tensor: torch.Tensor, target: torch.Tensor, release: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """An RGB stem convolution ``(C, 3, k, k)`` for a grey one ``(C, 1, k, k)``: the sum over the colour channels,
    which gives the same output on a grey image repeated in three channels, as the 2D study fed its slices (the
    input normalisation is not part of the weights). Other shapes are returned unchanged."""
    if tensor.dim() == 4 and tensor.shape[1] == 3 and target.shape[1] == 1:
        return tensor.sum(dim=1, keepdim=True)
    return tensor


def resnet(old: str, new: str) -> tuple[Rule, ...]:
    """A timm / torchvision / lightning-bolts ResNet under ``old`` -> :class:`~common.networks.resnet.ResNetEncoder`
    under ``new`` (same names below the prefix; the stem made grey by :func:`grey_stem`)."""
    return prefix(f"{old}conv1.", f"{new}conv1.", grey_stem), prefix(old, new)


def transposed(tensor: torch.Tensor, target: torch.Tensor, release: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """MoCo's queue of keys as columns ``(dim, K)`` -> as rows ``(K, dim)`` (:class:`~common.methods.moco.KeyQueue`)."""
    return tensor.t() if tensor.dim() == 2 and tensor.t().shape == target.shape else tensor


def scalar(tensor: torch.Tensor, target: torch.Tensor, release: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """A one-element pointer ``(1,)`` -> a 0-d tensor."""
    return tensor.reshape(()) if tensor.numel() == 1 and target.dim() == 0 else tensor


def position_tokens(tensor: torch.Tensor, target: torch.Tensor, release: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """A position embedding ``(1, 1 + L, W)`` whose first slot belongs to the cls token -> the ``(1, L, W)`` of the
    patch tokens (the slot goes into the cls token, :func:`cls_with_position`)."""
    return tensor[:, 1:] if tensor.dim() == 3 and tensor.shape[1] == target.shape[1] + 1 else tensor


def cls_with_position(position: str) -> Transform:
    """The cls token plus the first slot of the release's position embedding ``position``: DINO / MAE ViTs add
    ``pos_embed[:, 0]`` to the cls token, :class:`~common.networks.vit.MaskedViT` adds nothing to it, so folding
    the slot into the token gives the same input to the first block."""

    def add_cls_position(
        tensor: torch.Tensor, target: torch.Tensor, release: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        embedding = release.get(position)
        if embedding is None or embedding.dim() != 3 or embedding.shape[-1] != tensor.shape[-1]:
            return tensor
        return tensor + embedding[:, :1]

    return add_cls_position


def sincos_check(extra_tokens: int = 0) -> Callable[[torch.Tensor], str | None]:
    """A check of a release's fixed position embedding ``(1, extra_tokens + L, W)`` of a cubic grid against
    :func:`common.layers.sincos_position_embedding`, which the collection's networks add instead.

    HySparK's and MiM's official builders give exactly that embedding (band ``a`` codes grid axis ``a``, tokens in
    the raster order of ``flatten(2)``), so their releases pass. An embedding in MONAI's order (grid axes 0 and 1
    exchanged) or not sin-cos at all is named: the converted blocks would see other positions than they learnt.
    """

    def check(tensor: torch.Tensor) -> str | None:
        if tensor.dim() != 3:
            return f"shape {tuple(tensor.shape)} is not (1, tokens, width); not compared"
        cells, width = tensor.shape[1] - extra_tokens, tensor.shape[-1]
        side = round(cells ** (1 / 3))
        if side**3 != cells or width % 6:
            return f"shape {tuple(tensor.shape)} is not a cubic grid of a width divisible by 6; not compared"
        release = tensor[0, extra_tokens:].float()
        ours = sincos_position_embedding((side,) * 3, width, "cpu")
        if torch.allclose(release, ours, atol=1e-4):
            return None
        axis_0, axis_1, axis_2 = ours.split(width // 3, dim=1)
        if torch.allclose(release, torch.cat((axis_1, axis_0, axis_2), dim=1), atol=1e-4):
            return (
                "is the sin-cos embedding with grid axes 0 and 1 exchanged (MONAI's build_sincos_position_embedding "
                "order), not the official order the network computes: the converted blocks see those axes exchanged"
            )
        difference = float((release - ours).abs().max())
        return f"differs from the sin-cos embedding the network computes (max |difference| {difference:.3g})"

    return check


def mae_decoder(old: str) -> tuple[Rule, ...]:
    """MiM's and GL-MAE's MAE decoder under ``old`` (timm blocks) -> :class:`common.networks.mae_decoder.MAEDecoder`
    (``mask_token`` is the decoder's)."""
    return (
        prefix(f"{old}decoder_embed.", "decoder.embed."),
        Rule(rf"{re.escape(old)}mask_token$", "decoder.mask_token"),
        *timm_blocks(f"{old}decoder_blocks.", "decoder.blocks."),
        prefix(f"{old}decoder_norm.", "decoder.norm."),
        prefix(f"{old}decoder_pred.", "decoder.predict."),
    )


HYSPARK = Source(
    name="hyspark",
    bundle="hyspark_pretrain",
    layout="plain state dict: embeddings.* (MedNeXt CNN), mae.* (ViT, pos_embed (1, 216, 384))",
    rules=(
        prefix("embeddings.stem.", "encoder.stem."),
        *(prefix(f"embeddings.layer{k}.", f"encoder.stages.{k - 1}.") for k in range(1, 6)),
        *(prefix(f"embeddings.expend{k}.", f"encoder.widen.{k - 1}.") for k in range(1, 5)),
        *timm_blocks("mae.blocks.", "encoder.vit.blocks."),
        prefix("mae.norm.", "encoder.vit.norm."),
    ),
    dropped=(
        Dropped(r"mae\.pos_embed$", FIXED_SINCOS, sincos_check()),
        Dropped(
            r"mae\.mask_token$",
            "the ViT's fill-in for masked cells, which HySparK's densify step overwrites with its own mask token: "
            "it never reaches the loss, so it is never trained",
        ),
    ),
)

MIM = Source(
    name="mim",
    bundle="mim_pretrain",
    layout='{"model": ..., "args": Namespace} (pickled): patch_embed1..5, blocks1..4, stage*_output_decode, decoder_*',
    rules=(
        *(prefix(f"patch_embed{k}.proj.", f"encoder.patch_embeds.{k - 1}.0.") for k in range(1, 5)),
        *(prefix(f"patch_embed{k}.norm.", f"encoder.patch_embeds.{k - 1}.1.") for k in range(1, 5)),
        prefix("patch_embed5.", "encoder.token_embed."),
        *(prefix(f"stage{k}_output_decode.", f"encoder.stage_projections.{k - 1}.") for k in range(1, 4)),
        *(Rule(rf"blocks{k}\.(\d+)\.attn\.", rf"encoder.conv_stages.{k - 1}.\1.dwconv.") for k in range(1, 4)),
        *(Rule(rf"blocks{k}\.(\d+)\.mlp\.fc1\.", rf"encoder.conv_stages.{k - 1}.\1.mlp.0.") for k in range(1, 4)),
        *(Rule(rf"blocks{k}\.(\d+)\.mlp\.fc2\.", rf"encoder.conv_stages.{k - 1}.\1.mlp.2.") for k in range(1, 4)),
        *(Rule(rf"blocks{k}\.(\d+)\.", rf"encoder.conv_stages.{k - 1}.\1.") for k in range(1, 4)),
        *timm_blocks("blocks4.", "encoder.blocks."),
        prefix("norm.", "encoder.norm."),
        *mae_decoder(""),
    ),
    dropped=(
        Dropped(r"pos_embed$", FIXED_SINCOS, sincos_check()),
        Dropped(r"decoder_pos_embed$", FIXED_SINCOS, sincos_check()),
    ),
)

GLMAE = Source(
    name="glmae",
    bundle="glmae_pretrain",
    layout='DINO-style {"student": ...}: module.backbone.* ViT-B, pos_embed (1, 217, 768) with the cls slot first',
    rules=(
        prefix("backbone.cls_token", "encoder.cls_token", cls_with_position("backbone.pos_embed")),
        prefix("backbone.pos_embed", "encoder.vit.patch_embedding.position_embeddings", position_tokens),
        prefix("backbone.patch_embed.proj.", "encoder.vit.patch_embedding.patch_embeddings."),
        *timm_blocks("backbone.blocks.", "encoder.vit.blocks."),
        prefix("backbone.norm.", "encoder.vit.norm."),
        *mae_decoder("backbone."),
    ),
    dropped=(Dropped(r"backbone\.decoder_pos_embed$", FIXED_SINCOS, sincos_check(extra_tokens=1)),),
    container="student",
)

# The contrastive releases' input normalisation: the study's fixed mean / std of its LIDC slices (moco2_module.py
# l. 41-42, byol_module.py l. 22-23, multicropdataset.py l. 48-50).
STUDY_INTENSITY = (0.1806, 0.1907)

SPARK2D = Source(
    name="spark2d",
    bundle="spark2d_pretrain",
    layout='{"module": ...}: a timm / torchvision ResNet-50 state dict',
    rules=resnet("", "encoder."),
    dropped=(Dropped(r"fc\.", "the ImageNet classifier of the timm / torchvision ResNet, which SparK never trains"),),
    container="module",
    settings=(("intensity", list(IMAGENET_GREY_INTENSITY)),),  # Masked_Autoencoder/utils/imagenet.py l. 65
)

MOCO2D = Source(
    name="moco2d",
    bundle="moco2d_pretrain",
    layout='Lightning {"state_dict": ...}: encoder_q.* / encoder_k.* (ResNet-50, fc = MLP head), queue (128, K)',
    rules=(
        prefix("encoder_q.fc.0.", "projector.0."),
        prefix("encoder_q.fc.2.", "projector.2."),
        prefix("encoder_k.fc.0.", "key_projector.0."),
        prefix("encoder_k.fc.2.", "key_projector.2."),
        *resnet("encoder_q.", "encoder."),
        *resnet("encoder_k.", "key_encoder."),
        Rule(r"queue$", "queue.keys", transposed),
        Rule(r"queue_ptr$", "queue.pointer", scalar),
    ),
    dropped=(Dropped(r"val_queue(_ptr)?$", "lightning-bolts' dictionary of validation keys, never used in training"),),
    settings=(("intensity", list(STUDY_INTENSITY)),),
)

BYOL2D = Source(
    name="byol2d",
    bundle="byol2d_pretrain",
    layout='Lightning {"state_dict": ...}: online_network.{encoder,projector,predictor}.*, target_network.*',
    rules=(
        *resnet("online_network.encoder.", "encoder."),
        prefix("online_network.projector.model.", "projector."),
        prefix("online_network.predictor.model.", "predictor."),
        *resnet("target_network.encoder.", "target_encoder."),
        prefix("target_network.projector.model.", "target_projector."),
    ),
    dropped=(
        Dropped(
            r"target_network\.predictor\.",
            "lightning-bolts copies the whole online arm into the target network, whose predictor BYOL never uses",
        ),
    ),
    settings=(("intensity", list(STUDY_INTENSITY)),),
)

SWAV2D = Source(
    name="swav2d",
    bundle="swav2d_pretrain",
    layout='Lightning {"state_dict": ...}: model.* (ResNet-50, projection_head, prototypes)',
    rules=(
        prefix("model.projection_head.", "projector."),
        prefix("model.prototypes.", "prototypes."),
        *resnet("model.", "encoder."),
    ),
    settings=(("intensity", list(STUDY_INTENSITY)),),
)

SOURCES: dict[str, Source] = {s.name: s for s in (HYSPARK, MIM, GLMAE, SPARK2D, MOCO2D, BYOL2D, SWAV2D)}


def get_source(name: str) -> Source:
    """The :class:`Source` called ``name``.

    Raises:
        ValueError: no source has that name.
    """
    if name not in SOURCES:
        raise ValueError(f"unknown --source {name!r}; choose one of {', '.join(SOURCES)}")
    return SOURCES[name]
