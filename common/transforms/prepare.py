"""Preparing CT once for every pre-training bundle: many sources in, one prepared set and its datalist out.

3D (:func:`prepare_ct`): every volume of every source is read and checked (:func:`common.transforms.checked_loader`),
oriented to RAS, resampled to ``pixdim`` (bilinear), cropped to the voxels above :data:`FOREGROUND_HU` and stored
as int16 HU in a gzipped NIfTI. That is the deterministic part that all 3D bundles share; each bundle's intensity
window stays at load time, so HySparK (``abdomen``), MiM and GL-MAE (``wide``) read the same prepared set, and
their ``load_ct`` finds orientation and spacing already done. The set's folder is named by the key of
:func:`preprocessing` (a hash of the steps above), so a set prepared with other steps never mixes in::

    DIR/<key>/dataset.json                          MSD-style: bundles read it with --dataset_dir DIR/<key>
    DIR/<key>/volumes/<source>/<stem>_<hash>.nii.gz one per volume, <hash>: 8 hex of the sha1 of the input
    DIR/<key>/skipped_inputs.csv                    file,reason of every bad input (BadInputPolicy), if any

Each volume is written atomically (``<name>.partial``, then renamed), so a killed run leaves no half-written
volume that looks complete; the next run reuses every finished volume, deletes leftover ``.partial`` files and
prepares the rest. A bad input (corrupt or truncated file, broken DICOM series, not one 3D volume, no voxel
above the padding) is skipped and listed in the report; any other error is a bug and stops the run.

2D (:func:`prepare_slices`): slice folders and slice datalists (:func:`common.data.slices.slice_datalist`) are
merged into ``DIR/slices/datalist.json``, each slice checked to load, nothing resampled.

Sources: an MSD ``dataset.json`` or its folder (training + validation images, as
:func:`common.data.pretraining_datalist`), an nnU-Net v2 raw dataset folder (channel ``0000`` of ``imagesTr/``), a
folder of NIfTI, or a folder of DICOM series. Unlike the datalist builders, listing a source checks nothing: each
input is checked by the worker that prepares it, in parallel, where a bad one is skipped rather than fatal.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, CropForeground, EnsureType, Orientation, Spacing
from monai.utils import ensure_tuple
from tqdm import tqdm

from common.data.datalist import (
    absolute_path,
    checked_nifti_pair,
    holds_nifti,
    is_nifti,
    load_datalist,
    msd_entries,
    msd_json_path,
    nifti_files,
    nifti_layout,
)
from common.data.dicom import DICOM_SUFFIXES
from common.data.errors import BadInputError, BadInputPolicy, DatalistError, UnreadableFileError
from common.data.screening import bad_input_cause
from common.data.slices import DATALIST_NAME, slice_datalist, volume_source
from common.transforms.checks import checked_loader
from common.transforms.ct import CT_WINDOWS
from common.transforms.slices import load_slice_transforms

FORMAT_VERSION = 1  # bump when the stored volumes change for the same description
# The lowest HU any bundle's window keeps: what lies below it is outside every window.
FOREGROUND_HU = min(low for low, _ in CT_WINDOWS.values())
INT16_RANGE = (-32768, 32767)
GZIP_LEVEL = 1  # nibabel's default: level 6 saves ~4 % on CT int16 at four times the time
DATASET_NAME = "dataset.json"
REPORT_NAME = "skipped_inputs.csv"
VOLUMES_FOLDER = "volumes"
SLICES_FOLDER = "slices"
PARTIAL_SUFFIX = ".partial"

BadInput = tuple[type, str, str]  # (BadInputError subclass, path, reason): picklable, unlike the error itself


@dataclass(frozen=True)
class PreparedCT:
    """What :func:`prepare_ct` did: the set's folder (a bundle's ``dataset_dir``), its datalist and report, the
    volumes listed (``prepared`` now + ``reused`` from an earlier run), the bad inputs skipped, and the bytes of
    the listed volumes' inputs and prepared files."""

    dataset_dir: Path
    datalist: Path
    report: Path | None
    volumes: int
    prepared: int
    reused: int
    skipped: int
    source_bytes: int
    prepared_bytes: int


