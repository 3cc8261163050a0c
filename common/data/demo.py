"""Synthetic abdominal CT phantoms with organ labels: the demo data every bundle runs on out of the box.

**Synthetic.** The phantoms are drawn from ellipsoids and tubes, not from any patient: they are for smoke
runs, demos and tests, never anatomy to learn from or to report results on.

The phantom
    An axial slab of the upper abdomen in Hounsfield units, contrast-enhanced vessels included: air
    (-1000) around an elliptical body with subcutaneous fat (-100), a muscle wall (50), paraspinal and
    psoas muscles, visceral fat (-90), lung bases (-850) above the diaphragm, a lumbar spine (cortical
    bone 900, cancellous 250, discs 80, spinal canal 15), ribs (cortical 850, marrow 300), unlabelled
    bowel loops and colon holding air or fluid, unlabelled contrast-filled vessels (SMA, renal veins,
    hepatic veins), and the 13 BTCV organs at their usual places: liver (60) right-anterior, gallbladder
    (10) under it, spleen (50) left-posterior with a hilum, kidneys (35) paravertebral with sinus fat,
    adrenals (35) above them, stomach (wall 40) with fluid and an anterior air pocket, esophagus (40),
    pancreas (45), portal and splenic veins (160), inferior vena cava (150) right of the aorta (200),
    which lies left-anterior of the spine. Organ positions, sizes, rotations and HU vary with the seed,
    and so do the body, the level of the slab, ribs, discs and bowel. The image is smoothed (sigma
    1 mm) and carries Gaussian noise (12 HU) smoothed alike.

Labels
    BTCV indices (:data:`BTCV_LABELS`), every organ present in every phantom of the default size.

Geometry
    Voxel axes are stored as in NIfTI converted from DICOM without reordering: the first axis runs
    towards the patient's left, the second posterior, the third superior (``nib.aff2axcodes(affine) ==
    ("L", "P", "S")``); the affine maps them to NIfTI's RAS+ world in mm, centred on the body. A viewer
    therefore shows the right kidney on the patient's right, and ``image[:, :, k].T`` is an axial slice
    in radiological display (patient's right on the left of the screen, anterior at the top).
    Default: 120 x 96 x 50 voxels at 2 x 2 x 3 mm (240 x 192 x 150 mm), about 160 x 128 x 99 voxels
    after resampling to 1.5 mm, so that a 96^3 crop fits. The anatomy is laid out for that field of view
    and stretched to any other.

``python -m common.data.demo [--root DIR]`` generates the dataset (or finds it) and prints where it is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import fire
import numpy as np
from scipy.ndimage import gaussian_filter

from common.data.generated import ensure_generated, save_nifti

BTCV_LABELS: dict[int, str] = {
    0: "background",
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior vena cava",
    10: "portal and splenic veins",
    11: "pancreas",
    12: "right adrenal gland",
    13: "left adrenal gland",
}

DEFAULT_SHAPE = (120, 96, 50)
DEFAULT_SPACING = (2.0, 2.0, 3.0)
ENV_ROOT = "CT_SSL_DEMO_DIR"
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / ".cache" / "demo_ct"
# Written into dataset.json; bump the version when the phantom changes, so that cached datasets are regenerated.
GENERATOR = "common.data.demo"
GENERATOR_VERSION = 1

# The anatomy below is laid out in mm for the default field of view (x right, y anterior, z superior, origin at
# the centre of the body) and stretched to the field of view of the requested grid.
_REFERENCE_FOV_MM = np.multiply(DEFAULT_SHAPE, DEFAULT_SPACING)
_BODY_MM = np.array([106.0, 80.0])  # semi-axes of the average body outline
_FAT, _MUSCLE, _VISCERAL_FAT = -100.0, 50.0, -90.0


class _Canvas:
    """Image and label being drawn on a grid with RAS voxel order, plus the reference-frame mm of every voxel."""

    def __init__(self, shape: Sequence[int], spacing: Sequence[float]):
        stretch = _REFERENCE_FOV_MM / (np.asarray(shape) * np.asarray(spacing))
        self.axes = [((np.arange(n) - (n - 1) / 2) * s * k).astype(np.float32)
                     for n, s, k in zip(shape, spacing, stretch)]
        self.image = np.full(tuple(shape), -1000.0, np.float32)
        self.label = np.zeros(tuple(shape), np.uint8)
        self.cavity = np.zeros(tuple(shape[:2]) + (1,), bool)  # inside the muscle wall; set with the body

    def box(self, low, high) -> tuple[slice, ...]:
        """Voxel slices covering the reference-frame box ``[low, high]`` (mm)."""
        return tuple(slice(np.searchsorted(a, lo), np.searchsorted(a, hi, side="right"))
                     for a, lo, hi in zip(self.axes, low, high))

    def grid(self, box: tuple[slice, ...]) -> tuple[np.ndarray, ...]:
        """Open (broadcastable) grid of the reference-frame coordinates of ``box``."""
        return np.ix_(*(a[s] for a, s in zip(self.axes, box)))

    def paint(self, box, mask, hu: float, label: int | None = None, where=None) -> None:
        """Set ``hu`` (and ``label`` unless None) where ``mask`` holds inside the body cavity.

        ``mask`` and ``where`` are arrays over ``box`` (or broadcastable to it); ``where``, when given,
        replaces the cavity as the region the paint is restricted to.
        """
        mask = mask & self.cavity[box[:2]] if where is None else mask & where
        mask = np.broadcast_to(mask, tuple(s.stop - s.start for s in box))
        self.image[box][mask] = hu
        if label is not None:
            self.label[box][mask] = label

    def whole(self) -> tuple[slice, ...]:
        """The box of the whole grid."""
        return tuple(slice(0, n) for n in self.image.shape)

    def blob(self, centre, semi_axes, rotation, wobble) -> tuple[tuple[slice, ...], np.ndarray]:
        """Box and mask of a smooth blob: an ellipsoid whose radius is modulated by a few cosines."""
        reach = np.max(semi_axes) * (1 + np.abs(wobble[:, 0]).sum())
        box = self.box(np.asarray(centre) - reach, np.asarray(centre) + reach)
        d = [g - c for g, c in zip(self.grid(box), centre)]
        u = [sum(rotation[j, i] * d[j] for j in range(3)) / semi_axes[i] for i in range(3)]
        bump = 1 + sum(a * np.cos(w0 * u[0] + w1 * u[1] + w2 * u[2] + p) for a, w0, w1, w2, p in wobble)
        return box, u[0] ** 2 + u[1] ** 2 + u[2] ** 2 <= bump**2

    def tube(self, points, radii) -> tuple[tuple[slice, ...], np.ndarray]:
        """Box and mask of a tube along the polyline ``points`` whose radius goes linearly through ``radii``."""
        points = np.asarray(points, np.float32)
        box = self.box(points.min(0) - max(radii), points.max(0) + max(radii))
        grid = self.grid(box)
        mask = np.zeros(np.broadcast_shapes(*(g.shape for g in grid)), bool)
        for p0, p1, r0, r1 in zip(points[:-1], points[1:], radii[:-1], radii[1:]):
            v = p1 - p0
            d = [g - c for g, c in zip(grid, p0)]
            t = np.clip(sum(dj * vj for dj, vj in zip(d, v)) / float(v @ v), 0, 1)
            mask |= sum((dj - t * vj) ** 2 for dj, vj in zip(d, v)) <= (r0 + t * (r1 - r0)) ** 2
        return box, mask


def _rotation(degrees_z: float, degrees_y: float = 0.0, degrees_x: float = 0.0) -> np.ndarray:
    """Rotation matrix ``Rz @ Ry @ Rx``; its columns are the blob's local axes."""
    z, y, x = np.radians([degrees_z, degrees_y, degrees_x])
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    return rz @ ry @ rx


