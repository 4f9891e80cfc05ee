"""Geometric and channel operations: small pure functions on float [0, 1] arrays.

Each function returns a new array and never modifies its input, so the same decoded image can be
fed to several pipelines (training cache, explanation overlay, verification) without surprises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from medlens.common import to_unit_range
from medlens.errors import MedlensError

__all__ = [
    "PreprocessError",
    "crop_black_border",
    "normalize",
    "resize",
    "to_channels",
    "to_chw",
]

# Rec. 601 luma weights: what OpenCV and PIL use for RGB -> grey, so results match other tools.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# A border row/column is one where at least this fraction of pixels is below the threshold:
# a fraction (not the mean) so that a burned-in label inside the border does not stop the crop.
_BORDER_DARK_FRACTION = 0.95


class PreprocessError(MedlensError):
    """An array handed to a preprocessing function cannot be processed as given."""


def _as_image(img: Any, name: str = "image") -> np.ndarray:
    """A float32 ``H x W`` or ``H x W x 3`` copy-free view of ``img`` in [0, 1], or a clear error.

    Integer and bool images are scaled by their dtype (:func:`medlens.common.to_unit_range`:
    8/16-bit files decoded without scaling); ``H x W x 1`` is treated as grey.
    """
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise PreprocessError(
            f"{name}: expected an H x W (grey) or H x W x 3 (RGB) array, got shape "
            f"{arr.shape}; convert the image to one of these layouts first"
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise PreprocessError(f"{name}: empty image of shape {arr.shape}")
    if arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
        return to_unit_range(arr)
    if not np.issubdtype(arr.dtype, np.floating):
        raise PreprocessError(f"{name}: unsupported dtype {arr.dtype}; pass float32 in [0, 1]")
    return arr.astype(np.float32, copy=False)


def _grey(img: np.ndarray) -> np.ndarray:
    """Luminance of a validated float image (the image itself when already grey)."""
    return img if img.ndim == 2 else img @ _LUMA


def to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """Return the image with exactly ``channels`` channels (1 -> ``H x W``, 3 -> ``H x W x 3``).

    Models have a fixed input channel count while data sets mix grey and colour files; grey is
    made from RGB by luminance (so a colour photo of a film looks like the film), RGB from grey by
    replicating the channel (what ImageNet-pretrained stems expect).
    """
    arr = _as_image(img)
    if channels == 1:
        return arr.copy() if arr.ndim == 2 else np.ascontiguousarray(_grey(arr), dtype=np.float32)
    if channels == 3:
        if arr.ndim == 3:
            return arr.copy()
        return np.repeat(arr[:, :, None], 3, axis=2)
    raise PreprocessError(f"channels: must be 1 (grey) or 3 (RGB), got {channels!r}")


def _dark_run(is_dark: np.ndarray) -> int:
    """Length of the leading run of True values."""
    not_dark = np.flatnonzero(~is_dark)
    return int(not_dark[0]) if not_dark.size else len(is_dark)


def _limit_crop(lo: int, hi_cut: int, length: int, min_keep: float) -> tuple[int, int]:
    """Shrink the two cuts proportionally so that at least ``min_keep`` of ``length`` survives."""
    max_cut = int(np.floor((1.0 - min_keep) * length))
    total = lo + hi_cut
    if total <= max_cut:
        return lo, hi_cut
    if total == 0:
        return 0, 0
    lo2 = int(np.floor(lo * max_cut / total))
    return lo2, min(hi_cut, max_cut - lo2)


def crop_black_border(
    img: np.ndarray, threshold: float = 0.04, min_keep: float = 0.5
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Remove near-black border rows/columns (scanner frames, letterboxing, collimator padding).

    Such borders carry no anatomy but move the image statistics and the field of view, so a model
    could learn "which scanner" instead of "which disease". A row (column) is border when at least
    95 % of its pixels are below ``threshold``; border is only taken from the edges inwards. The
    crop never removes more than ``1 - min_keep`` of either dimension (both sides together), so a
    mostly-dark film cannot be cropped to a sliver; an all-dark image is returned uncropped.

    Returns the cropped copy and its box ``(y0, y1, x0, x1)`` (end-exclusive) in input pixels.
    """
    arr = _as_image(img)
    if not 0.0 < min_keep <= 1.0:
        raise PreprocessError(f"min_keep: must be in (0, 1], got {min_keep!r}")
    h, w = arr.shape[:2]
    dark = _grey(arr) < threshold
    row_dark = dark.mean(axis=1) >= _BORDER_DARK_FRACTION
    top, bottom = _dark_run(row_dark), _dark_run(row_dark[::-1])
    if top >= h:  # nothing but border: leave the image alone
        return arr.copy(), (0, h, 0, w)
    top, bottom = _limit_crop(top, bottom, h, min_keep)
    y0, y1 = top, h - bottom
    # Columns are judged inside the kept rows so that a top/bottom border does not count as dark.
    col_dark = dark[y0:y1].mean(axis=0) >= _BORDER_DARK_FRACTION
    left, right = _dark_run(col_dark), _dark_run(col_dark[::-1])
    if left >= w:
        left = right = 0
    left, right = _limit_crop(left, right, w, min_keep)
    x0, x1 = left, w - right
    return arr[y0:y1, x0:x1].copy(), (y0, y1, x0, x1)


