"""The public readers: detect the format from the content, then one table says who decodes it.

Adding a format is one row in :data:`READERS` (and one in :data:`~medlens.data.io.formats.FORMATS`):
no reader function tests a format name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medlens.common import resize_nearest
from medlens.data.io import dicom, nifti, pillow
from medlens.data.io.base import (
    LoadedImage,
    check_file,
    not_image,
    read_head,
    unexpected,
)
from medlens.data.io.formats import detect_format
from medlens.errors import ImageReadError

__all__ = ["READERS", "Reader", "read_image", "read_mask", "read_volume"]

ImageFn = Callable[[Path, bytes, "int | None"], LoadedImage]
MaskFn = Callable[[Path, bytes, "int | None"], np.ndarray]


@dataclass(frozen=True)
class Reader:
    """How one detected format becomes an image and a mask."""

    image: ImageFn
    mask: MaskFn


def _unknown_image(path: Path, head: bytes, slice_index: int | None) -> LoadedImage:
    """No magic matched: Pillow knows many more formats (WebP, PPM, ICO...); else not an image."""
    try:
        return pillow.pil_image(path, head, slice_index)
    except pillow.NotPillow:
        raise not_image(path, head) from None


def _unknown_mask(path: Path, head: bytes, slice_index: int | None) -> np.ndarray:
    try:
        return pillow.pil_mask(path, head, slice_index)
    except pillow.NotPillow:
        raise not_image(path, head) from None


def _dicom_image(path: Path, head: bytes, slice_index: int | None) -> LoadedImage:
    bare = head[128:132] != b"DICM"
    try:
        return dicom.dicom_image(path, slice_index, bare=bare)
    except dicom.NotDicom:  # a preamble-less guess that pydicom could not confirm
        return _unknown_image(path, head, slice_index)


def _dicom_mask(path: Path, head: bytes, slice_index: int | None) -> np.ndarray:
    bare = head[128:132] != b"DICM"
    try:
        return dicom.dicom_mask(path, slice_index, bare=bare)
    except dicom.NotDicom:
        return _unknown_mask(path, head, slice_index)


def _array_file(what: str) -> Reader:
    def image(path: Path, head: bytes, slice_index: int | None) -> LoadedImage:
        raise ImageReadError(
            path, f"{what} array file, not an image; use read_npz_image(path, key, index)"
        )

    def mask(path: Path, head: bytes, slice_index: int | None) -> np.ndarray:
        raise ImageReadError(path, f"{what} array file, not a mask image")

    return Reader(image, mask)


def _zip_image(path: Path, head: bytes, slice_index: int | None) -> LoadedImage:
    raise ImageReadError(path, "zip archive, not an image; unpack it and read its files")


def _zip_mask(path: Path, head: bytes, slice_index: int | None) -> np.ndarray:
    raise ImageReadError(path, "zip archive, not a mask image; unpack it and read its files")


_PILLOW = Reader(pillow.pil_image, pillow.pil_mask)
# gzip and .hdr/.img headers go to the NIfTI reader: it says why they are not a .nii(.gz).
_NIFTI = Reader(nifti.nifti_image, nifti.nifti_mask)

#: Detected format -> reader. ``None`` (no magic matched) tries Pillow's other formats.
READERS: dict[str | None, Reader] = {
    "png": _PILLOW,
    "jpeg": _PILLOW,
    "bmp": _PILLOW,
    "tiff": _PILLOW,
    "gif": _PILLOW,
    "dicom": Reader(_dicom_image, _dicom_mask),
    "nifti": _NIFTI,
    "gzip": _NIFTI,
    "nifti-pair": _NIFTI,
    "npz": _array_file("npz"),
    "npy": _array_file("npy"),
    "zip": Reader(_zip_image, _zip_mask),
    None: Reader(_unknown_image, _unknown_mask),
}


def _sniff(path: Path) -> tuple[str | None, bytes]:
    check_file(path)
    head = read_head(path)
    return detect_format(head, path.name), head


def read_image(path: str | Path, *, slice_index: int | None = None) -> LoadedImage:
    """Read one 2-D image (a frame of a DICOM, a slice of a NIfTI volume) scaled to [0, 1].

    The format is taken from the content. ``slice_index`` picks the DICOM frame / NIfTI slice /
    TIFF page (defaults: middle frame, middle slice, first page); single images accept only
    ``None`` or 0. Every unreadable input raises :class:`~medlens.errors.ImageReadError`.
    The result's ``decoded`` figures describe the pixel data before any scaling.
    """
    p = Path(path)
    try:
        fmt, head = _sniff(p)
        return READERS[fmt].image(p, head, slice_index)
    except (ImageReadError, MemoryError):
        raise
    except Exception as exc:  # anything a decoder let through is still a bad file
        raise unexpected(p, exc) from exc


def read_mask(
    path: str | Path,
    *,
    slice_index: int | None = None,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Read a lesion mask as ``bool`` ``H x W``: any nonzero stored value is lesion.

    Grey values, palette *indices* (label maps), any colour channel (pixels with alpha 0 are
    background), NIfTI voxels of the slice, raw DICOM pixel values. JPEG masks pick up
    compression noise - store masks losslessly. NIfTI masks are sliced exactly like
    :func:`read_image` slices NIfTI images (``volume[:, :, k].T``, default the middle slice), so
    the same ``slice_index`` gives aligned arrays. ``shape`` (rows, cols) resizes with nearest
    neighbour (pixel centres).
    """
    p = Path(path)
    if shape is not None and (
        len(shape) != 2 or any(not isinstance(v, int | np.integer) or v <= 0 for v in shape)
    ):
        raise ValueError(f"shape must be two positive integers (rows, cols), got {shape!r}")
    try:
        fmt, head = _sniff(p)
        mask = np.asarray(READERS[fmt].mask(p, head, slice_index), dtype=bool)
        if shape is not None:
            mask = resize_nearest(mask, shape)
        return np.ascontiguousarray(mask)
    except (ImageReadError, MemoryError):
        raise
    except Exception as exc:
        raise unexpected(p, exc) from exc


def read_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI volume as float32 ``X x Y x Z`` (voxel order, scaling applied) and its 4x4 affine.

    2-D data come back as ``X x Y x 1``. Anything but NIfTI raises ImageReadError.
    """
    p = Path(path)
    try:
        fmt, head = _sniff(p)
        if READERS.get(fmt) is not _NIFTI:
            found = "DICOM" if fmt == "dicom" else "not NIfTI"
            raise ImageReadError(p, f"read_volume reads NIfTI (.nii/.nii.gz) only; this is {found}")
        return nifti.nifti_volume(p, head)
    except (ImageReadError, MemoryError):
        raise
    except Exception as exc:
        raise unexpected(p, exc) from exc
