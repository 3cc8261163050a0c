"""2D CT slices for the slice study (Wolf et al. 2023): datalists of slice files, axial slices of CT volumes,
and the demo slices.

A slice datalist is ``[{"image": path}, ...]`` with absolute paths, made by :func:`slice_datalist` from a folder
of slice files (PNG / JPG / NPY, searched recursively) or from the ``datalist.json`` that :func:`write_slices`
(and ``python -m tools.extract_slices``) writes next to the slices it extracts.

Extraction (:func:`write_slices`): every ``every``-th axial slice of each CT volume (NIfTI or DICOM series, read
by :func:`common.data.image_loader`), oriented L, P, S and shown as :mod:`common.data.demo` describes under
Geometry: ``volume[:, :, k].T``, anterior at the top, the patient's right on the left of the image
(radiological display). Slice ``k`` counts from inferior to superior. Grey values follow
:func:`common.data.grey_values.hu_to_unit` (PNG: times 255, rounded; NPY: float32 in ``[0, 1]``). In-plane
resampling and padding are optional (the paper keeps the scanner's 512 x 512 grid).

``python -m common.data.slices [--root DIR]`` generates the demo slices (or finds them) and prints where.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import fire
import numpy as np
from monai.transforms import Compose, EnsureTyped, Orientationd, ResizeWithPadOrCropd, Spacingd
from PIL import Image

from common.data.datalist import NIFTI_SUFFIXES, absolute_path, image_loader
from common.data.dicom import DICOM_SUFFIXES
from common.data.demo import ensure_demo_data
from common.data.errors import DatalistError
from common.data.generated import ensure_generated, read_dataset_json
from common.data.grey_values import hu_to_unit

SLICE_SUFFIXES = (".png", ".jpg", ".jpeg", ".npy")
DATALIST_NAME = "datalist.json"
FORMATS = ("png", "npy")
AIR_HU = -1024.0  # padding value

ENV_ROOT = "CT_SSL_SLICE_DEMO_DIR"
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / ".cache" / "demo_ct_slices"
# Written into dataset.json; bump the version when the slices change, so that cached demo slices are regenerated.
GENERATOR = "common.data.slices"
GENERATOR_VERSION = 1
DEMO_SPACING = 1.0  # mm in-plane: the 240 x 192 mm phantoms become 240 x 192 pixels ...
DEMO_SIZE = 256  # ... padded to 256 x 256


# ------------------------------------------------------------------------------------------ datalists


def slice_datalist(source: str | os.PathLike) -> list[dict]:
    """Datalist of 2D slices: ``[{"image": absolute path}, ...]``.

    Args:
        source: a ``datalist.json`` written by :func:`write_slices` / ``tools.extract_slices``; a folder holding
            one (it is used in place of the files beside it); or a folder of slice files (``.png``, ``.jpg``,
            ``.jpeg``, ``.npy``, any case, searched recursively, hidden files and folders ignored).

    Returns:
        the datalist, in the json's order or sorted by path.

    Raises:
        DatalistError: ``source`` is missing or holds no slices, or the json is invalid, empty, or lists a
            missing file (the message names the file).
    """
    path = absolute_path(source)
    if path.is_dir() and (path / DATALIST_NAME).is_file():
        path = path / DATALIST_NAME
    if path.is_file() and path.suffix.lower() == ".json":
        return _datalist_from_json(path)
    if not path.is_dir():
        raise DatalistError(f"{path} does not exist; expected a folder of slices or a {DATALIST_NAME}")
    files = sorted(
        file
        for file in path.rglob("*")
        if file.suffix.lower() in SLICE_SUFFIXES
        and not any(part.startswith(".") for part in file.relative_to(path).parts)
        and file.is_file()
    )
    if not files:
        raise DatalistError(f"no slices in {path}; expected {', '.join(SLICE_SUFFIXES)} files (recursively) "
                            f"or a {DATALIST_NAME} written by tools.extract_slices")
    return [{"image": str(file)} for file in files]


def _datalist_from_json(path: Path) -> list[dict]:
    """The entries of a slice ``datalist.json`` (a list of ``{"image": path relative to the json, ...}``)."""
    try:
        entries = json.loads(path.read_text())
    except ValueError as error:
        raise DatalistError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(entries, list) or not entries:
        raise DatalistError(f"{path}: expected a non-empty list of {{'image': path}} entries")
    datalist = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise DatalistError(f"entry {index} of {path} has no 'image' path: {entry}")
        image = (path.parent / entry["image"]).resolve()
        if not image.is_file():
            raise DatalistError(f"image {image} of entry {index} of {path} does not exist")
        datalist.append({"image": str(image)})
    return datalist


# ------------------------------------------------------------------------------------------ extraction


def volume_transforms(spacing: float | None = None, size: int | None = None) -> Compose:
    """Read a CT volume (NIfTI file or DICOM series entry) in HU as ``(1, X, Y, Z)`` with voxel axes L, P, S.

    Args:
        spacing: resample in-plane to this spacing in mm (bilinear), the slice spacing kept; None: keep the grid.
        size: pad (with -1024 HU) or crop in-plane, centred, to ``size x size``; None: keep the size.
    """
    transforms = [
        image_loader("image"),
        EnsureTyped("image", dtype="float32"),
        Orientationd("image", axcodes="LPS", labels=None),  # axis labels of the image's "space": RAS, any loader
    ]
    if spacing is not None:
        transforms.append(Spacingd("image", pixdim=(spacing, spacing, -1.0), mode="bilinear"))
    if size is not None:
        transforms.append(ResizeWithPadOrCropd("image", spatial_size=(size, size, -1), value=AIR_HU))
    return Compose(transforms)


def axial_slices(volume: np.ndarray, every: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """``(k, slice)`` for every ``every``-th axial slice of an L, P, S volume ``(X, Y, Z)`` or ``(1, X, Y, Z)``.

    Each slice is ``volume[..., k].T``: ``(Y, X)``, rows from anterior to posterior, columns from the patient's
    right to left, as a viewer shows it.
    """
    volume = np.asarray(volume)
    volume = volume[0] if volume.ndim == 4 else volume
    for k in range(0, volume.shape[-1], every):
        yield k, volume[:, :, k].T


def volume_names(datalist: Sequence[dict]) -> list[str]:
    """A distinct, readable name per volume: its source (a NIfTI file, a DICOM series' folder, or the file of a
    one-slice series, without suffix) relative to the folder all sources share, ``/`` replaced by ``_``; repeats
    get ``_2``, ``_3`` ..."""
    paths = []
    for entry in datalist:
        path = Path(volume_source(entry["image"]))
        suffix = next((s for s in NIFTI_SUFFIXES + DICOM_SUFFIXES if path.name.lower().endswith(s)), "")
        paths.append(path.with_name(path.name[: len(path.name) - len(suffix)]))
    common = Path(os.path.commonpath([str(p) for p in paths])) if len(paths) > 1 else None
    names, seen = [], {}
    for path in paths:
        relative = path.relative_to(common) if common is not None and path != common else Path(path.name)
        name = "_".join(relative.parts)
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return names


def volume_source(image: str | Sequence[str]) -> str:
    """Where a datalist entry's image comes from: the NIfTI file, the folder of a DICOM series, or its only file."""
    if isinstance(image, (list, tuple)):
        return str(Path(image[0]).parent) if len(image) > 1 else str(image[0])
    return str(image)