@dataclass(frozen=True)
class PreparedSlices:
    """What :func:`prepare_slices` did: the merged datalist, the report, the slices listed and those skipped."""

    datalist: Path
    report: Path | None
    slices: int
    skipped: int


# ---------------------------------------------------------------------------------------------- 3D


def preprocessing(pixdim: float | Sequence[float]) -> dict:
    """The description of the deterministic preprocessing, with its ``"key"``: 12 hex of the sha1 of the rest.

    Raises:
        ValueError: ``pixdim`` is not one positive number or three.
    """
    spacing = [float(p) for p in ensure_tuple(pixdim)]
    spacing = spacing * 3 if len(spacing) == 1 else spacing
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"pixdim must be one positive spacing in mm or three, got {pixdim!r}")
    description = {"format": FORMAT_VERSION, "orientation": "RAS", "pixdim": spacing,
                   "foreground_hu": FOREGROUND_HU, "dtype": "int16"}
    key = hashlib.sha1(json.dumps(description, sort_keys=True).encode()).hexdigest()[:12]
    return {**description, "key": key}


def prepare_ct(
    sources: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    pixdim: float | Sequence[float] = (1.5, 1.5, 1.5),
    num_workers: int | None = None,
) -> PreparedCT:
    """Prepare every volume of ``sources`` into ``output_dir/<key>`` and write its ``dataset.json``.

    Args:
        sources: MSD ``dataset.json`` files or folders, nnU-Net v2 raw dataset folders, NIfTI folders, DICOM trees.
            Each is named for the record by its folder's name (repeats get ``_2``, ``_3`` ...).
        output_dir: where the prepared set's folder is made.
        pixdim: target spacing in mm (one number: isotropic).
        num_workers: processes preparing volumes (default: one per core); 0 or 1: in this process.

    Returns:
        what was done; the datalist lists every finished volume of ``sources`` (prepared now or reused), sorted by
        source, then input: ``{"image": "volumes/...", "source": name, "original": absolute input path}``.

    Raises:
        DatalistError: a source is missing or holds no image; or no volume at all could be prepared (the message
            names the sources and the report of skipped inputs).
        ValueError: an invalid ``pixdim``.
    """
    settings = preprocessing(pixdim)
    root = absolute_path(output_dir) / settings["key"]
    paths, names = _named_sources(sources)
    report = root / REPORT_NAME
    policy = BadInputPolicy(skip=True, report_path=_partial(report))
    _remove_partials(root)
    volumes = [(name, image) for path, name in zip(paths, names) for image in source_volumes(path, policy)]
    outputs = [root / VOLUMES_FOLDER / name / prepared_name(image) for name, image in volumes]
    todo = [index for index, output in enumerate(outputs) if not output.is_file()]
    results = _map(_prepare_or_skip, [(volumes[i][1], str(outputs[i]), settings["pixdim"]) for i in todo],
                   num_workers, total=len(volumes))
    bad = {index: result for index, result in zip(todo, results) if not isinstance(result, int)}
    skipped = _finish_report(policy, bad.values(), report)
    finished = sorted((i for i in range(len(volumes)) if i not in bad),
                      key=lambda i: (volumes[i][0], volume_source(volumes[i][1]), outputs[i].name))
    if not finished:
        raise DatalistError(_nothing_prepared(paths, report if skipped else None))
    entries = [{"image": outputs[i].relative_to(root).as_posix(), "source": volumes[i][0],
                "original": volume_source(volumes[i][1])} for i in finished]
    source_bytes = sum(_size(volumes[i][1]) for i in finished)
    prepared_bytes = sum(outputs[i].stat().st_size for i in finished)
    dataset = {
        "name": f"prepared CT {settings['key']}",
        "description": "CT volumes prepared once by tools.prepare; each bundle windows them at load time",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "preprocessing": settings,
        "sources": dict(zip(names, (str(path) for path in paths))),
        "statistics": {"volumes": len(entries), "source_bytes": source_bytes, "prepared_bytes": prepared_bytes,
                       "skipped": skipped},
        "training": entries,
    }
    _write_atomically(root / DATASET_NAME, (json.dumps(dataset, indent=2) + "\n").encode())
    return PreparedCT(root, root / DATASET_NAME, report if skipped else None, len(entries), len(todo) - len(bad),
                      len(volumes) - len(todo), skipped, source_bytes, prepared_bytes)


