"""Datalists from an MSD ``dataset.json``, a folder of NIfTI, or a folder of DICOM series.

A datalist is what MONAI datasets take: a list of dicts ``{"image": ..., "label": ...}`` with absolute
paths, ``"label"`` only where a label exists. A multi-channel image (MRI modalities) is one 4D NIfTI with its
channels last (MSD) or a list of one file per channel (nnU-Net v2, ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``
...; read from a folder whose ``dataset.json`` lists ``channel_names``).

:func:`load_datalist` accepts any of the three sources and checks what it can cheaply before a run starts (files
exist, NIfTI headers are 3D and labels match their images, DICOM slices form consistent volumes), so that a broken
case fails with a :class:`DatalistError` naming the file instead of crashing a data-loader worker hours later.

DICOM: one series is one volume. A series entry is ``{"image": [slice files, sorted along the slice
normal]}``: MONAI's own readers cannot pick one series out of a folder that mixes several (its
:class:`~monai.data.PydicomReader` merges every file of a folder, and reads a list of files as a
stack of 2D channels), so entries list their files and :class:`DicomSeriesReader` reads such a list as
one 3D volume. Load datalist entries with :func:`image_loader`, which registers that reader::

    loader = image_loader(["image", "label"])   # LoadImaged(..., ensure_channel_first=True) + DicomSeriesReader
    volume = loader(datalist[0])["image"]         # (1, X, Y, Z) MetaTensor, RAS affine, HU for DICOM

:func:`split_datalist` makes deterministic train/validation splits: k-fold, an explicit validation
list, or a 20 % hold-out, then a nested fraction of the training part for label-efficiency studies.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import struct
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.data import load_decathlon_datalist
from monai.transforms import LoadImaged
from monai.utils import ensure_tuple

from common.data.dicom import DicomSeriesReader, dicom_datalist
from common.data.errors import BadInputPolicy, DatalistError, UnreadableFileError, skip_or_raise
from common.data.nifti import VerifiedNibabelReader

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# key -> (image folder, label folder) of the MSD / nnU-Net layout
MSD_FOLDERS = {"training": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}
NIFTI_TRIED = "NIfTI (*.nii.gz, *.nii) in imagesTr/ + labelsTr/, imagesTs/, images/ + labels/, or the folder itself"
DICOM_TRIED = "DICOM (files with the DICM preamble or a .dcm/.dicom/.ima suffix, in the folder and all sub-folders)"
HOLDOUT_FRACTION = 0.2


# ----------------------------------------------------------------------------------------- sources


def load_datalist(
    source: str | os.PathLike,
    key: str = "training",
    label_folder: str | os.PathLike | None = None,
    skip_unreadable: bool | BadInputPolicy = False,
) -> list[dict]:
    """Datalist from any supported source, chosen by what ``source`` is.

    Args:
        source: a ``.json`` file (MSD datalist, see :func:`datalist_from_msd`); or a folder holding a
            ``dataset.json`` (same; an nnU-Net v2 ``dataset.json``, which lists ``channel_names`` and no cases,
            reads the folder's ``imagesTr/`` + ``labelsTr/`` with that many channels per case); or a folder of
            NIfTI (:func:`datalist_from_nifti_folder`); or a folder of DICOM series
            (:func:`datalist_from_dicom_folder`), tried in this order.
        key: the split to read: a key of the ``dataset.json``, or ``"training"`` / ``"test"`` for the
            ``imagesTr`` / ``imagesTs`` folder layout. Folders without splits return all their images.
        label_folder: labels of a flat NIfTI folder (NIfTI sources only).
        skip_unreadable: what to do with a corrupt or truncated file: ``False`` raises an
            :class:`~common.data.errors.UnreadableFileError`; ``True`` skips it with a logged warning; a
            :class:`~common.data.errors.BadInputPolicy` decides (and with ``skip=True`` adds a row to its report).

    Returns:
        the datalist: a list of ``{"image": ..., "label": ...}`` dicts with absolute paths.

    Raises:
        DatalistError: ``source`` is missing or holds no images (the message lists what was tried),
            or any error of the reader it dispatches to.
    """
    path = absolute_path(source)
    json_path = msd_json_path(path)
    if json_path is not None:
        _reject_label_folder(label_folder, path)
        description = read_dataset_json(json_path)
        if "channel_names" in description and key not in description:  # nnU-Net v2: the cases are the files
            channels = len(description["channel_names"])
            return datalist_from_nifti_folder(json_path.parent, None, key, skip_unreadable, channels)
        return datalist_from_msd(json_path, key, skip_unreadable)
    if not path.is_dir():
        raise DatalistError(f"{path} does not exist; expected a dataset.json or a folder of NIfTI or DICOM")
    if holds_nifti(path):
        return datalist_from_nifti_folder(path, label_folder, key, skip_unreadable)
    _reject_label_folder(label_folder, path)
    return dicom_datalist(path, skip_unreadable, tried=f"dataset.json, {NIFTI_TRIED}, {DICOM_TRIED}")


def training_split(
    source: str | os.PathLike,
    *,
    fold: int | None = None,
    num_folds: int = 5,
    train_fraction: float = 1.0,
    seed: int = 0,
    label_folder: str | os.PathLike | None = None,
    skip_unreadable: bool | BadInputPolicy = False,
) -> tuple[list[dict], list[dict]]:
    """``(train, validation)`` of a dataset: its ``"training"`` datalist split by :func:`split_datalist`.

    A ``dataset.json`` with a ``"validation"`` list supplies the validation cases, unless ``fold`` asks
    for cross-validation over the ``"training"`` list (the validation list is then unused); without
    either, 20 % of the training cases are held out.

    Args:
        source: anything :func:`load_datalist` accepts.
        fold, num_folds, train_fraction, seed: as in :func:`split_datalist`.
        label_folder, skip_unreadable: as in :func:`load_datalist`.

    Returns:
        the training and validation datalists.

    Raises:
        DatalistError: from :func:`load_datalist` or :func:`split_datalist`; a case has no label (every case of a
            segmentation task needs one).
    """
    datalist = load_datalist(source, "training", label_folder, skip_unreadable)
    json_path = msd_json_path(absolute_path(source))
    validation = None
    if fold is None and json_path is not None and "validation" in _json_keys(json_path):
        validation = datalist_from_msd(json_path, "validation", skip_unreadable)
    unlabelled = [entry["image"] for entry in datalist + (validation or []) if "label" not in entry]
    if unlabelled:
        raise DatalistError(
            f"{len(unlabelled)} case(s) of {absolute_path(source)} have no label, e.g. {unlabelled[0]}; every case "
            "of a segmentation task needs its label map (the label file is missing, or the entry names none)"
        )
    return split_datalist(
        datalist, validation=validation, fold=fold, num_folds=num_folds, train_fraction=train_fraction, seed=seed
    )


def inference_datalist(
    source: str | os.PathLike, key: str = "test", skip_unreadable: bool | BadInputPolicy = False
) -> list[dict]:
    """Images to run inference on: ``[{"image": ...}, ...]`` (labels, if any, are left out).

    Args:
        source: one NIfTI file, or anything :func:`load_datalist` accepts (a ``dataset.json`` is read
            at ``key``; a folder with imagesTr/imagesTs reads ``imagesTs``; other folders give all
            their images or DICOM series).
        key: the split to read where the source has splits.
        skip_unreadable: as in :func:`load_datalist`.

    Returns:
        the datalist.

    Raises:
        DatalistError: as :func:`load_datalist`; a single file that is neither NIfTI nor ``.json``.
    """
    path = absolute_path(source)
    if path.is_file() and is_nifti(str(path)):
        return [{"image": str(path)}] if checked_nifti_pair(str(path), None, skip_unreadable) else []
    return [{"image": entry["image"]} for entry in load_datalist(path, key, skip_unreadable=skip_unreadable)]


def pretraining_datalist(source: str | os.PathLike, skip_unreadable: bool | BadInputPolicy = False) -> list[dict]:
    """Every image a self-supervised method may train on: ``[{"image": ...}, ...]``, labels left out.

    A ``dataset.json`` contributes its ``training`` and ``validation`` images (a downstream task's test
    images stay unseen); a folder contributes all its images or DICOM series.

    Raises:
        DatalistError: as :func:`load_datalist`.
    """
    path = absolute_path(source)
    json_path = msd_json_path(path)
    keys = ["training"]
    if json_path is not None and "validation" in json.loads(Path(json_path).read_text()):
        keys.append("validation")
    return [{"image": entry["image"]} for key in keys for entry in load_datalist(path, key, skip_unreadable=skip_unreadable)]


def msd_entries(path: Path, key: str, is_segmentation: bool) -> list[tuple[str, dict]]:
    """The entries of list ``key`` of the MSD-style json ``path`` (``load_decathlon_datalist``: image paths, and
    label paths when ``is_segmentation``, made absolute), each with a description of where it stands.

    Raises:
        DatalistError: the json is invalid or lacks ``key``; ``key`` is empty; an entry has no ``"image"``.
    """
    try:
        entries = load_decathlon_datalist(path, is_segmentation=is_segmentation, data_list_key=key, base_dir=path.parent)
    except (ValueError, TypeError, IndexError) as error:  # invalid json, missing key, malformed entries
        raise DatalistError(f"cannot read list {key!r} of MSD datalist {path}: {error}") from error
    if not entries:
        raise DatalistError(f"list {key!r} of MSD datalist {path} is empty")
    located = []
    for index, entry in enumerate(entries):
        where = f"entry {index} of {key!r} in {path}"
        if "image" not in entry:
            raise DatalistError(f"{where} has no 'image': {entry}")
        located.append((where, entry))
    return located


def datalist_from_msd(
    json_path: str | os.PathLike, key: str = "training", skip_unreadable: bool | BadInputPolicy = False
) -> list[dict]:
    """Datalist from an MSD-style ``dataset.json``, read with :func:`monai.data.load_decathlon_datalist`.

    Relative paths are resolved against the folder of the json; ``"test"`` entries may be plain
    strings. Every listed path must exist; NIfTI entries get the checks of
    :func:`datalist_from_nifti_folder` (3D, label shape == image shape, not truncated).

    Args:
        json_path: the ``dataset.json``.
        key: the list to read (``"training"``, ``"validation"``, ``"test"``, ...).
        skip_unreadable: entries with a corrupt NIfTI file: as in :func:`load_datalist`.

    Returns:
        the entries of ``key`` with absolute paths (other keys of an entry are kept).

    Raises:
        DatalistError: the json is missing, invalid or lacks ``key``; ``key`` is empty; an entry has no
            ``"image"``; a listed path does not exist; a NIfTI file is unreadable, not 3D, or its label
            has another shape.
    """
    path = absolute_path(json_path)
    if not path.is_file():
        raise DatalistError(f"MSD datalist {path} does not exist; expected a dataset.json file")
    datalist = []
    for where, entry in msd_entries(path, key, is_segmentation=True):
        for name in ("image", "label"):
            for listed in ensure_tuple(entry.get(name, ())):
                if not os.path.exists(listed):
                    raise DatalistError(f"{name} {listed} of {where} does not exist")
        nifti = all(is_nifti(path) for path in ensure_tuple(entry["image"]))
        if not nifti or checked_nifti_pair(entry["image"], entry.get("label"), skip_unreadable):
            datalist.append(entry)
    return datalist


def datalist_from_nifti_folder(
    folder: str | os.PathLike,
    label_folder: str | os.PathLike | None = None,
    key: str = "training",
    skip_unreadable: bool | BadInputPolicy = False,
    channels: int = 1,
) -> list[dict]:
    """Datalist from a folder of NIfTI volumes (``*.nii.gz``, ``*.nii``; hidden files are ignored).

    Accepted layouts, tried in this order:

    - MSD / nnU-Net: ``imagesTr/`` + ``labelsTr/`` (``key="training"``), ``imagesTs/`` (+ ``labelsTs/``
      if present, ``key="test"``);
    - ``images/`` + ``labels/`` (labels optional);
    - a flat folder of images, with labels in ``label_folder`` if given.

    ``label_folder``, when given, replaces the layout's label folder. An image is paired with the label
    of the same file name, or with the nnU-Net case name (``case_0000.nii.gz`` -> ``case.nii.gz``);
    images without a label get no ``"label"`` (logged as a warning). With ``channels`` > 1 (nnU-Net v2), the
    files of a case are ``<case>_0000`` .. ``<case>_<channels - 1>`` and its entry lists them in that order,
    ``{"image": [files], "label": <case>}``. Only headers are read: an image must be 3D (or 4D, its channels last),
    its label one 3D map of the same spatial shape, and the file must hold all the voxel data its header announces
    (a truncated file is unreadable).

    Args:
        folder: the dataset folder.
        label_folder: the folder of labels (overrides ``labelsTr/`` or ``labels/``).
        key: ``"training"`` or ``"test"``; used by the MSD layout only.
        skip_unreadable: images with a corrupt file: as in :func:`load_datalist`.
        channels: the files per case (one per modality; nnU-Net v2 ``channel_names``).

    Returns:
        ``[{"image": path, "label": path}, ...]`` sorted by image file name.

    Raises:
        DatalistError: a folder is missing; no NIfTI found (the message lists the layouts tried);
            ``key`` has no folder in the MSD layout; several images share one label (with ``channels`` 1); a
            case lacks a channel's file; a file is unreadable, not 3D, or a label's shape differs from its image's.
    """
    root = _existing_folder(folder, "NIfTI folder")
    image_dir, label_dir = nifti_layout(root, key)
    if label_folder is not None:
        label_dir = _existing_folder(label_folder, "label folder")
    images = nifti_files(image_dir)
    if not images:
        raise DatalistError(f"no NIfTI images in {root}; tried {NIFTI_TRIED}")
    cases = _channel_files(images, channels, image_dir) if channels > 1 else {path: path for path in images}
    labels = _pair_labels(list(cases), label_dir) if label_dir is not None else {}
    datalist = []
    for case, image in cases.items():
        image = [str(path) for path in image] if channels > 1 else str(image)
        label = labels.get(case)
        if checked_nifti_pair(image, str(label) if label else None, skip_unreadable):
            datalist.append({"image": image, "label": str(label)} if label else {"image": image})
    return datalist


def datalist_from_dicom_folder(
    folder: str | os.PathLike, skip_unreadable: bool | BadInputPolicy = False
) -> list[dict]:
    """Datalist from a folder of DICOM series, one entry per series.

    The folder is searched recursively (``patient/study/series/*``, hidden files ignored). Files with
    the DICM preamble, and files with a ``.dcm``/``.dicom``/``.ima`` suffix, are read (header only) and
    grouped by SeriesInstanceUID, whatever folder they sit in; other files are ignored. DICOM files that
    are not slices of a volume (DICOMDIR, reports, multi-frame objects) are skipped with a warning. A
    folder mixing several series gives one entry per series, never a merged volume.

    Each entry is ``{"image": [slice files sorted along the slice normal]}``; load it with
    :func:`image_loader` (:class:`DicomSeriesReader`), which stacks the slices into a 3D volume in HU
    with the affine of ImagePositionPatient/ImageOrientationPatient/PixelSpacing. Slice spacing that
    varies within a series (a missing slice) is logged as a warning.

    Args:
        folder: the folder to search.
        skip_unreadable: corrupt DICOM files: as in :func:`load_datalist`.

    Returns:
        one ``{"image": [files]}`` per series, the series in the order of their first file by path.

    Raises:
        DatalistError: the folder is missing or holds no DICOM slice; a file claiming to be DICOM
            (by preamble or suffix) is unreadable; a series mixes slice sizes, orientations or pixel
            spacings, or has several slices at one position.
    """
    return dicom_datalist(_existing_folder(folder, "DICOM folder"), skip_unreadable, tried=DICOM_TRIED)


def image_loader(keys: str | Sequence[str], ensure_channel_first: bool = True, **kwargs) -> LoadImaged:
    """The ``LoadImaged`` for datalist entries of any source: NIfTI files and DICOM series.

    ``LoadImaged(keys, ensure_channel_first=True)`` with :class:`DicomSeriesReader` registered, so that
    a list of DICOM slice files (an entry of :func:`datalist_from_dicom_folder`) or a folder of one
    series loads as one 3D volume, and :class:`~common.data.nifti.VerifiedNibabelReader`, so that a
    ``.nii.gz`` whose gzip CRC-32 or size does not match (corrupt in the middle of its stream) raises
    instead of loading as garbage; everything else goes to MONAI's default readers as usual. A plain
    ``LoadImaged`` would read such a list as a stack of 2D channels. In a bundle config::

        {"_target_": "common.data.image_loader", "keys": ["image", "label"]}

    Args:
        keys: the keys to load.
        ensure_channel_first: add / move the channel to the first dimension.
        kwargs: other ``LoadImaged`` arguments (``image_only``, ``dtype``, ``allow_missing_keys``, ...).

    Returns:
        the transform. Loading raises :class:`~common.data.errors.UnreadableFileError` (a
        :class:`~common.data.errors.BadInputError`) naming the file for a corrupt ``.nii.gz`` or a DICOM
        slice whose pixels cannot be decoded.
    """
    loader = LoadImaged(keys, ensure_channel_first=ensure_channel_first, **kwargs)
    loader.register(VerifiedNibabelReader())
    loader.register(DicomSeriesReader())
    return loader


# --------------------------------------------------------------------------------------- splitting


def split_datalist(
    datalist: Sequence[dict],
    *,
    validation: Sequence[dict] | None = None,
    fold: int | None = None,
    num_folds: int = 5,
    train_fraction: float = 1.0,
    seed: int = 0,
) -> tuple[list[dict], list[dict]]:
    """Deterministic train / validation split, then a nested subset of the training part.

    Validation is, in order of precedence: fold ``fold`` of a ``num_folds``-fold cross-validation
    over ``datalist`` (folds are disjoint and together cover it); the given ``validation`` list (with
    all of ``datalist`` for training); or a hold-out of 20 % of ``datalist``. Then ``train_fraction``
    keeps ``round(train_fraction * n)`` training cases (at least one), the same ones for the same
    seed and split, nested across fractions: the 0.25 subset is inside the 0.5 subset.

    Args:
        datalist: the cases to split.
        validation: an explicit validation list (e.g. the MSD ``"validation"`` key); not with ``fold``.
        fold: the cross-validation fold to hold out, in ``0 .. num_folds - 1``.
        num_folds: the number of folds, in ``2 .. len(datalist)``.
        train_fraction: the fraction of the training part to keep, in ``(0, 1]``.
        seed: the seed of the shuffles.

    Returns:
        ``(train, validation)``, each in the order of its source list.

    Raises:
        DatalistError: invalid arguments, too few cases to split, or validation cases in ``datalist``.
    """
    n = len(datalist)
    if n == 0:
        raise DatalistError("cannot split an empty datalist")
    if not 0.0 < train_fraction <= 1.0:
        raise DatalistError(f"train_fraction must be in (0, 1], got {train_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    if fold is not None:
        if validation is not None:
            raise DatalistError("give either fold (cross-validation) or validation (an explicit list), not both")
        val_indices = _fold_indices(order, fold, num_folds)
        val = [datalist[i] for i in sorted(val_indices)]
    elif validation is not None:
        val_indices = set()
        val = list(validation)
        _check_disjoint(datalist, val)
    else:
        if n < 2:
            raise DatalistError(f"cannot hold out validation cases from a datalist of {n} case; pass validation")
        val_indices = set(order[: max(1, round(HOLDOUT_FRACTION * n))].tolist())
        val = [datalist[i] for i in sorted(val_indices)]
    train_order = [i for i in order.tolist() if i not in val_indices]
    kept = train_order[: max(1, int(train_fraction * len(train_order) + 0.5))]
    return [datalist[i] for i in sorted(kept)], val


def _fold_indices(order: np.ndarray, fold: int, num_folds: int) -> set[int]:
    """Indices of fold ``fold`` when the shuffled ``order`` is cut into ``num_folds`` near-equal folds."""
    if not 2 <= num_folds <= len(order):
        raise DatalistError(f"num_folds must be in 2..{len(order)} (the number of cases), got {num_folds}")
    if not 0 <= fold < num_folds:
        raise DatalistError(f"fold must be in 0..{num_folds - 1}, got {fold}")
    return set(np.array_split(order, num_folds)[fold].tolist())


def _check_disjoint(datalist: Sequence[dict], validation: Sequence[dict]) -> None:
    """Raise if a validation image is also a training image."""
    training_images = {repr(entry["image"]) for entry in datalist}
    shared = [entry["image"] for entry in validation if repr(entry["image"]) in training_images]
    if shared:
        raise DatalistError(f"{len(shared)} validation cases are also in the datalist to train on, e.g. {shared[0]}")


# ------------------------------------------------------------------------------------------- NIfTI


def is_nifti(image: object) -> bool:
    """Whether ``image`` is a path ending in a NIfTI suffix."""
    return isinstance(image, str) and image.endswith(NIFTI_SUFFIXES)


def holds_nifti(folder: Path) -> bool:
    """Whether ``folder`` holds NIfTI in one of the accepted layouts (an ``images/`` folder may hold DICOM)."""
    image_dirs = (folder / "imagesTr", folder / "imagesTs", folder / "images", folder)
    return any(nifti_files(image_dir) for image_dir in image_dirs if image_dir.is_dir())


def nifti_layout(root: Path, key: str) -> tuple[Path, Path | None]:
    """The image folder and the label folder (``None`` if absent) of a NIfTI dataset folder."""
    if (root / "imagesTr").is_dir() or (root / "imagesTs").is_dir():
        if key not in MSD_FOLDERS:
            raise DatalistError(f"{root} has the imagesTr/imagesTs layout: key must be one of {list(MSD_FOLDERS)}")
        images, labels = (root / name for name in MSD_FOLDERS[key])
        if not images.is_dir():
            raise DatalistError(f"{root} has no {images.name}/ folder for key {key!r}")
    elif (root / "images").is_dir():
        images, labels = root / "images", root / "labels"
    else:
        images, labels = root, None
    return images, labels if labels is not None and labels.is_dir() else None


def nifti_files(folder: Path) -> list[Path]:
    """The NIfTI files directly in ``folder``, sorted, hidden ones left out."""
    return sorted(
        path
        for path in folder.iterdir()
        if path.name.endswith(NIFTI_SUFFIXES) and not path.name.startswith(".") and path.is_file()
    )


def _stem(path: Path) -> str:
    return next(path.name[: -len(suffix)] for suffix in NIFTI_SUFFIXES if path.name.endswith(suffix))


def _pair_labels(images: list[Path], label_dir: Path) -> dict[Path, Path]:
    """The label of each image: same file stem, else the stem without an nnU-Net ``_0000`` suffix."""
    labels = {_stem(path): path for path in nifti_files(label_dir)}
    pairs: dict[Path, Path] = {}
    for image in images:
        stem = _stem(image)
        case = stem[:-5] if len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit() else stem
        label = labels.get(stem) or labels.get(case)
        if label is not None:
            pairs[image] = label
    shared = defaultdict(list)
    for image, label in pairs.items():
        shared[label].append(image.name)
    for label, names in shared.items():
        if len(names) > 1:
            raise DatalistError(
                f"images {names} all pair with label {label}: one multi-channel case? Then give the folder the nnU-Net "
                "v2 dataset.json that lists its channel_names"
            )
    unlabelled = [image.name for image in images if image not in pairs]
    if unlabelled:
        logger.warning(
            "%d of %d images have no label in %s, e.g. %s", len(unlabelled), len(images), label_dir, unlabelled[0]
        )
    return pairs


def _channel_files(images: list[Path], channels: int, folder: Path) -> dict[Path, list[Path]]:
    """The files of each case of an nnU-Net v2 image folder, ``<case>_0000`` .. ``<case>_<channels - 1>``, by the
    case's name (as a path in ``folder``, which :func:`_pair_labels` pairs with the label of that name).

    Raises:
        DatalistError: a file is not named ``<case>_<4 digits>``, or a case lacks a channel or has one too many.
    """
    cases: dict[Path, dict[int, Path]] = defaultdict(dict)
    for image in images:
        stem = _stem(image)
        if not (len(stem) > 5 and stem[-5] == "_" and stem[-4:].isdigit()):
            raise DatalistError(
                f"{image} is not named <case>_<channel>.nii.gz (e.g. case_0000.nii.gz): nnU-Net v2 names one file "
                f"per channel, and this data set has {channels}"
            )
        cases[folder / f"{stem[:-5]}.nii.gz"][int(stem[-4:])] = image
    for case, files in cases.items():
        if sorted(files) != list(range(channels)):
            raise DatalistError(
                f"case {_stem(case)} in {folder} has the channel files {sorted(files)}; the data set's channel_names "
                f"list {channels} (expected {_stem(case)}_0000 .. {_stem(case)}_{channels - 1:04d})"
            )
    return {case: [files[channel] for channel in range(channels)] for case, files in cases.items()}


def checked_nifti_pair(
    image: str | Sequence[str], label: str | None, skip_unreadable: bool | BadInputPolicy
) -> bool:
    """Check an image (or the files of its channels) and its label from their headers; ``False`` if skipped as
    unreadable.

    Raises:
        DatalistError: a file is unreadable (unless skipped), not 3D (an image may hold its channels last in a 4th
            dimension; a channel's file and a label may not), or the spatial shapes differ.
    """
    files = [image] if isinstance(image, str) else list(image)
    others = files[1:] + ([label] if label else [])
    try:
        shapes = {path: _volume_shape(Path(path)) for path in files + others}
    except UnreadableFileError as error:
        skip_or_raise(error, skip_unreadable)
        return False
    for path in (files if len(files) > 1 else []) + ([label] if label else []):
        if shapes[path][1] != 1:
            raise DatalistError(f"{path} holds {shapes[path][1]} channels in a 4th dimension; expected one 3D volume")
    image_shape = shapes[files[0]][0]
    for path in others:
        if shapes[path][0] != image_shape:
            what = "label" if path == label else "channel file"
            raise DatalistError(
                f"{what} {path} has shape {shapes[path][0]} but its image {files[0]} has shape {image_shape}"
            )
    return True


def _volume_shape(path: Path) -> tuple[tuple[int, ...], int]:
    """Spatial shape and channels of a NIfTI volume from its header, after checking that the file holds all its data:
    3D is one channel, 4D holds its channels last (MSD).

    Raises:
        UnreadableFileError: not a readable NIfTI, or truncated.
        DatalistError: neither 3D nor 4D.
    """
    try:
        image = nib.load(path)
        needed = int(image.dataobj.offset) + int(np.prod(image.shape)) * image.get_data_dtype().itemsize
        size = _gzip_size(path, needed) if path.name.endswith(".gz") else path.stat().st_size
    except Exception as error:  # nibabel, gzip and zlib raise many types for a broken file
        raise UnreadableFileError(path, f"{type(error).__name__}: {error}") from error
    if size < needed:
        raise UnreadableFileError(path, f"holds {size} bytes, its header needs {needed} (truncated?)")
    shape = tuple(int(n) for n in image.shape)
    if len(shape) not in (3, 4):
        raise DatalistError(
            f"{path} is not a 3D volume: shape {shape} (expected 3 dimensions, or 4 with the channels last)"
        )
    return shape[:3], shape[3] if len(shape) == 4 else 1


def _gzip_size(path: Path, expected: int) -> int:
    """Uncompressed size of a gzip file: its trailer when that agrees with ``expected``, else by decompressing."""
    with open(path, "rb") as file:
        file.seek(-4, os.SEEK_END)
        if struct.unpack("<I", file.read(4))[0] == expected % 2**32:
            return expected
    size = 0
    with gzip.open(path, "rb") as file:
        while chunk := file.read(1 << 24):
            size += len(chunk)
    return size


# ------------------------------------------------------------------------------------------- paths


def absolute_path(path: str | os.PathLike) -> Path:
    """``path`` made absolute and normalised, symbolic links kept."""
    return Path(os.path.abspath(os.path.expanduser(path)))


def msd_json_path(path: Path) -> Path | None:
    """The MSD datalist that ``path`` names: itself if a ``.json`` file, its ``dataset.json`` if a folder.

    Raises:
        DatalistError: ``path`` is a file but not ``.json``.
    """
    if path.is_file():
        if path.suffix != ".json":
            raise DatalistError(f"{path} is a file but not a .json datalist; expected a dataset.json or a folder")
        return path
    return path / "dataset.json" if (path / "dataset.json").is_file() else None


def read_dataset_json(json_path: str | os.PathLike) -> dict:
    """The content of an MSD / nnU-Net ``dataset.json``.

    Raises:
        DatalistError: not valid JSON, or not a JSON object; the message names the file.
    """
    try:
        content = json.loads(Path(json_path).read_text())
    except (OSError, ValueError) as error:
        raise DatalistError(f"cannot read {json_path}: {error}") from error
    if not isinstance(content, dict):
        raise DatalistError(f"{json_path} holds a JSON {type(content).__name__}; expected an object")
    return content


def _json_keys(json_path: Path) -> list[str]:
    return list(read_dataset_json(json_path))


def _existing_folder(folder: str | os.PathLike, what: str) -> Path:
    path = absolute_path(folder)
    if not path.is_dir():
        raise DatalistError(f"{what} {path} does not exist or is not a folder")
    return path


def _reject_label_folder(label_folder: str | os.PathLike | None, source: Path) -> None:
    if label_folder is not None:
        raise DatalistError(f"label_folder is for flat NIfTI folders only, but {source} is not one")
