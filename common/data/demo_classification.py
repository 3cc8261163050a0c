"""Synthetic CT phantoms with a volume-level class: the demo data of the classification bundle.

**Synthetic.** Each volume is a phantom of :func:`common.data.demo.generate_phantom` (an upper-abdominal slab
whose top holds the lung bases) with a class-specific finding drawn into its lungs. They are for smoke runs,
demos and tests, never anatomy or pathology to learn from or to report results on.

Classes (index, CC-CCII's folder name), after the CC-CCII task of MiM (novel coronavirus pneumonia, common
pneumonia, normal), numbered as CC-CCII's folders sort:

==  ========  =================================================================================
0   ``CP``    common pneumonia: 1-2 dense consolidations (+20..+45 HU, radius 15-25 mm) on one side
1   ``NCP``   novel coronavirus pneumonia: 4-8 bilateral, peripheral ground-glass opacities
              (-600..-450 HU, radius 8-14 mm)
2   ``Normal`` no finding
==  ========  =================================================================================

The lungs are the air-density regions (below -500 HU) enclosed by the body in their axial slice that reach
the slab's top slice. A finding is an ellipsoid clipped to the lungs with a 1 mm soft edge, raising the
lung's HU towards the finding's, so the phantom's noise stays on it. Everything is a deterministic function
of the case number.

Layout (an MSD-style ``dataset.json``, see :func:`common.data.classification_datalist`)::

    dataset.json            "labels" {"0": "CP", ...}, "training" [{"image", "label"}], "test" [image paths]
    imagesTr/case_XXX_<class>.nii.gz
    imagesTs/case_XXX_<class>.nii.gz     held out, for inference; the class is in the name only

``python -m common.data.demo_classification [--root DIR]`` generates the dataset (or finds it) and prints where.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import fire
import numpy as np
from scipy import ndimage

from common.data.demo import DEFAULT_ROOT as SEGMENTATION_DEMO_ROOT, generate_phantom
from common.data.generated import ensure_generated, save_nifti

CLASS_NAMES = ("CP", "NCP", "Normal")
DEFAULT_SHAPE = (80, 64, 40)
DEFAULT_SPACING = (3.0, 3.0, 3.75)  # the field of view of the segmentation demo, at a coarser grid
ENV_ROOT = "CT_SSL_CLASSIFICATION_DEMO_DIR"
DEFAULT_ROOT = SEGMENTATION_DEMO_ROOT.parent / "demo_ct_classification"
# Written into dataset.json; bump the version when a volume changes, so that cached datasets are regenerated.
GENERATOR = "common.data.demo_classification"
GENERATOR_VERSION = 1

_LUNG_HU = -850.0  # the phantom's lung
_AIR_DENSITY_HU = -500.0
# class index -> (number of findings, radius mm, HU, bilateral, peripheral)
_FINDINGS = {
    0: ((1, 2), (15.0, 25.0), (20.0, 45.0), False, False),
    1: ((4, 8), (8.0, 14.0), (-600.0, -450.0), True, True),
}


def body_mask(image: np.ndarray) -> np.ndarray:
    """Everything enclosed by the body outline (denser than -500 HU) in its axial slice; ``image`` is ``(X, Y, Z)``."""
    return np.stack([ndimage.binary_fill_holes(image[..., k] > _AIR_DENSITY_HU) for k in range(image.shape[-1])], -1)


def lung_mask(image: np.ndarray) -> np.ndarray:
    """The lung bases of a phantom: the air-density regions (below -500 HU) inside :func:`body_mask` that reach
    the top slice (the slab cuts the lungs there; bowel gas lies lower).

    Raises:
        ValueError: no such region.
    """
    components, _ = ndimage.label(body_mask(image) & (image < _AIR_DENSITY_HU))
    lungs = np.isin(components, np.unique(components[..., -1][components[..., -1] > 0]))
    if not lungs.any():
        raise ValueError("the phantom has no lungs (no air-density region inside the body in its top slice)")
    return lungs


def add_finding(image: np.ndarray, spacing: Sequence[float], class_index: int, rng: np.random.Generator) -> np.ndarray:
    """``image`` with the lung finding of ``class_index`` drawn in (see the module docstring); HU ``int16``."""
    if class_index not in _FINDINGS:
        return image
    (low, high), radius_mm, hu_range, bilateral, peripheral = _FINDINGS[class_index]
    spacing = np.asarray(spacing, np.float32)
    lungs = lung_mask(image)
    candidates = np.argwhere(lungs)
    if peripheral:  # the half of the lung nearer the body wall
        depth = ndimage.distance_transform_edt(body_mask(image), sampling=spacing)[lungs]
        candidates = candidates[depth <= np.median(depth)]
    right = candidates[:, 0] < image.shape[0] / 2  # the first voxel axis runs towards the patient's left
    sides = [candidates[right], candidates[~right]]
    first_side = int(rng.integers(2))
    grid = np.ogrid[tuple(slice(0, n) for n in image.shape)]
    raised = np.zeros(image.shape, np.float32)
    for k in range(int(rng.integers(low, high + 1))):
        side = sides[(first_side + k) % 2 if bilateral else first_side]
        side = side if len(side) else candidates
        centre = side[rng.integers(len(side))]
        semi_axes = rng.uniform(*radius_mm) * rng.uniform(0.75, 1.25, 3) / spacing
        blob = sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre, semi_axes)) <= 1.0
        soft = ndimage.gaussian_filter((blob & lungs).astype(np.float32), sigma=1.0 / spacing) * lungs
        raised = np.maximum(raised, soft * (rng.uniform(*hu_range) - _LUNG_HU))
    return np.clip(np.round(image + raised), -1024, 3071).astype(np.int16)


def generate_case(case: int, shape: Sequence[int] = DEFAULT_SHAPE,
                  spacing: Sequence[float] = DEFAULT_SPACING) -> tuple[np.ndarray, int, np.ndarray]:
    """Demo case ``case``: phantom ``case`` with the finding of class ``case % 3``.

    Returns:
        ``(image, class_index, affine)``: HU ``int16`` of ``shape``, the class, and the phantom's affine.
    """
    image, _, affine = generate_phantom(case, shape, spacing)
    class_index = case % len(CLASS_NAMES)
    return add_finding(image, spacing, class_index, np.random.default_rng((case, 1))), class_index, affine


def _generator_stamp(cases_per_class: int, test_cases_per_class: int, shape, spacing) -> dict:
    """What identifies a generated dataset; stored in its ``dataset.json``."""
    return {"module": GENERATOR, "version": GENERATOR_VERSION, "cases_per_class": cases_per_class,
            "test_cases_per_class": test_cases_per_class, "shape": [int(n) for n in shape],
            "spacing": [float(s) for s in spacing]}


def _write_dataset(folder: Path, stamp: dict) -> None:
    """Every case and ``dataset.json`` into the new folder ``folder``; training cases first, then test cases."""
    num_training = stamp["cases_per_class"] * len(CLASS_NAMES)
    num_cases = num_training + stamp["test_cases_per_class"] * len(CLASS_NAMES)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "imagesTs").mkdir()
    training, test = [], []
    for case in range(num_cases):
        image, class_index, affine = generate_case(case, stamp["shape"], stamp["spacing"])
        name = f"{'imagesTr' if case < num_training else 'imagesTs'}/case_{case:03d}_{CLASS_NAMES[class_index]}.nii.gz"
        save_nifti(image, affine, folder / name)
        if case < num_training:
            training.append({"image": f"./{name}", "label": class_index})
        else:
            test.append(f"./{name}")
    dataset = {
        "name": "DemoCTClassification",
        "description": "Synthetic CT phantoms with a lung finding per class, for smoke runs and demos; not real "
                       "anatomy or pathology (common.data.demo_classification)",
        "reference": "generated by ct-ssl-bundles common.data.demo_classification",
        "licence": "Apache-2.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(i): name for i, name in enumerate(CLASS_NAMES)},
        "numTraining": len(training),
        "numTest": len(test),
        "training": training,
        "test": test,
        "generator": stamp,
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")


def ensure_classification_demo_data(root: str | Path | None = None, cases_per_class: int = 6,
                                    test_cases_per_class: int = 1, *, shape: Sequence[int] = DEFAULT_SHAPE,
                                    spacing: Sequence[float] = DEFAULT_SPACING) -> Path:
    """Generate the classification demo dataset on first use; return the path of its ``dataset.json``.

    Cases ``0 .. 3 * cases_per_class - 1`` are the ``training`` list (classes balanced: case ``i`` is of class
    ``i % 3``), the next ``3 * test_cases_per_class`` the ``test`` list; the ``generator`` entry of the json
    records the parameters. A complete dataset generated with the same parameters (and generator version) is
    reused as it is; otherwise it is generated in a temporary sibling folder and renamed into place, so that
    an interrupted run or two processes starting at once never leave a half-written dataset behind.

    Args:
        root: folder of the dataset; default ``$CT_SSL_CLASSIFICATION_DEMO_DIR``, else
            ``<repository>/.cache/demo_ct_classification``.
        cases_per_class: training cases of each class.
        test_cases_per_class: held-out cases of each class.
        shape, spacing: grid of every volume (see :func:`common.data.demo.generate_phantom`).

    Raises:
        ValueError: ``cases_per_class`` < 1 or ``test_cases_per_class`` < 0.
        FileExistsError: ``root`` holds something other than this demo dataset; it is never deleted.
    """
    if cases_per_class < 1 or test_cases_per_class < 0:
        raise ValueError(f"need cases_per_class >= 1 and test_cases_per_class >= 0, got {cases_per_class=}, "
                         f"{test_cases_per_class=}")
    root = Path(root or os.environ.get(ENV_ROOT) or DEFAULT_ROOT).expanduser().resolve()
    stamp = _generator_stamp(cases_per_class, test_cases_per_class, shape, spacing)
    return ensure_generated(root, stamp, lambda folder: _write_dataset(folder, stamp))


def main(root: str | None = None, cases_per_class: int = 6, test_cases_per_class: int = 1) -> str:
    """Generate (or find) the classification demo dataset and return the path of its ``dataset.json``."""
    return str(ensure_classification_demo_data(root, cases_per_class, test_cases_per_class))


if __name__ == "__main__":
    fire.Fire(main)