class _Anatomy:
    """Random draws for one phantom: jittered positions, sizes, rotations, HU, shared by the drawing functions."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.body = _BODY_MM * rng.uniform(0.94, 1.04, 2)  # semi-axes of this body's outline
        self.stretch = np.array([*(self.body / _BODY_MM), 1.0])  # organ positions follow the body
        self.scale = rng.uniform(0.9, 1.1)  # organ size of this patient
        self.level = rng.normal(0.0, 6.0)  # cranio-caudal position of the slab

    def point(self, xyz, sd=(4.0, 4.0, 5.0)) -> np.ndarray:
        """``xyz`` moved with the body and the slab's level, and jittered."""
        return np.asarray(xyz) * self.stretch + self.rng.normal(0, sd) + [0, 0, self.level]

    def path(self, points, sd=(3.0, 3.0, 4.0)) -> np.ndarray:
        """A polyline moved with the body and the slab's level, as a whole and point by point jittered."""
        shift = self.rng.normal(0, sd) + [0, 0, self.level]
        return np.asarray(points) * self.stretch + shift + self.rng.normal(0, np.asarray(sd) / 2, (len(points), 3))

    def blob(self, canvas: _Canvas, centre, semi_axes, degrees=(0.0, 0.0, 0.0), wobble=0.06):
        """Box, mask, centre, semi-axes and rotation of a jittered organ blob."""
        centre = self.point(centre)
        semi_axes = np.asarray(semi_axes) * self.scale * self.rng.uniform(0.88, 1.12, 3)
        rotation = _rotation(*(np.asarray(degrees) + self.rng.normal(0, 6.0, 3)))
        cosines = np.column_stack([wobble * self.rng.uniform(0.3, 1, 3), self.rng.normal(0, 1.8, (3, 3)),
                                   self.rng.uniform(0, 2 * np.pi, 3)])
        box, mask = canvas.blob(centre, semi_axes, rotation, cosines)
        return box, mask, centre, semi_axes, rotation

    def hu(self, nominal: float) -> float:
        """This patient's HU of a tissue."""
        return nominal + self.rng.normal(0, 4.0)


