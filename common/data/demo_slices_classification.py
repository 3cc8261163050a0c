"""Labelled 2D demo slices: axial slices through the lungs of the classification demo phantoms.

**Synthetic.** Each case is a phantom of :func:`common.data.demo_classification.generate_case` (classes ``CP``,
``NCP``, ``Normal``: a consolidation, ground-glass opacities, or no finding in the lung bases). Of each case the
:data:`SLICES_PER_CASE` axial slices showing the most of its finding (``CP``, ``NCP``) or of its lungs
(``Normal``) are kept, so that every slice shows what its label says; cases with too little of it are skipped. A slice is mapped with the study's interval
mapping (-1024..3071 HU -> 0..255, :func:`common.data.grey_values.hu_to_uint8`), padded with air to a square and
resized to ``size`` pixels (bilinear). Cases, not slices, are split, so no case has slices in two splits.

Layout (class folders per split, with a datalist json; see :func:`common.data.slice_classification_datalist`)::

    dataset.json                    "labels", "training", "validation", "test" (relative paths)
    {train,val,test}/<class>/case_XXX_zYY.png

``python -m common.data.demo_slices_classification [--root DIR]`` generates the dataset (or finds it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import fire
import numpy as np
from PIL import Image

from common.data.demo import generate_phantom
from common.data.demo_classification import CLASS_NAMES, DEFAULT_ROOT as VOLUME_DEMO_ROOT, DEFAULT_SHAPE
from common.data.demo_classification import DEFAULT_SPACING, generate_case, lung_mask
from common.data.generated import ensure_generated
from common.data.grey_values import hu_to_uint8

ENV_ROOT = "CT_SSL_SLICE_CLASSIFICATION_DEMO_DIR"
DEFAULT_ROOT = VOLUME_DEMO_ROOT.parent / "demo_ct_slice_classification"
GENERATOR = "common.data.demo_slices_classification"
GENERATOR_VERSION = 1
SLICES_PER_CASE = 4
MIN_AREA = 20  # voxels of finding (lungs for Normal) a kept slice shows, at the phantoms' 3 x 3 mm pixels
# split -> (folder, cases per class)
SPLIT_CASES = {"training": ("train", 6), "validation": ("val", 2), "test": ("test", 2)}
_AIR_HU = -1024
_MAX_CASES = 1000


def case_slices(case: int, size: int) -> tuple[list[np.ndarray], list[int], int]:
    """The labelled slices of demo case ``case``: ``(uint8 (size, size) images, their z indices, class index)``.

    The :data:`SLICES_PER_CASE` slices with the largest area of finding (lungs for ``Normal``), each at least
    :data:`MIN_AREA` voxels; none where the case has fewer such slices (some phantoms barely reach the lungs).
    Image rows follow the phantom's second (y) axis, columns its first (x) axis.
    """
    image, class_index, _ = generate_case(case, DEFAULT_SHAPE, DEFAULT_SPACING)
    phantom, _, _ = generate_phantom(case, DEFAULT_SHAPE, DEFAULT_SPACING)
    shown = (image != phantom) if CLASS_NAMES[class_index] != "Normal" else lung_mask(phantom)
    area = shown.sum(axis=(0, 1))
    if (area >= MIN_AREA).sum() < SLICES_PER_CASE:
        return [], [], class_index
    chosen = sorted(np.argsort(-area, kind="stable")[:SLICES_PER_CASE].tolist())
    slices = []
    for z in chosen:
        axial = image[:, :, z].T  # (Y, X)
        side = max(axial.shape)
        square = np.full((side, side), _AIR_HU, dtype=np.int16)
        top, left = (side - axial.shape[0]) // 2, (side - axial.shape[1]) // 2
        square[top : top + axial.shape[0], left : left + axial.shape[1]] = axial
        grey = Image.fromarray(hu_to_uint8(square)).resize((size, size), Image.Resampling.BILINEAR)
        slices.append(np.asarray(grey))
    return slices, chosen, class_index


def _write_dataset(folder: Path, stamp: dict) -> None:
    """Cases 0, 1, 2, ... (class ``case % 3``) with usable slices fill the splits class by class, in split order."""
    dataset = {
        "name": "DemoCTSliceClassification",
        "description": "Synthetic axial CT slices through the lung bases of phantoms with a class-specific finding, "
                       "for smoke runs and demos; not real anatomy or pathology (common.data.demo_slices_classification)",
        "licence": "Apache-2.0",
        "labels": {str(i): name for i, name in enumerate(CLASS_NAMES)},
        "generator": stamp,
        **{split: [] for split in SPLIT_CASES},
    }
    filled = {split: [0] * len(CLASS_NAMES) for split in SPLIT_CASES}
    for case in range(_MAX_CASES):
        class_index = case % len(CLASS_NAMES)
        split = next((s for s, (_, n) in SPLIT_CASES.items() if filled[s][class_index] < n), None)
        if split is None:
            if all(filled[s][c] == n for s, (_, n) in SPLIT_CASES.items() for c in range(len(CLASS_NAMES))):
                break
            continue
        slices, zs, _ = case_slices(case, stamp["size"])
        for grey, z in zip(slices, zs):
            name = f"{SPLIT_CASES[split][0]}/{CLASS_NAMES[class_index]}/case_{case:03d}_z{z:02d}.png"
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(grey).save(folder / name)
            dataset[split].append({"image": f"./{name}", "label": class_index})
        filled[split][class_index] += bool(slices)
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")


def ensure_slice_classification_demo_data(root: str | Path | None = None, size: int = 128) -> Path:
    """Generate the labelled demo slices on first use; return their folder.

    3 classes x (6 training, 2 validation, 2 test cases) x :data:`SLICES_PER_CASE` slices: 72 / 24 / 24 PNGs of
    ``size`` x ``size`` pixels (a few seconds). A complete dataset with the same parameters is reused; otherwise it
    is written into a temporary sibling folder and renamed into place (:func:`common.data.generated.ensure_generated`).

    Args:
        root: default ``$CT_SSL_SLICE_CLASSIFICATION_DEMO_DIR``, else ``<repository>/.cache/demo_ct_slice_classification``.
        size: side of the square slices in pixels.

    Raises:
        FileExistsError: ``root`` holds something other than this demo dataset; it is never deleted.
    """
    root = Path(root or os.environ.get(ENV_ROOT) or DEFAULT_ROOT).expanduser().resolve()
    stamp = {"module": GENERATOR, "version": GENERATOR_VERSION, "size": int(size),
             "slices_per_case": SLICES_PER_CASE, "cases": {k: v[1] for k, v in SPLIT_CASES.items()}}
    return ensure_generated(root, stamp, lambda folder: _write_dataset(folder, stamp)).parent


def main(root: str | None = None, size: int = 128) -> str:
    """Generate (or find) the labelled demo slices and return their folder."""
    return str(ensure_slice_classification_demo_data(root, size))


if __name__ == "__main__":
    fire.Fire(main)
