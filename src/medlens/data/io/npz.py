"""MedMNIST-style ``.npz`` archives: image ``index`` of array ``key``.

Arrays are ``N x H x W`` or ``N x H x W x 3`` (``N x H x W x 1`` is taken as grey). ``uint8``,
``uint16`` and ``bool`` are scaled by their type (:func:`medlens.common.to_unit_range`); other
integer and float types are kept when inside [0, 1], else min-max scaled. ``decoded`` is measured
on the stored item.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medlens.common import to_unit_range
from medlens.data.io.base import (
    LoadedImage,
    check_file,
    decoded_stats,
    describe_unknown,
    float_unit,
    read_head,
    safe_unit,
)
from medlens.errors import ImageReadError

__all__ = ["npz_item_image", "read_npz_image"]


def npz_item_image(
    item: np.ndarray, *, key: str = "", index: int = 0, n_images: int = 1, path: str | Path = ""
) -> LoadedImage:
    """One stored array item (``H x W`` or ``H x W x 3``) as a :class:`LoadedImage`.

    Public so that a caller that keeps an archive's array in memory (the audit reads thousands
    of items of one array) converts each item by exactly the rule :func:`read_npz_image` uses.
    """
    if item.dtype in (np.uint8, np.uint16, np.bool_):
        out = to_unit_range(item)
        bits = 1 if item.dtype == np.bool_ else int(item.dtype.itemsize * 8)
    elif item.dtype.kind in "fiu":
        out, bits = float_unit(item.astype(np.float32)), int(item.dtype.itemsize * 8)
    else:
        raise ImageReadError(path, f"array {key!r} has unsupported dtype {item.dtype}")
    return LoadedImage(
        array=safe_unit(out),
        source_format="npz",
        mode="RGB" if item.ndim == 3 else "L",
        bit_depth=bits,
        meta={
            "key": key,
            "index": int(index),
            "n_images": int(n_images),
            "original_shape": [int(s) for s in item.shape[:2]],
            "dtype": str(item.dtype),
        },
        decoded=decoded_stats(item),
    )


def read_npz_image(path: str | Path, key: str, index: int) -> LoadedImage:
    """Image ``index`` of array ``key`` in a MedMNIST-style ``.npz`` (N x H x W [x 3])."""
    p = Path(path)
    check_file(p)
    head = read_head(p, 8)
    if head[:4] != b"PK\x03\x04":
        raise ImageReadError(p, f"not an npz archive ({describe_unknown(head)}); key {key!r}")
    try:
        with np.load(p, allow_pickle=False) as archive:
            keys = list(archive.files)
            if key not in keys:
                raise ImageReadError(
                    p, f"no array {key!r} in the archive; available keys: {', '.join(keys)}"
                )
            arr = archive[key]
    except ImageReadError:
        raise
    except Exception as exc:
        if isinstance(exc, MemoryError):
            raise
        raise ImageReadError(p, f"corrupt npz archive (key {key!r}): {exc}") from exc
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] == 3)):
        raise ImageReadError(
            p, f"array {key!r} has shape {arr.shape}; expected N x H x W or N x H x W x 3"
        )
    n = int(arr.shape[0])
    if isinstance(index, bool) or not isinstance(index, int | np.integer) or not 0 <= index < n:
        raise ImageReadError(
            p, f"index {index!r} out of range for array {key!r} with {n} images (0..{n - 1})"
        )
    return npz_item_image(arr[int(index)], key=key, index=int(index), n_images=n, path=p)