def source_volumes(source: Path, policy: BadInputPolicy) -> list[str | list[str]]:
    """The images of one source, unchecked: NIfTI paths and DICOM series (lists of slice files).

    An MSD ``dataset.json`` (or its folder) gives its ``training`` and ``validation`` images; an nnU-Net v2
    dataset (a ``dataset.json`` with ``file_ending`` and no ``training`` list) channel ``0000`` of ``imagesTr/``;
    a NIfTI folder the images that :func:`common.data.datalist_from_nifti_folder` lists (``imagesTr/``,
    ``images/`` or the folder itself); otherwise every DICOM series under the folder. Test images stay unseen.

    Args:
        source: the source, an absolute path.
        policy: what to do with a file that claims to be DICOM but cannot be read while listing (skip, report).

    Raises:
        DatalistError: the source is missing, its json invalid or incomplete, or it holds no image.
    """
    json_path = msd_json_path(source)
    if json_path is None:
        if holds_nifti(source):
            return [str(path) for path in nifti_files(nifti_layout(source, "training")[0])]
        return [entry["image"] for entry in load_datalist(source, skip_unreadable=policy)]
    try:
        dataset = json.loads(json_path.read_text())
    except ValueError as error:
        raise DatalistError(f"{json_path} is not valid JSON: {error}") from error
    if "file_ending" in dataset and "training" not in dataset:
        return nnunet_images(json_path.parent, dataset["file_ending"])
    keys = ["training", *(["validation"] if "validation" in dataset else [])]
    return [entry["image"] for key in keys for _, entry in msd_entries(json_path, key, is_segmentation=False)]


def nnunet_images(folder: Path, file_ending: str) -> list[str]:
    """Channel ``0000`` of the training images of an nnU-Net v2 raw dataset: ``imagesTr/<case>_0000<file_ending>``.

    Raises:
        DatalistError: there is none.
    """
    images = sorted((folder / "imagesTr").glob(f"*_0000{file_ending}"))
    if not images:
        raise DatalistError(f"nnU-Net dataset {folder} has no imagesTr/<case>_0000{file_ending}")
    return [str(path) for path in images]


def prepared_name(image: str | Sequence[str]) -> str:
    """The prepared file's name: ``<stem of the input>_<8 hex of the sha1 of its path>.nii.gz``; a DICOM series
    is named by its folder and hashed by its files (a folder may hold several series)."""
    name = Path(volume_source(image)).name
    suffix = next((s for s in (".nii.gz", ".nii", *DICOM_SUFFIXES) if name.lower().endswith(s)), Path(name).suffix)
    digest = hashlib.sha1("\n".join(ensure_tuple(image)).encode()).hexdigest()[:8]
    return f"{name[: len(name) - len(suffix)]}_{digest}.nii.gz"


def prepare_volume(image: str | Sequence[str], output: str | os.PathLike, pixdim: Sequence[float]) -> int:
    """Read and check one volume, orient it to RAS, resample it to ``pixdim``, crop it to the voxels above
    :data:`FOREGROUND_HU`, and write it as gzipped int16 NIfTI (HU, rounded) to ``output``, atomically.

    Args:
        image: a NIfTI path or a DICOM series (its slice files).
        output: the ``.nii.gz`` to write.
        pixdim: target spacing in mm, three numbers.

    Returns:
        the bytes written.

    Raises:
        BadInputError: a bad input (possibly as the cause of the loader's error): missing, unreadable, truncated,
            NaN or values no CT holds, not one 3D volume, or no voxel above :data:`FOREGROUND_HU`.
    """
    volume = Compose([EnsureType(dtype=torch.float32), Orientation(axcodes="RAS", labels=None),
                      Spacing(pixdim=pixdim, mode="bilinear")])(_read_volume(image))
    if not bool((volume > FOREGROUND_HU).any()):
        raise BadInputError(volume_source(image), f"no voxel above {FOREGROUND_HU:g} HU; expected a CT holding more "
                                                  "than padding")
    volume = CropForeground(select_fn=_above_padding, allow_smaller=True)(volume)
    hu = torch.round(volume.as_tensor()[0]).clamp(*INT16_RANGE).to(torch.int16).numpy()
    nifti = nib.Nifti1Image(hu, volume.affine.numpy())
    nifti.header.set_qform(volume.affine.numpy(), code=1)
    nifti.header.set_sform(volume.affine.numpy(), code=1)
    nifti.header.set_xyzt_units("mm")
    data = gzip.compress(nifti.to_bytes(), compresslevel=GZIP_LEVEL, mtime=0)
    _write_atomically(Path(output), data)
    return len(data)


