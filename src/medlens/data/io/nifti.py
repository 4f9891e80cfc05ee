"""NIfTI volumes: one documented slicing rule, shared by images, masks and the slice exporter.

Loaded with nibabel (scaling ``scl_slope`` / ``scl_inter`` applied). :func:`nifti_image` on a
3-D volume returns slice ``slice_index`` (default: the middle one) along the third voxel axis -
the acquisition slice axis, which is axial for axial acquisitions (oblique-coronal sacroiliac STIR
stacks, for instance, are sliced coronally) - with no reorientation by the affine::

    image = volume[:, :, k].T        # shape (Y, X): rows follow the 2nd voxel axis (j),
                                     # columns the 1st (i)

It is scaled to [0, 1] by the 0.5th and 99.5th percentiles of the *whole* volume (clipped), so
all slices of one volume share one intensity scale. 2-D NIfTI arrays are returned as ``data.T``;
trailing singleton dimensions are dropped; true 4-D data are refused. :func:`nifti_mask` uses
exactly the same slicing and transpose, so an image and its mask read with the same
``slice_index`` stay aligned pixel for pixel. :func:`nifti_volume` returns the volume in voxel
order (``X x Y x Z``) with its affine.

``decoded`` is measured on the slice as stored (scaling applied), before the percentile window.
``nibabel`` is imported inside these functions.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from medlens.common import rescale_to_unit
from medlens.data.io.base import LoadedImage, check_index, decoded_stats, safe_unit
from medlens.data.io.formats import SNIFF_BYTES, file_suffix, nifti_kind
from medlens.errors import ImageReadError

__all__ = ["nifti_header", "nifti_image", "nifti_mask", "nifti_volume", "robust_range"]

# Percentiles of big volumes are taken on an even stride of at most this many voxels.
_PERCENTILE_SAMPLE = 4_000_000


def nifti_header(path: Path, head: bytes) -> tuple[bool, bytes]:
    """``(gzipped, header bytes)``: the header is inflated first for ``.nii.gz`` content.

    Raises ImageReadError for gzip data that is corrupt or not NIfTI (only NIfTI may be
    compressed) and for the header of a ``.hdr``/``.img`` pair.
    """
    gzipped = head[:2] == b"\x1f\x8b"
    header = head
    if gzipped:
        try:
            with gzip.open(path, "rb") as fh:
                header = fh.read(SNIFF_BYTES)
        except (OSError, EOFError, zlib.error) as exc:
            raise ImageReadError(path, f"truncated or corrupt gzip data: {exc}") from exc
    kind = nifti_kind(header)
    if kind == "pair":
        raise ImageReadError(
            path, "NIfTI/Analyze header of a .hdr/.img pair; convert it to a single .nii file"
        )
    if kind is None:
        what = "gzip-compressed file" if gzipped else "file"
        raise ImageReadError(path, f"{what} that is not NIfTI (only .nii.gz may be compressed)")
    return gzipped, header


def _load(path: Path, head: bytes) -> Any:
    """A nibabel image; the content (not the name) decides how it is opened."""
    gzipped, header = nifti_header(path, head)
    try:
        import nibabel as nib
    except ImportError as exc:  # pragma: no cover - nibabel is a project dependency
        raise ImageReadError(path, "reading NIfTI needs nibabel: pip install nibabel") from exc
    try:
        if not gzipped and file_suffix(path) == ".nii":
            return nib.load(str(path))  # memory-mapped where possible
        data = path.read_bytes()
        if gzipped:
            data = gzip.decompress(data)  # strict: a truncated stream or bad CRC fails here
        cls = nib.Nifti2Image if nifti_kind(header) == "nifti2" else nib.Nifti1Image
        return cls.from_bytes(data)
    except Exception as exc:
        if isinstance(exc, MemoryError):
            raise
        raise ImageReadError(path, f"truncated or corrupt NIfTI data: {exc}") from exc


def _data(path: Path, img: Any) -> np.ndarray:
    """Voxel data as float32 with trailing singleton dimensions beyond the 2nd removed."""
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:
        if isinstance(exc, MemoryError):
            raise
        raise ImageReadError(path, f"truncated or corrupt NIfTI data: {exc}") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise ImageReadError(
            path, f"NIfTI array has shape {tuple(data.shape)}; only 2-D and 3-D data are read"
        )
    return data


def _slice(path: Path, data: np.ndarray, slice_index: int | None) -> tuple[np.ndarray, int]:
    """The documented slicing: ``data[:, :, k].T`` (``data.T`` for 2-D)."""
    if data.ndim == 2:
        check_index(path, slice_index, 1, "slices")
        return np.ascontiguousarray(data.T), 0
    n = data.shape[2]
    k = n // 2 if slice_index is None else check_index(path, slice_index, n, "slices")
    return np.ascontiguousarray(data[:, :, k].T), k


def robust_range(
    data: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)
) -> tuple[float, float]:
    """Percentiles of the finite voxels (an even subsample for huge volumes); min/max fallback.

    One window per volume: every slice of it is shown on the same intensity scale.
    """
    flat = data.ravel(order="K")
    if flat.size > _PERCENTILE_SAMPLE:
        flat = flat[:: flat.size // _PERCENTILE_SAMPLE + 1]
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return 0.0, 0.0
    lo, hi = (float(v) for v in np.percentile(flat, list(percentiles)))
    if hi <= lo:
        lo, hi = float(flat.min()), float(flat.max())
    return lo, hi


def window_unit(sl: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """A slice on its volume's window: clipped to [0, 1], NaN -> 0, flat window -> zeros."""
    out = rescale_to_unit(sl, lo, hi)
    out[np.isnan(out)] = 0.0
    return out


def nifti_image(path: Path, head: bytes, slice_index: int | None) -> LoadedImage:
    img = _load(path, head)
    data = _data(path, img)
    lo, hi = robust_range(data)
    sl, k = _slice(path, data, slice_index)
    dtype = np.dtype(img.get_data_dtype())
    meta: dict[str, Any] = {
        "volume_shape": [int(s) for s in data.shape],
        "slice_axis": 2,
        "slice_index": int(k),
        "n_slices": int(data.shape[2]) if data.ndim == 3 else 1,
        "percentiles": [0.5, 99.5],
        "intensity_range": [lo, hi],
        "original_shape": [int(sl.shape[0]), int(sl.shape[1])],
        "voxel_size": [float(z) for z in img.header.get_zooms()[: data.ndim]],
        "layout": "volume[:, :, k].T",
    }
    return LoadedImage(
        array=safe_unit(window_unit(sl, lo, hi)),
        source_format="nifti",
        mode=str(dtype),
        bit_depth=int(dtype.itemsize * 8),
        meta=meta,
        decoded=decoded_stats(sl),
    )


def nifti_mask(path: Path, head: bytes, slice_index: int | None) -> np.ndarray:
    sl, _ = _slice(path, _data(path, _load(path, head)), slice_index)
    return np.isfinite(sl) & (sl != 0)


def nifti_volume(path: Path, head: bytes) -> tuple[np.ndarray, np.ndarray]:
    img = _load(path, head)
    data = _data(path, img)
    if data.ndim == 2:
        data = data[:, :, None]
    affine = np.asarray(img.affine, dtype=np.float64)
    return np.ascontiguousarray(data, dtype=np.float32), affine