def _draw_body(canvas: _Canvas, anatomy: _Anatomy) -> None:
    """Subcutaneous fat, muscle wall, visceral fat, and ribs in the wall; sets ``canvas.cavity``."""
    rng = anatomy.rng
    a, b = anatomy.body
    x, y = canvas.axes[0][:, None], canvas.axes[1][None, :]
    b = np.where(y >= 0, b, 0.95 * b)  # flatter back
    rho = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    phi = np.arctan2(y, x)
    depth = (1 - rho) / np.sqrt((np.cos(phi) / a) ** 2 + (np.sin(phi) / b) ** 2)  # mm inside the skin
    fat = rng.uniform(6.0, 16.0) * (1 + 0.3 * np.sin(phi))  # thicker in front
    wall = fat + rng.uniform(7.0, 10.0)
    image = canvas.image
    image[depth >= 0] = _FAT
    image[depth >= fat] = _MUSCLE
    canvas.cavity[..., 0] = depth >= wall
    image[canvas.cavity[..., 0]] = _VISCERAL_FAT
    _draw_ribs(canvas, rng, depth - (fat + 4.5), np.abs(np.arctan2(x, -y)))


def _draw_ribs(canvas: _Canvas, rng: np.random.Generator, radial: np.ndarray, psi: np.ndarray) -> None:
    """Oblique ribs in the wall (``radial``: mm from the rib circle), descending towards the front.

    ``psi`` is the angle from the posterior midline; a rib keeps ``z + slope * psi`` constant, and the
    lowest ribs are the shortest (floating ribs), which makes the costal margin.
    """
    slope, period, lowest = 28.0, 24.0 * rng.uniform(0.95, 1.05), rng.normal(0.0, 5.0)
    columns = np.nonzero(np.abs(radial) <= 3.0)
    q = canvas.axes[2][None, :] + slope * psi[columns][:, None] - lowest
    n = np.round(q / period)
    e = (radial[columns][:, None] / 3.0) ** 2 + ((q - n * period) / 4.0) ** 2
    present = (n >= 0) & (psi[columns][:, None] > 0.35) & (psi[columns][:, None] < np.minimum(1.3 + 0.4 * n, 2.3))
    bone = canvas.image[columns]
    bone[present & (e <= 1)] = 850.0
    bone[present & (e <= 0.35)] = 300.0
    canvas.image[columns] = bone