def _size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int | np.integer):
        hw = (int(size), int(size))
    else:
        vals = tuple(int(v) for v in size)
        if len(vals) != 2:
            raise PreprocessError(f"size: give one int or [height, width], got {size!r}")
        hw = (vals[0], vals[1])
    if min(hw) < 1:
        raise PreprocessError(f"size: must be positive, got {size!r}")
    return hw


def _resize_exact(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    src_h, src_w = arr.shape[:2]
    if (src_h, src_w) == (h, w):
        return arr.copy()
    # INTER_AREA averages when shrinking (no aliasing of ribs/noise); linear when enlarging.
    interp = cv2.INTER_AREA if (h <= src_h and w <= src_w) else cv2.INTER_LINEAR
    out = cv2.resize(np.ascontiguousarray(arr), (w, h), interpolation=interp)
    return out.astype(np.float32, copy=False)


def resize(img: np.ndarray, size: int | tuple[int, int], keep_aspect: bool = False) -> np.ndarray:
    """Resize to ``size`` (an int for square, or ``(height, width)``).

    Models need one fixed input size. ``keep_aspect=False`` stretches (fine when all inputs share
    an aspect ratio); ``keep_aspect=True`` scales the longer side to fit and pads with zeros,
    centred (letterbox), so anatomy keeps its proportions.
    """
    arr = _as_image(img)
    h, w = _size_hw(size)
    if not keep_aspect:
        return _resize_exact(arr, h, w)
    src_h, src_w = arr.shape[:2]
    scale = min(h / src_h, w / src_w)
    new_h = min(h, max(1, round(src_h * scale)))
    new_w = min(w, max(1, round(src_w * scale)))
    inner = _resize_exact(arr, new_h, new_w)
    out = np.zeros((h, w, *arr.shape[2:]), dtype=np.float32)
    y0, x0 = (h - new_h) // 2, (w - new_w) // 2
    out[y0 : y0 + new_h, x0 : x0 + new_w] = inner
    return out


def normalize(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Per-channel ``(img - mean) / std``: puts inputs on the scale the model's weights expect."""
    arr = np.asarray(img, dtype=np.float32)
    channels = 1 if arr.ndim == 2 else arr.shape[-1]
    m = np.asarray(mean, dtype=np.float32).reshape(-1)
    s = np.asarray(std, dtype=np.float32).reshape(-1)
    if m.size != channels or s.size != channels:
        raise PreprocessError(
            f"normalize: mean/std have {m.size}/{s.size} values but the image has {channels} "
            f"channel(s); give one value per channel"
        )
    if np.any(s <= 0):
        raise PreprocessError(f"normalize: std must be > 0, got {list(s)}")
    if arr.ndim == 2:
        return ((arr - m[0]) / s[0]).astype(np.float32)
    return ((arr - m) / s).astype(np.float32)


def to_chw(img: np.ndarray) -> np.ndarray:
    """``H x W`` -> ``1 x H x W``, ``H x W x C`` -> ``C x H x W``: float32, C-contiguous (tensor-ready)."""
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim == 2:
        return np.array(arr[None, :, :], dtype=np.float32, order="C", copy=True)
    if arr.ndim == 3:
        return np.array(np.transpose(arr, (2, 0, 1)), dtype=np.float32, order="C", copy=True)
    raise PreprocessError(f"to_chw: expected a 2-D or 3-D array, got shape {arr.shape}")
