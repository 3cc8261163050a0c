"""Convert the weights the papers' authors released into checkpoints of this collection.

::

    python -m tools.convert_checkpoint --source hyspark hyspark_encoder.pth hyspark_converted.pt
    python -m tools.convert_checkpoint --source mim --trust_pickle mim_pretrained.pth mim_converted.pt
    python -m tools.convert_checkpoint --source glmae --trust_pickle --allow_partial glmae.pth glmae_converted.pt
    python -m tools.convert_checkpoint --source byol2d BYOL.ckpt byol_converted.pt
    python -m monai.bundle run --config_file bundles/btcv_segmentation/configs/train.json --arch hyspark \\
           --pretrained hyspark_converted.pt
    python -m monai.bundle run --config_file bundles/ct_slice_classification/configs/train.json \\
           --pretrained byol_converted.pt

The release's tensors are renamed (and where needed changed in form, exactly) into the state dict of the method of the
matching pre-training bundle, checked name by name and shape by shape against that method, and written as the bundle's
``models/model.pt`` is: the converted tensors (``encoder.*`` and whatever else corresponds) under ``"model"``, with the
method's ``network_spec`` (:func:`common.methods.method_spec`). Downstream bundles load it with ``--pretrained OUT``
(:func:`common.transfer.load_pretrained`), their encoder built at the release's sizes on any machine
(:func:`common.transfer.pretrained_encoder_setting`); it is not a complete pre-training state to resume from. The
method is the bundle's ``configs/train.json`` ``network_spec`` at paper scale (``cpu_demo_scale`` false); a release of
other sizes needs ``--overrides`` of ids of that config, e.g. ``--overrides "{'depth': 18}"``. A 2D release's spec
carries the input normalisation it was trained with (:attr:`tools.checkpoint_sources.Source.settings`: ImageNet's for
SparK, the study's fixed 0.1806 / 0.1907 for MoCo v2, BYOL and SwAV), which the bundle's ``inference.json`` repeats.

=========  =================  ==========================================================================================
source     into               release layout (``module.`` prefixes of DistributedDataParallel are stripped first)
=========  =================  ==========================================================================================
hyspark    hyspark_pretrain   plain state dict: ``embeddings.*`` (MedNeXt CNN), ``mae.*`` (ViT; fixed
                              ``mae.pos_embed`` (1, 216, 384), ``mae.blocks.{0..2}``, ``mae.norm``, ``mae.mask_token``)
mim        mim_pretrain       ``{"model": ..., "args": Namespace}`` (pickled: needs ``--trust_pickle``):
                              ``patch_embed1..5``, ``blocks1..4``, ``stage{1,2,3}_output_decode``, ``norm``, fixed
                              ``pos_embed``, MAE decoder ``decoder_*`` / ``mask_token``
glmae      glmae_pretrain     DINO-style ``{"student": ...}``: ``module.backbone.*`` ViT-B, ``pos_embed``
                              (1, 217, 768) with the cls token's slot first (folded into the cls token)
spark2d    spark2d_pretrain   ``{"module": ...}``: timm / torchvision ResNet-50 names (``conv1``, ``layer1.0.conv1``)
moco2d     moco2d_pretrain    Lightning ``{"state_dict": ...}``: ``encoder_q.`` / ``encoder_k.`` ResNet-50 (``fc`` = MLP
                              head), ``queue`` (128, K)
byol2d     byol2d_pretrain    Lightning: ``online_network.encoder.`` / ``.projector.model.`` / ``.predictor.model.``,
                              ``target_network.*``
swav2d     swav2d_pretrain    Lightning: ``model.`` ResNet-50, ``model.projection_head``, ``model.prototypes``
=========  =================  ==========================================================================================

The rule tables, and where each layout was read, are in :mod:`tools.checkpoint_sources`.

Every run prints a report: tensors converted, adapted (an exact change of form: RGB stems summed into grey ones for the
2D study's slices, which it fed as three identical channels; the cls slot of GL-MAE's position embedding folded into the
cls token; MoCo's queue transposed), dropped by design and why, *unexpected* (release tensors without a counterpart),
*shape mismatches*, and *missing* (encoder tensors of the method the release does not provide). The conversion refuses
to write a silently partial checkpoint: any unexpected, mismatched or missing tensor stops it unless ``--allow_partial``
is given. Known differences of architecture, for which a release needs ``--allow_partial``:

* GL-MAE's ViT blocks have qkv biases; MONAI's ViT, which GL-MAE's bundle and UNETR use, has none, so they cannot be
  carried over.
* GL-MAE's projection head, when the file holds one, is not converted: the layout of the released head is not
  documented (the pre-training code is not public), and this collection's head is DINO's without its bottleneck and
  weight-normalised last layer. Only the student is read; the teacher is not converted.
* MiM checkpoints holding the cross-level heads ``aggregate_*`` (decoder-width MLPs): this collection's MiM heads are
  ``contrast_dim`` wide.

Fixed sin-cos position embeddings are not copied but compared. HySparK's official
``build_3d_sincos_position_embedding`` and MiM's ``get_3d_sincos_pos_embed`` give the cell at ``(i, j, k)`` of the
1/16 grid the codes of ``i``, then ``j``, then ``k`` (``W / 3`` channels each: ``W / 6`` sines, then cosines), and
both flatten the grid in raster order (``flatten(2)``, the last axis fastest), as this collection's networks do;
MONAI's ``build_sincos_position_embedding`` codes ``j`` first, then ``i``, then ``k``. The networks therefore build
theirs in the official order (:func:`common.layers.sincos_position_embedding`, in pre-training and fine-tuning alike):
the released weights compute exactly what they compute in the official networks, and no tensor changes form. The
other fixes are worse: copying the release's tensor needs a stored embedding, which cannot follow the grid of other
crops as a computed one does; permuting other tensors is not exact (exchanging the two axes of every kernel computes
the official network on the transposed image; exchanging the two bands' channels through the whole ViT stream
exchanges the channels of the encoder's outputs too). The report lists the embedding as dropped and equal to the
network's, and warns when a release's embedding differs: in MONAI's order (named as such) or not the sin-cos code at
all. GL-MAE's ``decoder_pos_embed`` is compared the same way (its pre-training code, and so its order, is not public).

Checkpoints are read with ``torch.load(..., weights_only=True)``. A file that holds pickled Python objects besides
tensors (MiM's ``args``, DINO-style ``args``) is refused unless ``--trust_pickle`` is given: unpickling runs code stored
in the file, so pass it only for files from a source you trust. An existing output file is never overwritten without
``--overwrite``.

The conversion was tested on synthetic files shaped like the releases (``tests/test_convert_checkpoint.py``: the
documented names and shapes, random values but for HySparK's and MiM's sin-cos embeddings, computed by the official
formulas and checked token by token against what the converted networks add), not on the released files themselves,
which could not be downloaded here.
"""