def _draw_muscles(canvas: _Canvas, anatomy: _Anatomy) -> None:
    """Paraspinal muscles behind the spine and psoas muscles beside it, widening downwards."""
    for side in (1, -1):
        box, mask = canvas.tube([[20 * side, -56, -200], [20 * side, -56, 200]], [15, 15])
        canvas.paint(box, mask, _MUSCLE, where=mask & (canvas.image[box] > -500))
        box, mask = canvas.tube(anatomy.path([[21 * side, -34, 35], [27 * side, -28, -80]]), [3, 14])
        canvas.paint(box, mask, _MUSCLE)


def _draw_bowel(canvas: _Canvas, anatomy: _Anatomy) -> None:
    """Unlabelled colon and small-bowel loops, each holding air or fluid inside a thin wall."""
    rng = anatomy.rng
    loops = [[[70, 12, -80], [72, 15, -10], [55, 30, 5]], [[-72, -10, -80], [-74, -5, 10], [-60, 20, 25]]]
    for _ in range(6):
        start = rng.uniform([-55, 5, -75], [55, 45, -25])
        loops.append(start + np.cumsum(rng.normal(0, 18, (3, 3)), axis=0))
    for points in loops:
        radius = rng.uniform(7, 11)
        canvas.paint(*canvas.tube(points, [radius] * len(points)), 35.0)
        canvas.paint(*canvas.tube(points, [radius - 3] * len(points)), rng.choice([-950.0, 10.0, -400.0]))


def _draw_liver(canvas: _Canvas, anatomy: _Anatomy) -> None:
    """Right and left lobe, with contrast-filled hepatic veins (still labelled liver)."""
    lobes = (((44, 2, 30), (48, 50, 54), (0, 0, 0)), ((-12, 36, 42), (38, 20, 26), (-15, 0, 0)))
    for centre, semi_axes, degrees in lobes:
        box, mask, *_ = anatomy.blob(canvas, centre, semi_axes, degrees)
        canvas.paint(box, mask, anatomy.hu(60.0), 6)
    hub = anatomy.point([24, 0, 62])
    for end in ([80, -5, 40], [42, 38, 36], [-10, 34, 52]):
        box, mask = canvas.tube(np.stack([hub, anatomy.point(end, (8, 8, 8))]), [4.5, 2.0])
        canvas.paint(box, mask, anatomy.hu(140.0), where=mask & (canvas.label[box] == 6))


def _draw_gallbladder(canvas: _Canvas, anatomy: _Anatomy) -> None:
    """Bile-filled, under the liver, its fundus tilted anteriorly and downwards."""
    box, mask, *_ = anatomy.blob(canvas, (34, 34, -6), (11, 12, 22), (0, 0, -25))
    canvas.paint(box, mask, anatomy.hu(10.0), 4)


def _draw_spleen(canvas: _Canvas, anatomy: _Anatomy) -> None:
    """A blob along the left posterolateral wall, hollowed at its hilum (facing anteromedially)."""
    box, mask, centre, semi_axes, rotation = anatomy.blob(canvas, (-58, -24, 30), (17, 38, 36), (45, 0, 0))
    canvas.paint(box, mask, anatomy.hu(50.0), 1)
    hilum = centre + rotation @ [1.1 * semi_axes[0], 0, 0]
    box, mask = canvas.blob(hilum, semi_axes * [0.7, 0.45, 0.55], rotation, np.zeros((0, 5)))
    canvas.paint(box, mask, _VISCERAL_FAT, 0, where=mask & (canvas.label[box] == 1))


def _draw_kidneys(canvas: _Canvas, anatomy: _Anatomy) -> None:
    """Paravertebral kidneys, upper poles tilted medially, sinus fat opening anteromedially."""
    for label, side, z in ((2, 1, -28), (3, -1, -18)):
        box, mask, centre, semi_axes, rotation = anatomy.blob(
            canvas, (49 * side, -30, z), (16, 20, 34), (-30 * side, -15 * side, 0), wobble=0.03)
        canvas.paint(box, mask, anatomy.hu(35.0), label)
        sinus = centre + rotation @ [-0.6 * side * semi_axes[0], 0, 0]
        box, mask = canvas.blob(sinus, semi_axes * [0.5, 0.35, 0.5], rotation, np.zeros((0, 5)))
        canvas.paint(box, mask, -60.0, 0, where=mask & (canvas.label[box] == label))


