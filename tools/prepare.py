"""CT from many sources -> one prepared set that every pre-training bundle reads, prepared once.

::

    python -m tools.prepare SOURCE [SOURCE ...] --output_dir DIR [--pixdim 1.5,1.5,1.5] [--num_workers N]
                            [--mode 3d|2d]

3D (default): each SOURCE is an MSD ``dataset.json`` or its folder, an nnU-Net v2 raw dataset folder, a folder of
NIfTI, or a folder of DICOM series. Every volume is oriented to RAS, resampled to ``--pixdim``, cropped to what
some bundle's window keeps, and stored as int16 HU under ``DIR/<key>`` (:mod:`common.transforms.prepare`), in parallel
(``--num_workers``, default one per core). Pass ``--dataset_dir DIR/<key>`` to any 3D pre-training bundle at the
same ``pixdim``: it windows the prepared volumes at load time. A second run (after a kill, or for another bundle)
reuses every finished volume.

2D (``--mode 2d``): each SOURCE is a slice folder or a slice ``datalist.json`` (``tools.extract_slices``); they are
merged into ``DIR/slices/datalist.json`` (pass ``--dataset_dir DIR/slices`` to a 2D bundle).

Bad inputs are skipped and listed with their reason in ``skipped_inputs.csv`` beside the datalist; the run stops
with a non-zero exit when nothing at all could be prepared.
"""

from __future__ import annotations

import os

import fire

from common.transforms.prepare import PreparedCT, PreparedSlices, prepare_ct, prepare_slices

MODES = ("3d", "2d")


def prepare(
    *sources: str,
    output_dir: str,
    pixdim: float | tuple[float, ...] = (1.5, 1.5, 1.5),
    num_workers: int | None = None,
    mode: str = "3d",
) -> str:
    """Prepare every input of ``sources`` under ``output_dir``; return a summary line.

    Args:
        sources: dataset.json files or folders (see the module's docstring).
        output_dir: where the prepared set is made.
        pixdim: target spacing in mm, ``1.5,1.5,1.5``, ``[1.5,1.5,1.5]`` or one number (3D only).
        num_workers: processes (default: one per core); 0 or 1: in this process.
        mode: ``3d`` (volumes) or ``2d`` (slices).

    Raises:
        ValueError: an unknown ``mode`` or an invalid ``pixdim``.
        common.data.DatalistError: a source is missing or empty, or nothing could be prepared.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if mode == "2d":
        return _slices_summary(prepare_slices(sources, output_dir, num_workers))
    return _ct_summary(prepare_ct(sources, output_dir, pixdim, num_workers))


def _ct_summary(result: PreparedCT) -> str:
    skipped = f"{result.skipped} skipped (listed in {result.report})" if result.report else "0 skipped"
    return (
        f"{result.volumes} volumes ({result.prepared} prepared, {result.reused} reused, {skipped}); "
        f"{_mb(result.prepared_bytes / result.volumes)} per volume prepared vs "
        f"{_mb(result.source_bytes / result.volumes)} per source volume; datalist {result.datalist}; "
        f"pass --dataset_dir {result.dataset_dir} to a 3D pre-training bundle"
    )


def _slices_summary(result: PreparedSlices) -> str:
    skipped = f"{result.skipped} skipped (listed in {result.report})" if result.report else "0 skipped"
    return (
        f"{result.slices} slices ({skipped}); datalist {result.datalist}; "
        f"pass --dataset_dir {os.path.dirname(result.datalist)} to a 2D pre-training bundle"
    )


def _mb(size: float) -> str:
    return f"{size / 1e6:.2f} MB"


def main() -> None:
    try:
        fire.Fire(prepare)
    except ValueError as error:  # DatalistError among them
        raise SystemExit(f"prepare: {error}") from None


if __name__ == "__main__":
    main()