def _read_volume(image: str | Sequence[str]) -> MetaTensor:
    """One volume as ``(1, X, Y, Z)`` in HU (:func:`common.transforms.checked_loader`).

    Raises:
        BadInputError: as :func:`prepare_volume` (the loader's come as the cause of a ``RuntimeError``).
    """
    missing = [path for path in ensure_tuple(image) if not os.path.exists(path)]
    if missing:
        raise UnreadableFileError(missing[0], "does not exist")
    if is_nifti(image):
        try:
            checked_nifti_pair(image, None, skip_unreadable=False)  # a truncated .nii reads as an OSError otherwise
        except DatalistError as error:
            if isinstance(error, BadInputError):
                raise
            # else complete but not 3D: the check below says so, with the shape, as for any format
    volume = checked_loader(["image"])({"image": image})["image"]
    if volume.ndim != 4 or volume.shape[0] != 1:
        raise BadInputError(volume_source(image), f"wrong dimensionality: shape {tuple(volume.shape)} with its "
                                                  "channel first; expected one 3D volume (1, X, Y, Z)")
    return volume


def _above_padding(image: torch.Tensor) -> torch.Tensor:
    """``select_fn`` of the crop: the voxels that some bundle's window keeps."""
    return image > FOREGROUND_HU


def _prepare_or_skip(task: tuple) -> int | BadInput:
    """:func:`prepare_volume` of ``task = (image, output, pixdim)``: its bytes, or the bad input it met."""
    try:
        return prepare_volume(*task)
    except Exception as error:  # a bad input may come wrapped, e.g. in Compose's RuntimeError
        bad = bad_input_cause(error)
        if bad is None:
            raise
        return type(bad), str(bad.path), bad.reason


def _size(image: str | Sequence[str]) -> int:
    return sum(os.path.getsize(path) for path in ensure_tuple(image))


# ---------------------------------------------------------------------------------------------- 2D


def prepare_slices(
    sources: Sequence[str | os.PathLike], output_dir: str | os.PathLike, num_workers: int | None = None
) -> PreparedSlices:
    """Merge slice folders and slice datalists into ``output_dir/slices/datalist.json``, checking each slice loads.

    The datalist is the format :func:`common.data.slices.slice_datalist` reads: ``[{"image": absolute path,
    "source": name}, ...]`` sorted by source, then path. A slice that does not load as one 2D image
    (:func:`common.transforms.slices.load_slice_transforms`) is skipped and listed in
    ``output_dir/slices/skipped_inputs.csv``.

    Args:
        sources: slice folders or ``datalist.json`` files (:func:`common.data.slices.slice_datalist`).
        output_dir: where the ``slices`` folder is made.
        num_workers: processes checking slices (default: one per core); 0 or 1: in this process.

    Raises:
        DatalistError: a source is missing or holds no slice; or no slice loads.
    """
    root = absolute_path(output_dir) / SLICES_FOLDER
    paths, names = _named_sources(sources)
    report = root / REPORT_NAME
    policy = BadInputPolicy(skip=True, report_path=_partial(report))
    _remove_partials(root)
    slices = [(name, entry["image"]) for path, name in zip(paths, names) for entry in slice_datalist(path)]
    results = _map(_check_slice, [image for _, image in slices], num_workers, total=len(slices))
    skipped = _finish_report(policy, [result for result in results if result is not None], report)
    entries = sorted(({"image": image, "source": name} for (name, image), result in zip(slices, results)
                      if result is None), key=lambda entry: (entry["source"], entry["image"]))
    if not entries:
        raise DatalistError(_nothing_prepared(paths, report if skipped else None))
    _write_atomically(root / DATALIST_NAME, (json.dumps(entries, indent=2) + "\n").encode())
    return PreparedSlices(root / DATALIST_NAME, report if skipped else None, len(entries), skipped)