def _draw_adrenals(canvas: _Canvas, anatomy: _Anatomy) -> None:
    """Thin inverted-V glands above the kidneys: two limbs from an anterior apex."""
    for label, apex in ((12, (25, -16, 30)), (13, (-25, -12, 24))):
        apex, hu = anatomy.point(apex, (2, 2, 3)), anatomy.hu(35.0)
        for degrees in (-25, 25):
            rotation = _rotation(degrees + anatomy.rng.normal(0, 5))
            limb = np.array([3.2, 8, 11]) * anatomy.scale
            box, mask = canvas.blob(apex + rotation @ [0, -7, 0], limb, rotation, np.zeros((0, 5)))
            canvas.paint(box, mask, hu, label)


def _draw_stomach(canvas: _Canvas, anatomy: _Anatomy) -> None:
    """J-shaped stomach: fundus high on the left, antrum crossing to the right; fluid below an anterior air pocket."""
    points = anatomy.path([[-38, -2, 52], [-40, 22, 22], [-10, 40, -2], [16, 32, -6]])
    radii = np.array([22.0, 20.0, 12.0, 7.0]) * anatomy.scale
    box, outer = canvas.tube(points, radii)
    canvas.paint(box, outer, anatomy.hu(40.0), 7)
    box, lumen = canvas.tube(points, radii - 4)
    lumen &= canvas.label[box] == 7
    canvas.paint(box, lumen, anatomy.hu(12.0), 7)
    y = np.broadcast_to(canvas.grid(box)[1], lumen.shape)
    if lumen.any():
        canvas.paint(box, lumen & (y > np.quantile(y[lumen], anatomy.rng.uniform(0.6, 0.85))), -950.0, 7)


def _draw_esophagus(canvas: _Canvas, anatomy: _Anatomy) -> None:
    """Its abdominal part: in front of the aorta and left of it, down to the cardia of the stomach."""
    box, mask = canvas.tube(anatomy.path([[-10, 6, 90], [-16, 8, 60], [-32, 2, 48]]), [6.0, 6.0, 7.0])
    canvas.paint(box, mask, anatomy.hu(40.0), 5)


def _draw_pancreas(canvas: _Canvas, anatomy: _Anatomy) -> None:
    """Tail at the splenic hilum, body in front of the aorta, head in the duodenal sweep."""
    points = anatomy.path([[-54, -6, 16], [-22, 14, 4], [2, 18, -4], [18, 6, -12], [12, -2, -20]])
    box, mask = canvas.tube(points, np.array([7.0, 8.0, 8.5, 11.0, 7.0]) * anatomy.scale)
    canvas.paint(box, mask, anatomy.hu(45.0), 11)


def _draw_vessels(canvas: _Canvas, anatomy: _Anatomy) -> None:
    """Splenic and portal veins (labelled), SMA and renal veins (not labelled), IVC and aorta (labelled)."""
    for points, radii, hu, label in (
        ([[-56, -14, 16], [-22, 4, 6], [4, 8, -4], [22, 10, 12], [34, 8, 22]], [4.0, 4.5, 5.5, 5.0, 4.0], 160.0, 10),
        ([[-7, 0, 0], [-6, 12, -20], [-4, 16, -80]], [3.5, 3.0, 3.0], 200.0, 0),
        ([[-34, -22, -10], [-7, 4, -8], [18, -5, -8]], [3.5, 3.5, 3.5], 150.0, 0),
        ([[34, -22, -18], [18, -5, -14]], [4.0, 4.0], 150.0, 0),
        ([[18, -6, -80], [20, -4, 20], [24, 0, 80]], [8.0, 9.0, 10.0], 150.0, 9),
        ([[-6, -8, 80], [-8, -7, -80]], [8.5, 8.0], 200.0, 8),
    ):
        box, mask = canvas.tube(anatomy.path(points, (2.0, 2.0, 3.0)), radii)
        canvas.paint(box, mask, anatomy.hu(hu), label)


