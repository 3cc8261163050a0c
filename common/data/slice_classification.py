"""Labelled 2D CT slices: datalists with training / validation / test splits, or the folds of a stratified
cross-validation (the "Brain" protocol of Wolf et al. 2023).

A slice classification datalist is a dict::

    {"training": [{"image": "/abs/a.png", "label": 0}, ...], "validation": [...], "test": [...],
     "labels": {"0": "CT_COVID", "1": "CT_NonCOVID"}}

with absolute paths of PNG / JPG / NPY slices (loaded by :func:`common.transforms.slices.load_slice_transforms`)
and class indices; ``labels`` names class ``i`` under key ``str(i)``. :func:`slice_classification_datalist`
detects the layout of a dataset folder, trying in turn:

1. a **datalist json** (``dataset.json`` in the folder, or the ``.json`` file itself): ``"labels"`` and
   ``"training"`` / ``"validation"`` / ``"test"`` lists of ``{"image", "label"}``, paths relative to the json;
   the demo slices (:mod:`common.data.demo_slices_classification`) come with one;
2. a **MedMNIST** ``.npz`` (the file, or the only ``.npz`` in the folder), e.g. OrganSMNIST:
   ``{train,val,test}_images (N, 28, 28) uint8`` and ``{train,val,test}_labels (N, 1)``; converted once to PNGs
   with a datalist json in ``<repository>/.cache/medmnist/`` (:data:`MEDMNIST_CACHE`), then read as in 1.;
3. the **COVID-CT** layout (Zhao et al. 2020) with its official split: ``Data-split/<class>/{train,val,test}CT_<class>.txt``
   naming the images of ``CT_<class>/`` (in the folder or in ``Images-processed/``); classes ``CT_COVID``,
   ``CT_NonCOVID``, numbered in this (sorted) order as the official downstream code does;
4. a **labels CSV** (the CSV file, or the only ``.csv`` at the top of the folder): images in the CSV's folder or its
   sub-folders and one row per image naming its file and its class, e.g. Kaggle's ``head_ct/000.png`` ... with
   ``labels.csv`` (``id, hemorrhage``; ids ``0``, ``1`` ... for ``000.png``, ``001.png`` ...), read tolerantly as
   :mod:`common.data.labels_csv` says (``label_column`` names the label column where there are several); a 0/1
   column ``hemorrhage`` gives classes ``no_hemorrhage`` (0) and ``hemorrhage`` (1); dealt as 6.;
5. **class folders per split**: ``train/<class>/*``, ``test/<class>/*`` and optionally ``val/<class>/*``;
6. **class folders**: ``<class>/*`` (images searched recursively in each), dealt into 60 / 20 / 20 %
   training / validation / test, stratified, with a fixed seed.

Where a layout has no validation list (json or split folders without ``val``), a stratified 20 % of the
training list is held out for validation (:func:`common.data.stratified_split`, fold 0 of 5, seed 0). Every
layout needs a test list. Class folders are numbered in the order of their names (``sorted``).

Grey values are read as stored (:func:`common.transforms.slices.load_slice_transforms`: 8-bit values / 255); nothing
checks how the slices were windowed. An INFO line names the layout and the grey-value range of a few training slices,
so that slices windowed otherwise than expected show in the log (bundle README, "Data").

Cross-validation (``fold``): every labelled slice of the layout (training, validation and test lists together) is
dealt into ``num_folds`` stratified folds; fold ``fold`` is the test set and a stratified ``validation_fraction`` of
the others the validation set (:func:`common.data.folds.stratified_cross_validation`), as Wolf et al. evaluate
their "Brain" task: "We perform a five-fold stratified cross-validation using 10% of the training data for
validation and report the mean and standard deviation of accuracy, AUC score, and F1 score over the five runs".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from common.data.datalist import absolute_path
from common.data.errors import DatalistError
from common.data.folds import stratified_cross_validation, stratified_split
from common.data.generated import ensure_generated
from common.data.labels_csv import find_labels_csv, labels_csv_entries
from common.data.slices import SLICE_SUFFIXES

logger = logging.getLogger(__name__)

SPLITS = ("training", "validation", "test")
# Split folder names of layout 4, per split.
SPLIT_FOLDERS = {"training": ("train", "training"), "validation": ("val", "valid", "validation"), "test": ("test",)}
# MedMNIST keeps its class names in its Python package (INFO[flag]["label"]), not in the .npz; those of the
# study's OrganSMNIST task, by the .npz's file name.
MEDMNIST_CLASS_NAMES = {
    "organsmnist": ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
                    "lung-left", "lung-right", "pancreas", "spleen"),
}
# File name prefixes of the splits in MedMNIST (train_images) and COVID-CT (trainCT_COVID.txt).
SPLIT_PREFIXES = {"training": "train", "validation": "val", "test": "test"}
MEDMNIST_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "medmnist"
LAYOUTS_TRIED = ("a datalist json (dataset.json), the COVID-CT layout (Data-split/), a MedMNIST .npz, a labels CSV "
                 "beside the images, train/ + test/ (+ val/) folders of class folders, or one folder per class")
GREY_SAMPLES = 4  # training slices whose stored grey values the log reports


# ------------------------------------------------------------------------------------------- datalists


def slice_classification_datalist(
    dataset_dir: str | os.PathLike,
    *,
    fold: int | None = None,
    num_folds: int = 5,
    seed: int = 0,
    validation_fraction: float = 0.1,
    label_column: str | None = None,
) -> dict:
    """The training / validation / test datalist and class names of a slice dataset; layout detected as the
    module docstring lists.

    Args:
        dataset_dir: a dataset folder, a datalist ``.json``, a MedMNIST ``.npz`` or a labels ``.csv``.
        fold: ``None``: the layout's own splits; else the test fold of a stratified ``num_folds``-fold
            cross-validation over all its labelled slices (module docstring).
        num_folds, seed, validation_fraction: the cross-validation's, as in
            :func:`common.data.folds.stratified_cross_validation`; unused without ``fold``.
        label_column: the label column of a labels CSV (any case); None: the one column beside the file column.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...], "labels": {"0": name, ...}}``, entries
        ``{"image": absolute path, "label": class index}``.

    Raises:
        DatalistError: ``dataset_dir`` does not exist or matches no layout; a listed image is missing; a split
            is empty; a label names no class (each message names the file at fault); a cross-validation
            argument is out of range (more folds than the slices of the smallest class); a labels CSV is
            inconsistent (:mod:`common.data.labels_csv`); ``label_column`` is given for another layout.
    """
    root = absolute_path(dataset_dir)
    layout, datalist = _detected(root, label_column)
    if fold is not None:
        pooled = [entry for split in SPLITS for entry in datalist[split]]
        folds = stratified_cross_validation(pooled, fold=fold, num_folds=num_folds, seed=seed,
                                            validation_fraction=validation_fraction)
        datalist = {**dict(zip(SPLITS, folds)), "labels": datalist["labels"]}
        logger.info("%s: fold %d of %d (seed %d) is the test set, %g of the others the validation set", root, fold,
                    num_folds, seed, validation_fraction)
    logger.info("%s: %s; classes %s", root, ", ".join(f"{len(datalist[s])} {s}" for s in SPLITS),
                ", ".join(f"{i} {name!r}" for i, name in datalist["labels"].items()))
    _log_grey_values(root, layout, datalist["training"])
    return datalist


def _detected(root: Path, label_column: str | None) -> tuple[str, dict]:
    """The layout of ``root`` (module docstring) and its datalist."""
    csv_path = root if root.suffix.lower() == ".csv" else None
    if csv_path is None and root.is_dir() and not (root / "dataset.json").is_file() and not _single_npz(root) \
            and not (root / "Data-split").is_dir():
        csv_path = find_labels_csv(root)
    if label_column is not None and csv_path is None:
        raise DatalistError(f"label_column {label_column!r} names a column of a labels CSV, but {root} is not the "
                            f"labels CSV layout (expected {LAYOUTS_TRIED})")
    if csv_path is not None:
        if not csv_path.is_file():
            raise DatalistError(f"labels CSV {csv_path} does not exist")
        entries, labels = labels_csv_entries(csv_path, csv_path.parent, SLICE_SUFFIXES, label_column)
        return "labels CSV", _dealt(entries, labels, csv_path)
    if root.suffix == ".json" or (root / "dataset.json").is_file():
        return "datalist json", _from_json(root if root.suffix == ".json" else root / "dataset.json")
    if root.suffix == ".npz" or (root.is_dir() and _single_npz(root)):
        return "MedMNIST .npz", _from_json(medmnist_png_cache(root if root.suffix == ".npz" else _single_npz(root)))
    if not root.is_dir():
        raise DatalistError(f"{root} does not exist; expected {LAYOUTS_TRIED}")
    if (root / "Data-split").is_dir():
        return "COVID-CT (Data-split/)", _from_covid_ct(root)
    if _split_folder(root, "training"):
        return "class folders per split", _from_split_folders(root)
    return "class folders", _from_class_folders(root)


def _log_grey_values(root: Path, layout: str, entries: list[dict]) -> None:
    """One INFO line: the layout and the grey values of a few training slices as stored (before the / 255)."""
    picked = np.unique(np.linspace(0, len(entries) - 1, GREY_SAMPLES).round().astype(int))
    ranges = [r for r in (_stored_range(Path(entries[i]["image"])) for i in picked) if r is not None]
    if ranges:
        logger.info("%s: %s layout; %d sampled training slices hold grey values %.4g .. %.4g as stored (8-bit PNG / "
                    "JPG read as value / 255, .npy as it is); how HU were mapped to grey is not checked, so slices "
                    "for evaluation and inference must be prepared as the training slices were", root, layout,
                    len(ranges), min(r[0] for r in ranges), max(r[1] for r in ranges))


def _from_json(path: Path) -> dict:
    """Layout 1: ``"labels"`` and the three lists of a datalist json."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DatalistError(f"cannot read datalist json {path}: {error}") from error
    labels = content.get("labels") if isinstance(content, dict) else None
    if not isinstance(labels, dict) or len(labels) < 2 or set(labels) != {str(i) for i in range(len(labels))}:
        raise DatalistError(f'{path} needs "labels" naming at least two classes 0..K-1, e.g. '
                            f'{{"0": "normal", "1": "covid"}}; got {labels!r}')
    splits = {}
    for split in SPLITS:
        if split == "validation" and split not in content:
            continue
        entries = content.get(split)
        if not isinstance(entries, list) or not entries:
            raise DatalistError(f'{path}: list "{split}" is missing or empty; expected [{{"image": ..., "label": ...}}]')
        splits[split] = [_json_entry(entry, i, split, path, len(labels)) for i, entry in enumerate(entries)]
    return _with_validation(splits, {str(i): str(labels[str(i)]) for i in range(len(labels))}, path)


