"""DICOM series as 3D volumes: datalist entries for every series under a folder, and the reader that loads them.

One series is one volume. An entry is ``{"image": [slice files, sorted along the slice normal]}``:
MONAI's :class:`~monai.data.PydicomReader` cannot pick one series out of a folder that mixes several
(it merges every file of a folder, and reads a list of files as a stack of 2D channels), so entries
list their files and :class:`DicomSeriesReader` reads such a list as one 3D volume in HU with a RAS
affine from ImagePositionPatient / ImageOrientationPatient / PixelSpacing.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from monai.data import ImageReader
from monai.data.utils import affine_to_spacing
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

try:
    from pydicom.pixels import apply_modality_lut
except ImportError:  # pydicom 2, which MONAI Label 0.8.5 needs (tools.monailabel_check)
    from pydicom.pixel_data_handlers.util import apply_modality_lut

from common.data.errors import BadInputError, BadInputPolicy, DatalistError, UnreadableFileError, skip_or_raise

logger = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
# tags a DICOM file needs to be one slice of a volume
SLICE_TAGS = ("SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# meta key of a loaded series: "DICOM series <SeriesInstanceUID> in <folder of its first file>"
SERIES_META_KEY = "dicom_series"


def dicom_datalist(root: Path, skip_unreadable: bool | BadInputPolicy, tried: str) -> list[dict]:
    """One ``{"image": [sorted slice files]}`` per DICOM series under ``root`` (see datalist_from_dicom_folder)."""
    series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path, header in _dicom_slices(root, skip_unreadable):
        series[str(header.SeriesInstanceUID)].append((path, header))
    if not series:
        raise DatalistError(f"no images in {root}; tried {tried}")
    datalist = []
    for uid, members in series.items():
        paths, headers = zip(*members)
        name = f"DICOM series {uid} in {root}"
        try:
            _check_series(headers, name)
        except BadInputError as error:
            skip_or_raise(error, skip_unreadable)
            continue
        order, positions = _slice_order(headers)
        _warn_if_uneven(positions, name)
        datalist.append({"image": [str(paths[i]) for i in order]})
    return sorted(datalist, key=lambda entry: min(entry["image"]))


def _dicom_slices(root: Path, skip_unreadable: bool | BadInputPolicy) -> list[tuple[Path, Dataset]]:
    """Headers of the DICOM slice files under ``root``; other DICOM is skipped with a warning.

    Raises:
        DatalistError: a file claiming to be DICOM is unreadable (unless ``skip_unreadable``).
    """
    slices, ignored = [], []
    for path in _visible_files(root):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError as error:
            if path.suffix.lower() not in DICOM_SUFFIXES:
                ignored.append(path)
                continue
            skip_or_raise(UnreadableFileError(path, f"not DICOM despite its suffix ({error})"), skip_unreadable)
        except Exception as error:  # pydicom raises many types for a corrupt file
            skip_or_raise(UnreadableFileError(path, f"{type(error).__name__}: {error}"), skip_unreadable)
        else:
            reason = _not_a_slice(header)
            if reason:
                logger.warning("skipping DICOM file %s: %s", path, reason)
            else:
                slices.append((path, header))
    if ignored:
        logger.info("ignored %d files that are not DICOM in %s, e.g. %s", len(ignored), root, ignored[0])
    return slices


def _visible_files(root: Path) -> list[Path]:
    """Files under ``root``, recursively, sorted; hidden files and folders are left out."""
    return sorted(
        path
        for path in root.rglob("*")
        if not any(part.startswith(".") for part in path.relative_to(root).parts) and path.is_file()
    )


def _not_a_slice(header: Dataset) -> str | None:
    """Why a DICOM header is not one slice of a volume, or ``None`` if it is."""
    missing = [tag for tag in SLICE_TAGS if tag not in header]
    if missing:
        return f"not an image slice (no {', '.join(missing)})"
    if int(header.get("NumberOfFrames", 1) or 1) > 1:
        return "multi-frame DICOM is not supported"
    return None


def _check_series(headers: Sequence[Dataset], name: str) -> None:
    """Raise :class:`BadInputError` (for the series ``name``) unless the slices share size, orientation and pixel
    spacing, and lie at distinct positions."""
    first = headers[0]
    for header in headers[1:]:
        if (
            (header.Rows, header.Columns) != (first.Rows, first.Columns)
            or not np.allclose(header.ImageOrientationPatient, first.ImageOrientationPatient, atol=1e-4)
            or not np.allclose(header.PixelSpacing, first.PixelSpacing, rtol=1e-4)
        ):
            raise BadInputError(
                name, f"slices differ in size, orientation or pixel spacing ({first.filename} and {header.filename}); "
                "it is not one volume"
            )
    _, positions = _slice_order(headers)
    if len(positions) > 1 and np.diff(positions).min() < 1e-3:
        raise BadInputError(
            name, "several slices at the same position (duplicated files, or several acquisitions in one series)"
        )


def _slice_order(headers: Sequence[Dataset]) -> tuple[list[int], np.ndarray]:
    """The order of the slices along the normal of their plane, and their sorted positions along it (mm)."""
    orientation = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([np.dot(normal, np.asarray(h.ImagePositionPatient, dtype=float)) for h in headers])
    order = np.argsort(positions, kind="stable")
    return order.tolist(), positions[order]


def _warn_if_uneven(positions: np.ndarray, name: str) -> None:
    """Log a warning when the spacing between sorted slice positions varies by more than 1 %."""
    if len(positions) < 3:
        return
    steps = np.diff(positions)
    if np.ptp(steps) > 0.01 * np.median(steps):
        logger.warning(
            "%s: slice spacing varies from %.4g to %.4g mm (missing slices?); it loads with the mean spacing %.4g mm",
            name,
            steps.min(),
            steps.max(),
            steps.mean(),
        )


def _series_affine(headers: Sequence[Dataset]) -> np.ndarray:
    """RAS affine of slices already sorted along their normal, the voxel axes being (column, row, slice).

    The third column runs from the first slice to the last one (it need not be the normal, e.g. with
    a tilted gantry); a single slice gets the normal times SliceThickness (or SpacingBetweenSlices).
    """
    first = headers[0]
    orientation = np.asarray(first.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(s) for s in first.PixelSpacing)
    origin = np.asarray(first.ImagePositionPatient, dtype=float)
    if len(headers) > 1:
        slice_step = (np.asarray(headers[-1].ImagePositionPatient, dtype=float) - origin) / (len(headers) - 1)
    else:
        thickness = first.get("SliceThickness") or first.get("SpacingBetweenSlices") or 1.0
        slice_step = np.cross(orientation[:3], orientation[3:]) * float(thickness)
    lps = np.eye(4)
    lps[:3, 0] = orientation[:3] * column_spacing
    lps[:3, 1] = orientation[3:] * row_spacing
    lps[:3, 2] = slice_step
    lps[:3, 3] = origin
    return LPS_TO_RAS @ lps


class DicomSeriesReader(ImageReader):
    """MONAI reader of one DICOM series, given as a list of its slice files or a folder holding only it.

    Slices are sorted along the normal of their plane (not by InstanceNumber), stacked on the last
    axis, and converted to HU with the modality LUT (RescaleSlope / RescaleIntercept). The volume's
    voxel axes are (column, row, slice), as MONAI's PydicomReader and ITKReader give them, with the
    RAS affine of ImagePositionPatient / ImageOrientationPatient / PixelSpacing; it has no channel
    (``ensure_channel_first`` adds one). The metadata names the series under :data:`SERIES_META_KEY`
    (``"DICOM series <uid> in <folder>"``), which identifies it better than ``filename_or_obj`` (its first
    file). :func:`image_loader` registers this reader with ``LoadImaged``.
    """

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        """Whether ``filename`` is one folder, or files that are all DICOM (by suffix or preamble)."""
        paths = [Path(name) for name in ensure_tuple(filename)]
        if len(paths) == 1 and paths[0].is_dir():
            return True
        return all(_claims_dicom(path) for path in paths)

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs) -> list[Dataset]:
        """Read the slices of one series (pixels are decoded in :meth:`get_data`), sorted along the normal.

        Raises:
            UnreadableFileError: a file is not readable DICOM (the message names it).
            DatalistError: the files hold several series, or are not one volume.
        """
        paths = [Path(name) for name in ensure_tuple(data)]
        source = str(paths[0]) if len(paths) == 1 else f"{len(paths)} files from {paths[0].parent}"
        if len(paths) == 1 and paths[0].is_dir():
            folder = paths[0]
            paths = [path for path in sorted(folder.iterdir()) if not path.name.startswith(".") and _claims_dicom(path)]
        headers = [_read_dicom(path, **kwargs) for path in paths]
        if not headers:
            raise DatalistError(f"no DICOM file in {source}")
        uids = sorted({str(header.SeriesInstanceUID) for header in headers})
        if len(uids) > 1:
            raise DatalistError(f"{source} holds {len(uids)} DICOM series {uids}; use datalist_from_dicom_folder")
        _check_series(headers, f"DICOM series {uids[0]} ({source})")
        order, _ = _slice_order(headers)
        return [headers[i] for i in order]

    def get_data(self, img: list[Dataset]) -> tuple[np.ndarray, dict]:
        """The (column, row, slice) volume in HU as float32, and its metadata (affine, spatial shape ...).

        Args:
            img: the sorted slices of one series, as :meth:`read` gives them.

        Returns:
            the ``(Columns, Rows, slices)`` volume and its metadata.

        Raises:
            UnreadableFileError: the pixels of a slice cannot be decoded (no Pixel Data, truncated, another
                size); the message names the file and the series.
        """
        series = f"DICOM series {img[0].SeriesInstanceUID} in {Path(img[0].filename).parent}"
        slices = np.empty((len(img), int(img[0].Rows), int(img[0].Columns)), dtype=np.float32)
        for k, header in enumerate(img):
            try:
                slices[k] = apply_modality_lut(header.pixel_array, header)
            except Exception as error:  # pydicom and its decoders raise many types for a broken file
                raise UnreadableFileError(
                    header.filename,
                    f"its pixels cannot be decoded ({type(error).__name__}: {error}); expected a "
                    f"{slices.shape[1]} x {slices.shape[2]} slice, one of the {len(img)} of {series}",
                ) from error
        volume = np.ascontiguousarray(slices.transpose(2, 1, 0))
        affine = _series_affine(img)
        meta = {
            MetaKeys.AFFINE: affine,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(volume.shape),
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
            MetaKeys.SPACE: SpaceKeys.RAS,
            "spacing": affine_to_spacing(affine, r=3),
            SERIES_META_KEY: series,
        }
        return volume, meta


def _read_dicom(path: Path, **kwargs) -> Dataset:
    try:
        return pydicom.dcmread(path, **kwargs)
    except Exception as error:  # pydicom raises many types for a corrupt file
        raise UnreadableFileError(path, f"not readable as DICOM ({type(error).__name__}: {error})") from error


def _claims_dicom(path: Path) -> bool:
    return path.suffix.lower() in DICOM_SUFFIXES or (path.is_file() and pydicom.misc.is_dicom(path))