def _draw_lungs(canvas: _Canvas, anatomy: _Anatomy) -> None:
    """Lung bases above a domed diaphragm, deepest in the posterior recesses; they push organs down."""
    x, y, z = canvas.grid(canvas.whole())
    dome = 50 + 45 * (1 - (x / 95) ** 2 - (y / 72) ** 2) + 0.2 * y + anatomy.level + anatomy.rng.normal(0, 5)
    vessels = np.isin(canvas.label, (5, 8, 9))
    canvas.paint(canvas.whole(), (z > dome - 4) & ~vessels, 40.0, 0)
    canvas.paint(canvas.whole(), (z > dome) & ~vessels, -850.0, 0)


def _draw_spine(canvas: _Canvas, anatomy: _Anatomy) -> None:
    """Vertebral bodies (cortex, cancellous bone, discs), spinal canal and posterior elements; not labelled."""
    rng = anatomy.rng
    centre_y = -32 + rng.normal(0, 2)
    everywhere = canvas.whole()
    x, y, z = canvas.grid(everywhere)

    def ellipse(cx, cy, ax, ay):
        return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1

    arch = (ellipse(0, centre_y - 21, 12, 9.5) | ellipse(0, centre_y - 31, 3, 8)  # lamina and spinous process
            | ellipse(17, centre_y - 19, 7, 3) | ellipse(-17, centre_y - 19, 7, 3))  # transverse processes
    disc = (z - rng.uniform(0, 27)) % 27.0 < 6.0
    for mask, hu in ((arch, 750.0), (ellipse(0, centre_y, 16, 13), 900.0), (ellipse(0, centre_y, 14, 11), 250.0),
                     (ellipse(0, centre_y, 16, 13) & disc, 80.0), (ellipse(0, centre_y - 21, 7, 6.5), 15.0)):
        canvas.paint(everywhere, mask, hu, 0, where=mask)


_DRAW_ORDER = (_draw_body, _draw_muscles, _draw_bowel, _draw_liver, _draw_gallbladder, _draw_stomach, _draw_spleen,
               _draw_kidneys, _draw_adrenals, _draw_esophagus, _draw_pancreas, _draw_vessels, _draw_lungs, _draw_spine)


def phantom_affine(shape: Sequence[int] = DEFAULT_SHAPE, spacing: Sequence[float] = DEFAULT_SPACING) -> np.ndarray:
    """Affine of the phantom grid: voxel axes L, P, S to RAS+ world mm, the centre of the grid at the origin."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [(shape[0] - 1) * spacing[0] / 2, (shape[1] - 1) * spacing[1] / 2, -(shape[2] - 1) * spacing[2] / 2]
    return affine


def generate_phantom(seed: int, shape: Sequence[int] = DEFAULT_SHAPE,
                     spacing: Sequence[float] = DEFAULT_SPACING) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One phantom, a deterministic function of its arguments.

    Args:
        seed: seed of every random draw (anatomy, HU, noise).
        shape: voxels along the L, P, S voxel axes.
        spacing: voxel size in mm along the same axes.

    Returns:
        ``(image, label, affine)``: HU ``int16`` of ``shape``, BTCV label ``uint8`` of ``shape``, and the
        (4, 4) affine from voxel indices to RAS+ world mm (axis codes ``("L", "P", "S")``).
    """
    rng = np.random.default_rng(seed)
    canvas = _Canvas(shape, spacing)
    anatomy = _Anatomy(rng)
    for draw in _DRAW_ORDER:
        draw(canvas, anatomy)
    sigma = 1.0 / np.asarray(spacing, np.float32)
    noise = gaussian_filter(rng.standard_normal(canvas.image.shape, np.float32), sigma=sigma)
    image = gaussian_filter(canvas.image, sigma=sigma) + 12.0 * noise / noise.std()
    image = np.clip(np.round(image), -1024, 3071).astype(np.int16)
    return image[::-1, ::-1].copy(), canvas.label[::-1, ::-1].copy(), phantom_affine(shape, spacing)


