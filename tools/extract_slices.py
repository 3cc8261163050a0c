"""CT volumes -> 2D axial slices (PNG or NPY) plus ``datalist.json``: the pre-training data of the 2D slice study.

::

    python -m tools.extract_slices SOURCE OUTPUT_DIR [--window full|brain|slice] [--format png|npy]
                                   [--every 1] [--spacing MM] [--size N] [--overwrite]

SOURCE is a NIfTI file, a folder of NIfTI files (or an MSD ``dataset.json`` / its folder: training and validation
images), a DICOM series folder, or a folder of series folders (searched recursively, one volume per series).
Slices, their orientation and grey values are described in :mod:`common.data.slices`; the defaults follow the
paper (full HU range -1024..3071 -> 0..255, the scanner's grid). ``OUTPUT_DIR`` is then a pre-training
``dataset_dir`` (:func:`common.data.slice_datalist` reads its ``datalist.json``).

An existing non-empty OUTPUT_DIR is refused unless ``--overwrite``, which writes over files of the same names
and rewrites ``datalist.json`` (files of an earlier run that are not rewritten stay, unlisted).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import fire
from tqdm import tqdm

from common.data.datalist import absolute_path, checked_nifti_pair, is_nifti, pretraining_datalist
from common.data.errors import DatalistError
from common.data.slices import write_slices


def volume_datalist(source: str | os.PathLike) -> list[dict]:
    """The CT volumes of ``source``: ``[{"image": NIfTI path or DICOM series file list}, ...]``.

    Raises:
        DatalistError: ``source`` is missing, holds no volume, or a volume is unreadable (the message names it).
    """
    path = absolute_path(source)
    if path.is_file() and is_nifti(str(path)):
        checked_nifti_pair(str(path), None, skip_unreadable=False)
        return [{"image": str(path)}]
    return pretraining_datalist(path)


def extract_slices(
    source: str,
    output_dir: str,
    window: str = "full",
    format: str = "png",
    every: int = 1,
    spacing: float | None = None,
    size: int | None = None,
    overwrite: bool = False,
) -> str:
    """Write the axial slices of every CT volume of ``source`` into ``output_dir``; return a summary line.

    Args:
        source: a NIfTI file, a folder of NIfTI, a dataset.json, a DICOM series folder, or a folder of series.
        output_dir: the folder to write slices and ``datalist.json`` into.
        window: ``full`` (-1024..3071 HU, the paper), ``brain`` (W 80 / L 35), or ``slice`` (each slice's
            min..max, the official preprocessing code).
        format: ``png`` (8-bit grey) or ``npy`` (float32 in [0, 1]).
        every: keep every ``every``-th axial slice.
        spacing: resample in-plane to this spacing in mm (default: keep the scanner's grid).
        size: pad with air or crop in-plane, centred, to ``size x size`` (default: keep).
        overwrite: write into an existing non-empty ``output_dir``.

    Raises:
        FileExistsError: ``output_dir`` exists and is not empty, without ``overwrite``.
        DatalistError: no volume in ``source``, or a volume cannot be read (the message names it).
    """
    output = absolute_path(output_dir)
    if output.is_file() or (output.is_dir() and any(output.iterdir()) and not overwrite):
        raise FileExistsError(f"{output} exists and is not an empty folder; pass --overwrite to write into a folder")
    start = time.perf_counter()
    volumes = volume_datalist(source)
    entries = write_slices(volumes, output, window=window, fmt=format, every=every, spacing=spacing, size=size,
                           progress=lambda items: tqdm(items, desc="volumes", unit="volume"))
    return (f"{len(entries)} slices of {len(volumes)} volumes written to {output} "
            f"({Path(output, 'datalist.json')}) in {time.perf_counter() - start:.1f} s")


def main() -> None:
    try:
        fire.Fire(extract_slices)
    except (DatalistError, FileExistsError, ValueError) as error:
        raise SystemExit(f"extract_slices: {error}") from None


if __name__ == "__main__":
    main()
