"""NIfTI reading with the gzip stream verified end to end.

nibabel reads a ``.nii.gz`` up to the end of its voxel data and stops: the CRC-32 and size in the gzip trailer are
never checked, so a file corrupted in the middle of its deflate stream loads as garbage (e.g. int32 voxels of
+-2^31). :class:`VerifiedNibabelReader` decompresses ``.gz`` files with Python's :mod:`gzip` to the end of the
stream, which checks the CRC-32 and the size of every member, and builds the image from those bytes: the file is
decompressed once, as before, and a corrupt one raises :class:`~common.data.errors.UnreadableFileError`.
:func:`common.data.image_loader` registers it.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
from monai.data import NibabelReader
from monai.data.utils import correct_nifti_header_if_necessary
from monai.utils import ensure_tuple

from common.data.errors import UnreadableFileError

NIFTI_CLASSES = (nib.Nifti1Image, nib.Nifti2Image)


class VerifiedNibabelReader(NibabelReader):
    """MONAI's :class:`~monai.data.NibabelReader` that verifies the gzip CRC-32 and size of ``.nii.gz`` files.

    A ``.gz`` file is decompressed whole into memory (its uncompressed size, once; the voxel array is then read
    from those bytes, so a volume needs twice its size while loading) and read from there; other files are read
    by ``nibabel.load`` as MONAI does. The image object, hence the data, dtype, affine and metadata that
    :meth:`get_data` gives, is the one ``nibabel.load`` gives for an intact file.
    """

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs) -> nib.Nifti1Image | list[nib.Nifti1Image]:
        """Read the header (and, for ``.gz``, the verified bytes) of one file or of each file of a list.

        Args:
            data: a file name or a list of file names.
            kwargs: arguments of ``nibabel.load`` (files that are not ``.gz`` only); they override the reader's.

        Returns:
            the nibabel image, or a list of them for a list of files.

        Raises:
            UnreadableFileError: a ``.gz`` file fails the CRC-32 or size check, its stream is corrupt or truncated,
                or it holds no NIfTI header; or nibabel cannot read a file.
        """
        self.filenames = ensure_tuple(data)
        options = {**self.kwargs, **kwargs}
        images = [correct_nifti_header_if_necessary(_load(Path(name), options)) for name in self.filenames]
        return images if len(images) > 1 else images[0]


def _load(path: Path, options: dict) -> nib.Nifti1Image:
    """One NIfTI image: from its verified decompressed bytes if ``path`` is gzip, else by ``nibabel.load``."""
    if not path.name.endswith(".gz"):
        try:
            return nib.load(path, **options)
        except Exception as error:  # nibabel raises many types for a broken file
            raise UnreadableFileError(path, f"{type(error).__name__}: {error}") from error
    raw = verified_gzip_bytes(path)
    for nifti in NIFTI_CLASSES:
        header = nifti.header_class
        if header.may_contain_header(raw[: header.sizeof_hdr]):
            return nifti.from_bytes(raw)
    raise UnreadableFileError(path, "found no NIfTI-1 or NIfTI-2 header after decompressing; expected a NIfTI file")


def verified_gzip_bytes(path: Path) -> bytes:
    """The decompressed content of a gzip file, read to the end of the stream so that every CRC-32 is checked.

    Raises:
        UnreadableFileError: a CRC-32 or size mismatch, a corrupt or truncated deflate stream, or not gzip.
    """
    try:
        with gzip.open(path, "rb") as file:
            return file.read()
    except gzip.BadGzipFile as error:
        if "CRC check failed" in str(error):
            raise UnreadableFileError(path, f"gzip CRC check failed: the file is corrupt ({error})") from error
        raise UnreadableFileError(path, f"not a valid gzip file ({error}); expected a .nii.gz") from error
    except (zlib.error, EOFError) as error:
        raise UnreadableFileError(
            path, f"the gzip stream is corrupt or truncated ({type(error).__name__}: {error})"
        ) from error
