"""Class-labelled volumes: datalists from a class-per-folder tree or an MSD-style ``dataset.json``, their
stratified split (:mod:`common.data.folds`), and the CSV of predicted class probabilities.

A classification datalist is a list of ``{"image": ..., "label": <class index>}`` dicts with absolute image
paths, and comes with the class names, index ``i`` naming class ``i``. Two sources are read:

- a **class-per-folder** tree, ``root/<class name>/<volume>.nii.gz`` (or ``.nii``) or
  ``root/<class name>/**/<DICOM series>``: one sub-folder per class, classes numbered in the order of their
  folder names (``sorted``, so ``CP``, ``NCP``, ``Normal`` for CC-CCII); each folder is read like
  :func:`~common.data.load_datalist` reads a folder (NIfTI headers checked, one entry per DICOM series);
- an MSD-style **dataset.json** whose entries carry an integer label and whose ``"labels"`` names every
  class: ``{"labels": {"0": "normal", "1": ...}, "training": [{"image": "./a.nii.gz", "label": 0}, ...]}``;
  image paths are relative to the json's folder; ``"validation"`` and ``"test"`` lists are optional (test
  entries may be plain image paths, as in MSD).

:func:`classification_split` gives ``(train, validation)``: the json's ``"validation"`` list where there is
one, else fold ``fold`` of a stratified ``num_folds``-fold partition (fold 0 of 5, a 20 % hold-out with
every class in proportion, by default). :class:`ClassProbabilityWriter` writes what a classifier predicted,
one row per volume, as the ``saver`` of MONAI's :class:`~monai.handlers.ClassificationSaver`.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from common.data.datalist import absolute_path, checked_nifti_pair, is_nifti, load_datalist, msd_entries, msd_json_path
from common.data.errors import BadInputPolicy, DatalistError
from common.data.folds import stratified_split

logger = logging.getLogger(__name__)

CLASS_FOLDERS_TRIED = "a dataset.json with integer labels, or one sub-folder of NIfTI / DICOM per class"


# ----------------------------------------------------------------------------------------- sources


def classification_datalist(
    source: str | os.PathLike, key: str = "training", skip_unreadable: bool | BadInputPolicy = False
) -> tuple[list[dict], list[str]]:
    """Datalist and class names of a class-per-folder tree or an MSD-style ``dataset.json``.

    Args:
        source: a ``.json`` file or a folder holding a ``dataset.json`` (:func:`datalist_from_class_json`), else
            a folder with one sub-folder per class (:func:`datalist_from_class_folders`).
        key: the list of the json to read; a class-per-folder tree has only one list.
        skip_unreadable: corrupt files: as in :func:`common.data.load_datalist` (a bool or a ``BadInputPolicy``).

    Returns:
        ``([{"image": ..., "label": index}, ...], class_names)``.

    Raises:
        DatalistError: see the two readers.
    """
    json_path = msd_json_path(absolute_path(source))
    if json_path is not None:
        return datalist_from_class_json(json_path, key, skip_unreadable)
    return datalist_from_class_folders(source, skip_unreadable)


def class_names(source: str | os.PathLike) -> list[str]:
    """The class names of ``source`` (as :func:`classification_datalist` reads it), without reading any image.

    Raises:
        DatalistError: ``source`` is missing, or names no classes (see the two readers).
    """
    json_path = msd_json_path(absolute_path(source))
    if json_path is not None:
        return _json_class_names(_read_json(json_path), json_path)
    return [folder.name for folder in _class_folders(absolute_path(source))]


def datalist_from_class_folders(
    root: str | os.PathLike, skip_unreadable: bool | BadInputPolicy = False
) -> tuple[list[dict], list[str]]:
    """Datalist from ``root/<class name>/...``: one sub-folder of NIfTI files or DICOM series per class.

    Hidden folders are ignored; classes are numbered in the order of their folder names. Each class folder is
    read by :func:`~common.data.load_datalist` (flat NIfTI folder, else DICOM series searched recursively).

    Returns:
        ``(datalist, class_names)``, the datalist sorted by class, then by image.

    Raises:
        DatalistError: ``root`` is missing; it has fewer than two class folders; a class folder holds no
            image (the message names it); a file is unreadable (unless ``skip_unreadable``).
    """
    datalist = []
    folders = _class_folders(absolute_path(root))
    for index, folder in enumerate(folders):
        try:
            entries = load_datalist(folder, skip_unreadable=skip_unreadable)
        except DatalistError as error:
            raise DatalistError(f"class {folder.name!r} (index {index}): {error}") from error
        if not entries:  # every file of the class skipped as unreadable
            raise DatalistError(f"class {folder.name!r} (index {index}): no readable image in {folder}")
        datalist += [{"image": entry["image"], "label": index} for entry in entries]
    return datalist, [folder.name for folder in folders]


def datalist_from_class_json(
    json_path: str | os.PathLike, key: str = "training", skip_unreadable: bool | BadInputPolicy = False
) -> tuple[list[dict], list[str]]:
    """Datalist from an MSD-style ``dataset.json`` with integer class labels and a ``"labels"`` name table.

    Every image must exist (NIfTI headers are checked as in :func:`~common.data.datalist_from_msd`) and
    every label be the index of a class of ``"labels"``, whose keys must be ``"0" .. "K-1"``.

    Returns:
        ``(datalist, class_names)``, the entries in the order of the json, other keys of an entry kept.

    Raises:
        DatalistError: the json is missing, invalid, lacks ``key`` or ``"labels"``; ``key`` is empty; an entry
            has no image, an image that does not exist or is unreadable, or a label that names no class.
    """
    path = absolute_path(json_path)
    names = _json_class_names(_read_json(path), path)
    datalist = []
    for where, entry in msd_entries(path, key, is_segmentation=False):
        image = entry["image"]
        if "label" in entry and not (isinstance(entry["label"], int) and 0 <= entry["label"] < len(names)):
            raise DatalistError(f"{where} has label {entry['label']!r}; expected a class index 0..{len(names) - 1}")
        if not os.path.exists(image):
            raise DatalistError(f"image {image} of {where} does not exist")
        if not is_nifti(image) or checked_nifti_pair(image, None, skip_unreadable):
            datalist.append(entry)
    return datalist, names


def _class_folders(root: Path) -> list[Path]:
    """The visible sub-folders of ``root``, sorted by name; at least two."""
    if not root.is_dir():
        raise DatalistError(f"{root} does not exist; expected {CLASS_FOLDERS_TRIED}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(folders) < 2:
        found = f"only {folders[0].name!r}" if folders else "none"
        raise DatalistError(f"{root} needs one sub-folder per class, at least two (found {found}); "
                            f"expected {CLASS_FOLDERS_TRIED}")
    return folders


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DatalistError(f"{path} does not exist; expected a dataset.json file")
    try:
        content = json.loads(path.read_text())
    except ValueError as error:
        raise DatalistError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(content, dict):
        raise DatalistError(f"{path} is not a JSON object")
    return content


def _json_class_names(dataset: dict, path: Path) -> list[str]:
    """The names of ``dataset["labels"]``, whose keys must be ``"0" .. "K-1"``."""
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or set(labels) != {str(i) for i in range(len(labels))}:
        raise DatalistError(f'{path} needs "labels" naming the classes 0..K-1, e.g. '
                            f'{{"0": "normal", "1": "pneumonia"}}; got {labels!r}')
    if len(labels) < 2:
        raise DatalistError(f"{path} names {len(labels)} class; a classifier needs at least two")
    return [str(labels[str(i)]) for i in range(len(labels))]


# --------------------------------------------------------------------------------------- splitting


def classification_split(
    source: str | os.PathLike,
    *,
    fold: int | None = None,
    num_folds: int = 5,
    seed: int = 0,
    skip_unreadable: bool | BadInputPolicy = False,
) -> tuple[list[dict], list[dict]]:
    """``(train, validation)`` of a classification dataset.

    Validation is the json's ``"validation"`` list when it has one and ``fold`` is not given; otherwise fold
    ``fold`` (0 when ``None``) of :func:`common.data.folds.stratified_split`, with all other cases for training.

    Args:
        source: anything :func:`classification_datalist` accepts.
        fold, num_folds, seed: as in :func:`stratified_split`.
        skip_unreadable: as in :func:`classification_datalist`.

    Raises:
        DatalistError: from :func:`classification_datalist` or :func:`stratified_split`.
    """
    datalist, names = classification_datalist(source, "training", skip_unreadable)
    json_path = msd_json_path(absolute_path(source))
    if fold is None and json_path is not None and "validation" in _read_json(json_path):
        validation, _ = datalist_from_class_json(json_path, "validation", skip_unreadable)
        train = datalist
    else:
        train, validation = stratified_split(datalist, fold=fold or 0, num_folds=num_folds, seed=seed)
    logger.info("%s: %d training and %d validation cases; classes %s", source, len(train), len(validation),
                ", ".join(f"{i} {name!r}" for i, name in enumerate(names)))
    return train, validation


# ------------------------------------------------------------------------------------- predictions


class ClassProbabilityWriter:
    """CSV of class probabilities, one row per volume: ``image, prediction, <class 0>, <class 1>, ...``.

    ``prediction`` is the name of the most probable class, each class column its probability. It is the
    ``saver`` of MONAI's :class:`~monai.handlers.ClassificationSaver`, which collects the outputs of every
    iteration (across ranks too) and hands them over once per epoch; the file is written anew each time. In a
    bundle config::

        {"_target_": "ClassificationSaver",
         "batch_transform": "$lambda batch: [item['image'].meta for item in batch]",
         "output_transform": "$from_engine(['pred'])",
         "saver": {"_target_": "common.data.ClassProbabilityWriter", "class_names": [...], "output_dir": "..."}}

    Args:
        class_names: the class of each probability column.
        output_dir: the folder of the CSV (created if needed).
        filename: the CSV's name.
    """

    def __init__(self, class_names: Sequence[str], output_dir: str | os.PathLike, filename: str = "predictions.csv"):
        self.class_names = list(class_names)
        self.path = Path(output_dir) / filename
        self._rows: list[list] = []

    def save_batch(self, batch_data: torch.Tensor, meta_data: dict | None = None) -> None:
        """Keep the rows of ``(N, num_classes)`` probabilities of the images ``meta_data["filename_or_obj"]``.

        Raises:
            ValueError: a row has another length than ``class_names``.
        """
        probabilities = torch.as_tensor(batch_data).detach().cpu().float().reshape(len(batch_data), -1)
        if probabilities.shape[1] != len(self.class_names):
            raise ValueError(f"{probabilities.shape[1]} probabilities per image for {len(self.class_names)} classes "
                             f"{self.class_names}; set class_names to the classes the network was trained on")
        names = meta_data["filename_or_obj"] if meta_data else [str(i) for i in range(len(probabilities))]
        for name, row in zip(names, probabilities.tolist()):
            self._rows.append([name, self.class_names[int(np.argmax(row))], *(f"{p:.6f}" for p in row)])

    def finalize(self) -> None:
        """Write the header and the rows kept so far, then forget them."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["image", "prediction", *self.class_names])
            writer.writerows(self._rows)
        logger.info("wrote the class probabilities of %d images to %s", len(self._rows), self.path)
        self._rows = []