def _check_slice(image: str) -> BadInput | None:
    """``None`` if the slice file loads as one 2D image, else the bad input: a failed content check, or a file
    that PIL / numpy cannot read (``OSError``) or that is not one grey 2D image (``ValueError``)."""
    try:
        Compose(load_slice_transforms(["image"]))({"image": image})
    except Exception as error:  # wrapped by Compose in a RuntimeError
        bad = bad_input_cause(error)
        if bad is not None:
            return type(bad), str(bad.path), bad.reason
        cause = error.__cause__ or error
        if not isinstance(cause, (OSError, ValueError)):
            raise
        return UnreadableFileError, image, f"{type(cause).__name__}: {cause}"
    return None


# ---------------------------------------------------------------------------------------------- shared


def _named_sources(sources: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """The absolute sources and their names: a folder's name, a file's folder's name; repeats get ``_2`` ...

    Raises:
        DatalistError: no source given.
    """
    if isinstance(sources, (str, os.PathLike)) or not sources:
        raise DatalistError(f"expected a list of sources (dataset.json files or folders), got {sources!r}")
    paths = [absolute_path(source) for source in sources]
    names, seen = [], {}
    for path in paths:
        name = path.parent.name if path.is_file() else path.name
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return paths, names


def _map(function: Callable, tasks: list, num_workers: int | None, total: int) -> list:
    """``[function(task) for task in tasks]``, in this process (``num_workers`` 0 or 1) or in a process pool
    (default: one per core), with a progress bar over ``total`` (the tasks not given count as done).

    Raises:
        Exception: the first error of ``function``; the tasks not started yet are cancelled.
    """
    workers = (os.cpu_count() or 1) if num_workers is None else num_workers
    results: list = [None] * len(tasks)
    with tqdm(total=total, initial=total - len(tasks), desc="prepare", unit="input") as progress:
        if workers <= 1 or len(tasks) <= 1:
            for index, task in enumerate(tasks):
                results[index] = function(task)
                progress.update()
            return results
        with ProcessPoolExecutor(min(workers, len(tasks)), initializer=torch.set_num_threads, initargs=(1,)) as pool:
            futures = {pool.submit(function, task): index for index, task in enumerate(tasks)}
            try:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    progress.update()
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
    return results


def _finish_report(policy: BadInputPolicy, bad: Sequence[BadInput], report: Path) -> int:
    """Report the bad inputs through ``policy`` (whose report, the ``.partial`` of ``report``, may already hold
    those met while listing) and move its report into place (removing an earlier run's); the rows reported."""
    for kind, path, reason in bad:
        policy.handle(kind(path, reason))
    partial = Path(policy.report_path)
    if not partial.is_file():
        report.unlink(missing_ok=True)
        return 0
    with open(partial, newline="") as file:
        rows = sum(1 for _ in csv.reader(file)) - 1
    os.replace(partial, report)
    return rows


def _nothing_prepared(sources: Sequence[Path], report: Path | None) -> str:
    listed = f"every input was a bad input, listed with its reason in {report}" if report else "no input found"
    return f"nothing prepared from {', '.join(map(str, sources))}: {listed}"


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``<path>.partial`` and a rename: ``path`` is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial(path)
    with open(partial, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


def _partial(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL_SUFFIX)


def _remove_partials(root: Path) -> None:
    """Delete what a killed run left half-written under ``root``."""
    if root.is_dir():
        for leftover in root.rglob(f"*{PARTIAL_SUFFIX}"):
            leftover.unlink()