def _json_entry(entry: object, index: int, split: str, path: Path, num_classes: int) -> dict:
    where = f"entry {index} of {split!r} in {path}"
    if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
        raise DatalistError(f'{where} must be {{"image": path, "label": class index}}, got {entry!r}')
    label = entry.get("label")
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < num_classes:
        raise DatalistError(f"{where} has label {label!r}; expected a class index 0..{num_classes - 1}")
    image = _existing(path.parent / entry["image"], where)
    return {**entry, "image": str(image), "label": label}


def _from_covid_ct(root: Path) -> dict:
    """Layout 3: ``Data-split/<class>/<split>CT_<class>.txt`` naming images in ``CT_<class>/``."""
    classes = sorted(p.name for p in (root / "Data-split").iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DatalistError(f"{root / 'Data-split'} needs one folder per class (COVID, NonCOVID), found {classes}")
    splits: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for label, name in enumerate(classes):
        image_dir = next((d for d in (root / f"CT_{name}", root / "Images-processed" / f"CT_{name}") if d.is_dir()), None)
        if image_dir is None:
            raise DatalistError(f"{root}: no image folder CT_{name}/ (nor Images-processed/CT_{name}/) for the "
                                f"class of Data-split/{name}/")
        for split, prefix in SPLIT_PREFIXES.items():
            listing = root / "Data-split" / name / f"{prefix}CT_{name}.txt"
            if not listing.is_file():
                raise DatalistError(f"{listing} does not exist; the COVID-CT split lists are "
                                    f"Data-split/<class>/{{train,val,test}}CT_<class>.txt")
            for line, file in enumerate(listing.read_text().splitlines(), start=1):
                if file.strip():
                    image = _existing(image_dir / file.strip(), f"line {line} of {listing}")
                    splits[split].append({"image": str(image), "label": label})
    return _checked(splits, {str(i): f"CT_{name}" for i, name in enumerate(classes)}, root)


def _from_split_folders(root: Path) -> dict:
    """Layout 5: ``train/<class>/``, ``test/<class>/`` and optionally ``val/<class>/``."""
    training = _split_folder(root, "training")
    names = [folder.name for folder in _class_folders(training)]
    splits = {}
    for split in SPLITS:
        folder = _split_folder(root, split)
        if folder is None and split == "validation":
            continue
        if folder is None:
            raise DatalistError(f"{root} has {training.name}/ but no test/ folder; expected {LAYOUTS_TRIED}")
        splits[split] = []
        for class_folder in _class_folders(folder, minimum=1):
            if class_folder.name not in names:
                raise DatalistError(f"{class_folder}: class {class_folder.name!r} is not one of the training "
                                    f"classes {names} of {training}")
            label = names.index(class_folder.name)
            splits[split] += [{"image": str(image), "label": label} for image in _slice_files(class_folder)]
    return _with_validation(splits, {str(i): name for i, name in enumerate(names)}, root)


def _from_class_folders(root: Path) -> dict:
    """Layout 6: ``<class>/`` folders, dealt 60 / 20 / 20 % into training / validation / test."""
    folders = _class_folders(root)
    entries = [{"image": str(image), "label": label}
               for label, folder in enumerate(folders) for image in _slice_files(folder)]
    return _dealt(entries, {str(i): folder.name for i, folder in enumerate(folders)}, root)


def _dealt(entries: list[dict], labels: dict[str, str], root: Path) -> dict:
    """A layout without splits, dealt 60 / 20 / 20 % into training / validation / test, stratified, seed 0."""
    rest, test = stratified_split(entries, fold=0, num_folds=5, seed=0)
    training, validation = stratified_split(rest, fold=0, num_folds=4, seed=0)
    return _checked({"training": training, "validation": validation, "test": test}, labels, root)


def _with_validation(splits: dict[str, list[dict]], labels: dict[str, str], root: Path | None = None) -> dict:
    """``splits`` with a validation list: a stratified 20 % of training where there is none."""
    if "validation" not in splits:
        splits["training"], splits["validation"] = stratified_split(splits["training"], fold=0, num_folds=5, seed=0)
    return _checked(splits, labels, root)


def _checked(splits: dict[str, list[dict]], labels: dict[str, str], root: Path | None) -> dict:
    for split in SPLITS:
        if not splits[split]:
            raise DatalistError(f"{root}: the {split} split is empty")
    return {**{split: splits[split] for split in SPLITS}, "labels": labels}


def _split_folder(root: Path, split: str) -> Path | None:
    return next((root / name for name in SPLIT_FOLDERS[split] if (root / name).is_dir()), None)


def _class_folders(root: Path, minimum: int = 2) -> list[Path]:
    """The visible sub-folders of ``root``, sorted by name; at least ``minimum``."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(folders) < minimum:
        raise DatalistError(f"{root} needs one sub-folder per class (at least {minimum}), found "
                            f"{[f.name for f in folders]}; expected {LAYOUTS_TRIED}")
    return folders


def _slice_files(folder: Path) -> list[Path]:
    """The slice files under ``folder`` (recursive, hidden ones skipped), sorted; at least one."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SLICE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise DatalistError(f"class folder {folder} holds no slice ({', '.join(SLICE_SUFFIXES)})")
    return files


def _existing(path: Path, where: str) -> Path:
    if not path.is_file():
        raise DatalistError(f"image {path} of {where} does not exist")
    return path


def _stored_range(path: Path) -> tuple[float, float] | None:
    """Minimum and maximum of a slice file as stored; None where it cannot be read (screening reports it)."""
    try:
        values = np.load(path) if path.suffix.lower() == ".npy" else np.asarray(Image.open(path))
    except (OSError, ValueError):
        return None
    return (float(values.min()), float(values.max())) if values.size else None


def _single_npz(folder: Path) -> Path | None:
    """The only ``.npz`` file in ``folder``, if it holds exactly one."""
    found = list(folder.glob("*.npz"))
    return found[0] if len(found) == 1 else None


# --------------------------------------------------------------------------------------------- MedMNIST


def medmnist_png_cache(npz_path: str | os.PathLike, cache_root: str | os.PathLike | None = None) -> Path:
    """The datalist json of a MedMNIST ``.npz`` converted to PNGs, converting it on first use.

    The PNGs (``<split>/<index>_<label>.png``, grey or RGB as stored) and a ``dataset.json`` (layout 1) go to
    ``<cache_root>/<npz stem>-<hash of path, size, mtime>/``, written atomically and reused while the ``.npz`` is
    unchanged (:func:`common.data.generated.ensure_generated`). Class names: :data:`MEDMNIST_CLASS_NAMES` for a
    known file name, else ``"0" .. "K-1"``.

    Args:
        npz_path: e.g. ``organsmnist.npz`` (or ``organsmnist_224.npz``; the name before ``_`` picks the names).
        cache_root: default :data:`MEDMNIST_CACHE`.

    Raises:
        DatalistError: the file is missing, not a ``.npz``, or lacks ``{train,val,test}_{images,labels}``.
    """
    path = absolute_path(npz_path)
    if not path.is_file():
        raise DatalistError(f"MedMNIST file {path} does not exist")
    status = path.stat()
    key = hashlib.sha1(f"{path}|{status.st_size}|{status.st_mtime_ns}".encode()).hexdigest()[:12]
    stamp = {"module": f"{__name__}.medmnist", "source": str(path), "size": status.st_size,
             "mtime_ns": status.st_mtime_ns}
    root = Path(cache_root or MEDMNIST_CACHE) / f"{path.stem}-{key}"
    return ensure_generated(root, stamp, lambda folder: _write_medmnist_pngs(path, folder, stamp))


def _write_medmnist_pngs(path: Path, folder: Path, stamp: dict) -> None:
    try:
        arrays = np.load(path)
        data = {split: (arrays[f"{prefix}_images"], np.asarray(arrays[f"{prefix}_labels"]).reshape(-1))
                for split, prefix in SPLIT_PREFIXES.items()}
    except (OSError, ValueError, KeyError) as error:
        raise DatalistError(f"{path} is not a MedMNIST .npz with {{train,val,test}}_images and "
                            f"{{train,val,test}}_labels: {error}") from error
    num_classes = int(max(labels.max() for _, labels in data.values())) + 1
    names = MEDMNIST_CLASS_NAMES.get(path.stem.split("_")[0].lower(), tuple(str(i) for i in range(num_classes)))
    dataset = {"name": path.stem, "description": f"PNG copy of {path} (common.data.slice_classification)",
               "labels": {str(i): name for i, name in enumerate(names)}, "generator": stamp}
    for split, (images, labels) in data.items():
        (folder / SPLIT_PREFIXES[split]).mkdir(parents=True)
        dataset[split] = []
        for index, (image, label) in enumerate(zip(images, labels)):
            name = f"{SPLIT_PREFIXES[split]}/{index:06d}_{int(label)}.png"
            Image.fromarray(np.asarray(image, dtype=np.uint8)).save(folder / name)
            dataset[split].append({"image": f"./{name}", "label": int(label)})
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1) + "\n")