def _generator_stamp(num_cases: int, num_validation: int, shape, spacing) -> dict:
    """What identifies a generated dataset; stored in its ``dataset.json``."""
    return {"module": GENERATOR, "version": GENERATOR_VERSION, "num_cases": num_cases, "num_validation": num_validation,
            "shape": [int(n) for n in shape], "spacing": [float(s) for s in spacing]}


def _is_leftover(root: Path) -> bool:
    """Whether ``root`` holds only the case files of an interrupted generation (no ``dataset.json``)."""
    children = {p.name for p in root.iterdir()}
    if not children <= {"imagesTr", "labelsTr"}:
        return False
    files = [f.name for child in children for f in (root / child).iterdir()]
    return all(name.startswith("case_") and name.endswith(".nii.gz") for name in files)


def _write_dataset(folder: Path, stamp: dict) -> None:
    """Every case and ``dataset.json`` into the new folder ``folder``."""
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    entries = []
    for case in range(stamp["num_cases"]):
        image, label, affine = generate_phantom(case, stamp["shape"], stamp["spacing"])
        name = f"case_{case:03d}.nii.gz"
        save_nifti(image, affine, folder / "imagesTr" / name)
        save_nifti(label, affine, folder / "labelsTr" / name)
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    split = len(entries) - stamp["num_validation"]
    dataset = {
        "name": "DemoCT",
        "description": "Synthetic abdominal CT phantoms for smoke runs and demos, not real anatomy (common.data.demo)",
        "reference": "generated by ct-ssl-bundles common.data.demo",
        "licence": "Apache-2.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in BTCV_LABELS.items()},
        "numTraining": split,
        "numTest": 0,
        "training": entries[:split],
        "validation": entries[split:],
        "test": [],
        "generator": stamp,
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")


def ensure_demo_data(root: str | Path | None = None, num_cases: int = 8, num_validation: int = 2, *,
                     shape: Sequence[int] = DEFAULT_SHAPE, spacing: Sequence[float] = DEFAULT_SPACING) -> Path:
    """Generate the demo dataset on first use; return the path of its MSD ``dataset.json``.

    Layout: ``imagesTr/case_XXX.nii.gz``, ``labelsTr/case_XXX.nii.gz`` (seeds ``0 .. num_cases - 1``) and
    ``dataset.json`` whose ``training`` list holds the first cases and ``validation`` the last
    ``num_validation``; its ``generator`` entry records the parameters.

    Args:
        root: folder of the dataset; default ``$CT_SSL_DEMO_DIR``, else ``<repository>/.cache/demo_ct``.
        num_cases: number of phantoms.
        num_validation: how many of them, the last ones, make the validation list.
        shape, spacing: grid of every phantom (see :func:`generate_phantom`).

    A complete dataset generated with the same parameters (and generator version) is reused as it is.
    Otherwise the dataset is generated in a temporary sibling folder and renamed into place, replacing
    an outdated or partial demo dataset, so that an interrupted run or two processes starting at once
    never leave a half-written dataset behind.

    Raises:
        ValueError: ``num_validation`` is not in ``[0, num_cases)``.
        FileExistsError: ``root`` holds something other than a demo dataset; it is never deleted.
    """
    if not 0 <= num_validation < num_cases:
        raise ValueError(f"need 0 <= num_validation < num_cases, got {num_validation=}, {num_cases=}")
    root = Path(root or os.environ.get(ENV_ROOT) or DEFAULT_ROOT).expanduser().resolve()
    stamp = _generator_stamp(num_cases, num_validation, shape, spacing)
    return ensure_generated(root, stamp, lambda folder: _write_dataset(folder, stamp), _is_leftover)


def main(root: str | None = None, num_cases: int = 8, num_validation: int = 2) -> str:
    """Generate (or find) the demo dataset and return the path of its ``dataset.json``."""
    return str(ensure_demo_data(root, num_cases, num_validation))


if __name__ == "__main__":
    fire.Fire(main)
