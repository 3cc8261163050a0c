"""Generated datasets (the demo phantoms): written once, atomically, and reused while their parameters hold.

A generated dataset is a folder with a ``dataset.json`` whose ``generator`` entry (the *stamp*) records the
generating module and its parameters. :func:`ensure_generated` reuses a complete dataset with the same stamp;
otherwise it writes a new one into a temporary sibling folder and renames it into place, replacing an outdated
or partial dataset of the same module, so that an interrupted run or two processes starting at once never leave
a half-written dataset behind. A folder holding anything else is never deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np


def read_dataset_json(root: Path) -> dict | None:
    """The parsed ``root/dataset.json``, or None where it is missing or not a JSON object."""
    try:
        dataset = json.loads((root / "dataset.json").read_text())
    except (OSError, ValueError):
        return None
    return dataset if isinstance(dataset, dict) else None


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a synthetic volume as NIfTI with ``affine`` as both qform and sform, in mm."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = b"synthetic phantom, common.data.demo"
    nib.save(image, path)


def _listed_files(dataset: dict) -> list[str]:
    """Every path of the ``training``, ``validation`` and ``test`` lists (entries as paths or image / label dicts)."""
    files = []
    for key in ("training", "validation", "test"):
        for entry in dataset.get(key, []):
            values = [entry] if isinstance(entry, str) else [entry.get("image"), entry.get("label")]
            files += [value for value in values if isinstance(value, str)]
    return files


def _is_complete(root: Path, stamp: dict) -> bool:
    """Whether ``root`` holds a dataset generated with ``stamp``, all of its files present."""
    dataset = read_dataset_json(root)
    if dataset is None or dataset.get("generator") != stamp:
        return False
    return all((root / path).is_file() for path in _listed_files(dataset))


def _is_replaceable(root: Path, module: str, is_leftover: Callable[[Path], bool]) -> bool:
    """Whether ``root`` may be deleted: absent, empty, a (possibly outdated) dataset of ``module``, or a folder
    without ``dataset.json`` that ``is_leftover`` recognises as an interrupted generation."""
    if not root.is_dir():
        return not root.exists()
    dataset = read_dataset_json(root)
    if dataset is not None:
        generator = dataset.get("generator")
        return isinstance(generator, dict) and generator.get("module") == module
    return not any(root.iterdir()) or is_leftover(root)


def _discard(folder: Path) -> None:
    """Move ``folder`` out of the way (one rename), then delete it."""
    trash = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex}")
    try:
        os.rename(folder, trash)
    except FileNotFoundError:  # another process moved it first
        return
    shutil.rmtree(trash, ignore_errors=True)


def _publish(staging: Path, root: Path, stamp: dict) -> None:
    """Rename the finished ``staging`` folder to ``root``, unless another process published first."""
    for attempt in range(2):
        try:
            os.rename(staging, root)  # fails while root exists and is not empty
            return
        except OSError:
            if _is_complete(root, stamp):
                return
            if attempt:
                raise
            _discard(root)


def ensure_generated(
    root: Path,
    stamp: dict,
    write: Callable[[Path], None],
    is_leftover: Callable[[Path], bool] = lambda root: False,
) -> Path:
    """The ``dataset.json`` of the dataset ``stamp`` describes in ``root``, generated first where needed.

    Args:
        root: the dataset's folder.
        stamp: the ``generator`` entry, with at least ``"module"``; ``write`` must store it in ``dataset.json``.
        write: writes the whole dataset, ``dataset.json`` included, into a new folder it is given.
        is_leftover: recognises a folder without ``dataset.json`` left by an interrupted generation of this
            module, which may then be replaced.

    Raises:
        FileExistsError: ``root`` holds something other than a dataset of ``stamp["module"]``; it is never deleted.
    """
    if _is_complete(root, stamp):
        return root / "dataset.json"
    if not _is_replaceable(root, stamp["module"], is_leftover):
        raise FileExistsError(f"{root} exists and is not a demo dataset of {stamp['module']}; choose another root")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        write(staging / "data")
        _publish(staging / "data", root, stamp)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root / "dataset.json"