from __future__ import annotations

import logging
import pickle
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import fire
import torch

from common.networks.spec import SPEC_KEY
from common.transfer import STATE_DICT_KEYS, extract_state_dict
from tools.checkpoint_sources import Source, get_source
from tools.package import train_json_spec

logger = logging.getLogger(__name__)

BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"
# Config ids pinned when the method is built: paper scale on any machine, and a dummy epoch length (it only sets
# schedules; evaluating it would build the bundle's training data loader).
PINNED_CONFIG = {"cpu_demo_scale": False, "epoch_length": 1}
# Parts of MONAI's TransformerBlock that exist without being used (it builds a cross-attention norm in any case).
UNUSED_TARGETS = re.compile(r"\.norm_cross_attn\.")


class ConversionError(ValueError):
    """A release that cannot be converted as asked; ``report`` holds what was found, when it got that far."""

    def __init__(self, message: str, report: ConversionReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class ConversionReport:
    """What a conversion found.

    Attributes:
        source, method: the ``--source`` and the class of the method converted into.
        renamed: release name -> method name, for every converted tensor.
        adapted: release name -> how its value changed form on the way (see :mod:`tools.checkpoint_sources`).
        dropped: release name -> why it has no counterpart by design.
        unexpected: release tensors without a counterpart, each with why.
        shape_mismatch: release tensors whose counterpart has another shape.
        missing: tensors of the method's required part (its encoder) that the release does not provide.
        not_converted: the method's other tensors that the release does not provide (decoders, heads ...).
        warnings: differences of dropped fixed tensors from what the network uses instead.
    """

    source: str
    method: str
    renamed: dict[str, str] = field(default_factory=dict)
    adapted: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    not_converted: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def matched(self) -> list[str]:
        """The method's names of the converted tensors."""
        return list(self.renamed.values())

    @property
    def complete(self) -> bool:
        """No unexpected, mismatched or missing tensor."""
        return not (self.unexpected or self.shape_mismatch or self.missing)

    def summary(self) -> str:
        return (
            f"{self.source} -> {self.method}: {len(self.renamed)} tensors converted ({len(self.adapted)} adapted), "
            f"{len(self.dropped)} dropped by design, {len(self.unexpected)} unexpected, "
            f"{len(self.shape_mismatch)} with another shape, {len(self.missing)} missing from the encoder, "
            f"{len(self.not_converted)} other tensors of the method not in the release"
        )

    def lines(self) -> list[str]:
        """The summary, then every adapted, dropped, unexpected, mismatched and missing tensor and every warning."""
        lines = [self.summary()]
        sections = (
            ("adapted", [f"{name}: {how}" for name, how in self.adapted.items()]),
            ("dropped", [f"{name}: {why}" for name, why in self.dropped.items()]),
            ("unexpected", self.unexpected),
            ("shape mismatch", self.shape_mismatch),
            ("missing", self.missing),
            ("warning", self.warnings),
        )
        for title, entries in sections:
            lines += [f"  {title}: {entry}" for entry in entries]
        return lines


def load_release(path: str | Path, trust_pickle: bool = False) -> object:
    """The object saved in ``path``, read with ``weights_only=True`` unless ``trust_pickle``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConversionError: the file holds pickled objects besides tensors and ``trust_pickle`` is false.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"released checkpoint {path} does not exist")
    if trust_pickle:
        logger.warning(
            "loading %s with weights_only=False (--trust_pickle): unpickling runs code stored in the file; "
            "do this only for a file from a source you trust",
            path,
        )
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        what = f" ({found.group(1)})" if found else ""
        raise ConversionError(
            f"{path} holds pickled Python objects{what} besides tensors, which weights_only loading refuses; "
            "if you trust where the file comes from, pass --trust_pickle"
        ) from None


def release_state(checkpoint: object, source: Source, path: str | Path) -> dict[str, torch.Tensor]:
    """The release's tensors: under ``source.container`` or a key of :data:`common.transfer.STATE_DICT_KEYS` when
    present, else the top level, ``module.`` prefixes stripped (:func:`common.transfer.extract_state_dict`).

    Raises:
        ConversionError: ``checkpoint`` is not a dict, or holds no tensors where they are looked for.
    """
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(f"{path} holds a {type(checkpoint).__name__}, not a dict of tensors")
    if source.container is not None and isinstance(checkpoint.get(source.container), Mapping):
        checkpoint = checkpoint[source.container]
    state = extract_state_dict(checkpoint)
    if not state:
        places = ", ".join(filter(None, (source.container, *STATE_DICT_KEYS)))
        raise ConversionError(f"{path} holds no tensors (looked at the top level and under {places})")
    return state


def convert_state(
    source: Source, release: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], method: str
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Rename the release's tensors into ``target``'s names by ``source``'s rules and check their shapes.

    Args:
        source: the release layout.
        release: the release's tensors (:func:`release_state`).
        target: the state dict of the method converted into (names and shapes).
        method: the method's name, for the report.

    Returns:
        The converted tensors under the method's names, and the :class:`ConversionReport`.

    Raises:
        ConversionError: two release tensors map to the same name (a fault of the rules).
    """
    report = ConversionReport(source.name, method)
    converted: dict[str, torch.Tensor] = {}
    for name, tensor in release.items():
        dropped = next((d for d in source.dropped if d.applies(name)), None)
        if dropped is not None:
            report.dropped[name] = dropped.reason
            message = dropped.check(tensor) if dropped.check else None
            if message:
                report.warnings.append(f"{name}: {message}")
            elif dropped.check:
                report.dropped[name] += "; compared: equal to it at every token"
            continue
        renamed = source.rename(name)
        if renamed is None:
            report.unexpected.append(f"{name}: no rule of the {source.name} layout covers it")
            continue
        rule, new = renamed
        if new not in target:
            report.unexpected.append(f"{name} -> {new}, which {method} does not have")
            continue
        value = rule.transform(tensor, target[new], release) if rule.transform else tensor
        if value.shape != target[new].shape:
            report.shape_mismatch.append(
                f"{name} -> {new}: release {tuple(tensor.shape)}, {method} {tuple(target[new].shape)}"
            )
            continue
        if new in converted:
            first = next(old for old, mapped in report.renamed.items() if mapped == new)
            raise ConversionError(f"{first} and {name} both map to {new}: the {source.name} rules are ambiguous")
        if value is not tensor:
            how = rule.transform.__name__
            report.adapted[name] = f"{tuple(tensor.shape)} -> {new} {tuple(value.shape)} by {how}"
            value = value.clone(memory_format=torch.contiguous_format)
        converted[new] = value
        report.renamed[name] = new
    for name in target:
        if name in converted:
            continue
        if name.startswith(source.required) and not UNUSED_TARGETS.search(name):
            report.missing.append(name)
        else:
            report.not_converted.append(name)
    return converted, report


def convert_checkpoint(
    source: str,
    input_path: str | Path,
    output_path: str | Path,
    *,
    allow_partial: bool = False,
    trust_pickle: bool = False,
    overrides: Mapping | None = None,
    overwrite: bool = False,
) -> ConversionReport:
    """Convert a released checkpoint and write it as a checkpoint of the method of ``source``'s bundle: the converted
    tensors under ``"model"`` with the method's ``network_spec``, as the bundle's training saves ``models/model.pt``.

    Args:
        source: a name of :data:`tools.checkpoint_sources.SOURCES`.
        input_path: the released file.
        output_path: where to write the converted checkpoint (parent folders are created).
        allow_partial: write even when tensors are unexpected, mismatched or missing (the report lists them).
        trust_pickle: read a file holding pickled Python objects (``weights_only=False``); only for trusted files.
        overrides: config ids of the bundle's ``train.json`` -> values, for a method of other sizes
            (:func:`tools.package.train_json_spec`; :data:`PINNED_CONFIG` first).
        overwrite: replace an existing ``output_path``.

    Returns:
        The :class:`ConversionReport`; its summary and warnings are also logged.

    Raises:
        ValueError: unknown ``source`` or override.
        FileNotFoundError: ``input_path`` does not exist.
        FileExistsError: ``output_path`` exists and ``overwrite`` is false.
        ConversionError: the file cannot be read as asked, or the conversion is partial and ``allow_partial`` is
            false, or nothing converts at all.
    """
    layout = get_source(source)
    output_path = Path(output_path)
    if output_path.exists() and not overwrite:
        raise FileExistsError(f"{output_path} exists; pass --overwrite to replace it")
    release = release_state(load_release(input_path, trust_pickle), layout, input_path)
    settings = {**dict(layout.settings), **(overrides or {})}  # the release's normalisation, then the user's
    method_spec = train_json_spec(BUNDLES_DIR / layout.bundle, settings, PINNED_CONFIG)
    method = method_spec.build()
    converted, report = convert_state(layout, release, method.state_dict(), type(method).__name__)
    logger.info("%s: %s", input_path, report.summary())
    for warning in report.warnings:
        logger.warning("%s: %s", input_path, warning)
    if not converted:
        raise ConversionError(
            f"no tensor of {input_path} converts into {report.method}; a {source} release is {layout.layout}", report
        )
    if not report.complete and not allow_partial:
        shown = (report.unexpected + report.shape_mismatch + report.missing)[:3]
        raise ConversionError(
            f"the conversion of {input_path} is partial ({report.summary()}; e.g. {'; '.join(shown)}); "
            "pass --allow_partial to write the converted tensors anyway",
            report,
        )
    output_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": converted, SPEC_KEY: method_spec.state_dict()}, output_path)
    return report


def main(
    input_path: str,
    output_path: str,
    *,
    source: str,
    allow_partial: bool = False,
    trust_pickle: bool = False,
    overrides: dict | None = None,
    overwrite: bool = False,
) -> None:
    """``python -m tools.convert_checkpoint --source NAME IN OUT [--allow_partial] [--trust_pickle] [--overrides
    "{'id': value}"] [--overwrite]``: convert, print the report; exit 1 with the reason when it refuses."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        report = convert_checkpoint(
            source,
            input_path,
            output_path,
            allow_partial=allow_partial,
            trust_pickle=trust_pickle,
            overrides=overrides,
            overwrite=overwrite,
        )
    except ConversionError as error:
        if error.report is not None:
            print("\n".join(error.report.lines()))
        sys.exit(f"tools.convert_checkpoint: {error}")
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        sys.exit(f"tools.convert_checkpoint: {error}")
    print("\n".join(report.lines()))
    print(f"wrote {output_path} ({len(report.renamed)} tensors)")


if __name__ == "__main__":
    fire.Fire(main)