def _save_slice(unit: np.ndarray, path: Path, fmt: str) -> None:
    if fmt == "png":
        Image.fromarray(np.round(unit * 255.0).astype(np.uint8), mode="L").save(path)
    else:
        np.save(path, unit.astype(np.float32))


def write_slices(
    datalist: Sequence[dict],
    output_dir: str | os.PathLike,
    window: str = "full",
    fmt: str = "png",
    every: int = 1,
    spacing: float | None = None,
    size: int | None = None,
    progress: Callable[[Iterable], Iterable] = iter,
) -> list[dict]:
    """Write the axial slices of CT volumes as 2D files, and ``datalist.json`` listing them.

    Layout: ``output_dir/<volume name>/<k:04d>.png`` (or ``.npy``), ``k`` the slice index in the L, P, S volume;
    ``datalist.json``: ``[{"image": relative path, "volume": source, "slice": k}, ...]``. Existing files of the
    same names are overwritten; the caller decides whether ``output_dir`` may be written into.

    Args:
        datalist: the volumes, ``[{"image": NIfTI path or DICOM series file list}, ...]`` (:mod:`common.data`).
        output_dir: the folder to write into (created).
        window: grey-value mapping, a key of :data:`common.data.grey_values.SLICE_WINDOWS`.
        fmt: ``"png"`` (8-bit, value = round(255 * unit)) or ``"npy"`` (float32 in ``[0, 1]``).
        every: keep every ``every``-th slice (1: all).
        spacing, size: in-plane resampling and padding (see :func:`volume_transforms`).
        progress: wraps the iteration over volumes (e.g. ``tqdm``).

    Returns:
        the entries written to ``datalist.json``.

    Raises:
        ValueError: an unknown ``fmt`` or window, or ``every < 1``.
        DatalistError: a volume cannot be read (the message names it).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown slice format {fmt!r}; expected one of {FORMATS}")
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    hu_to_unit(np.zeros(1), window)  # fail on an unknown window before reading anything
    output = Path(output_dir)
    load = volume_transforms(spacing, size)
    entries = []
    for entry, name in progress(list(zip(datalist, volume_names(datalist)))):
        source = volume_source(entry["image"])
        try:
            volume = load({"image": entry["image"]})["image"].numpy()
        except Exception as error:  # any reader's failure: name the volume
            raise DatalistError(f"cannot read CT volume {source}: {type(error).__name__}: {error}") from error
        (output / name).mkdir(parents=True, exist_ok=True)
        for k, hu in axial_slices(volume, every):
            relative = f"{name}/{k:04d}.{fmt}"
            _save_slice(hu_to_unit(hu, window), output / relative, fmt)
            entries.append({"image": relative, "volume": source, "slice": k})
    (output / DATALIST_NAME).write_text(json.dumps(entries, indent=4) + "\n")
    return entries


# ------------------------------------------------------------------------------------------ demo


def _write_demo(folder: Path, stamp: dict, volumes: list[dict]) -> None:
    """The demo slices, their ``datalist.json``, and a ``dataset.json`` recording ``stamp``."""
    entries = write_slices(volumes, folder, window=stamp["window"], spacing=stamp["spacing"], size=stamp["size"])
    dataset = {
        "name": "DemoCTSlices",
        "description": "Axial slices of the synthetic demo phantoms (common.data.demo), not real anatomy",
        "reference": "generated by ct-ssl-bundles common.data.slices",
        "licence": "Apache-2.0",
        "tensorImageSize": "2D",
        "modality": {"0": "CT"},
        "training": [{"image": entry["image"]} for entry in entries],
        "generator": stamp,
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")


def ensure_slice_demo_data(root: str | os.PathLike | None = None) -> Path:
    """Generate the demo slices on first use; return their folder (give it to :func:`slice_datalist`).

    Every axial slice of the training phantoms of :func:`common.data.ensure_demo_data` (6 x 50 = 300 slices),
    resampled to 1 mm in-plane, padded to 256 x 256 with air, full window, as 8-bit PNG:
    ``case_XXX/<k:04d>.png`` plus ``datalist.json``. Deterministic; cached and regenerated as the 3D demo data
    (:func:`common.data.generated.ensure_generated`) when this generator or the phantoms change.

    Args:
        root: folder of the slices; default ``$CT_SSL_SLICE_DEMO_DIR``, else ``<repository>/.cache/demo_ct_slices``.

    Raises:
        FileExistsError: ``root`` holds something other than demo slices; it is never deleted.
    """
    root = Path(root or os.environ.get(ENV_ROOT) or DEFAULT_ROOT).expanduser().resolve()
    phantoms_root = ensure_demo_data().parent
    phantoms = read_dataset_json(phantoms_root)
    volumes = [{"image": str(Path(phantoms_root, entry["image"]).resolve())} for entry in phantoms["training"]]
    stamp = {"module": GENERATOR, "version": GENERATOR_VERSION, "volumes": phantoms["generator"],
             "window": "full", "spacing": DEMO_SPACING, "size": DEMO_SIZE}
    return ensure_generated(root, stamp, lambda folder: _write_demo(folder, stamp, volumes)).parent


def main(root: str | None = None) -> str:
    """Generate (or find) the demo slices and return their folder."""
    return str(ensure_slice_demo_data(root))


if __name__ == "__main__":
    fire.Fire(main)
