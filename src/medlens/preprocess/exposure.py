"""Exposure: flag under- and over-exposed images, and restore local contrast with CLAHE."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from medlens.common import to_unit_range
from medlens.preprocess.ops import PreprocessError, _as_image, _grey

__all__ = ["ExposureReport", "clahe", "exposure_check"]

# A pixel this close to 0 or 1 counts as clipped (detector saturation / no signal).
_DARK_CLIP = 0.02
_BRIGHT_CLIP = 0.98


@dataclass(frozen=True)
class ExposureReport:
    """Global exposure statistics of a (grey) image and the verdict ``ok`` / ``under`` / ``over``."""

    mean: float
    p1: float
    p99: float
    dark_fraction: float
    bright_fraction: float
    status: Literal["ok", "under", "over"]


def exposure_check(
    img: np.ndarray, low: float = 0.2, high: float = 0.8, clip_fraction: float = 0.05
) -> ExposureReport:
    """Flag under- and over-exposed images.

    Badly exposed films lose contrast in the lungs (the signal) and are a known shortcut source;
    flagging them lets a pipeline enhance only those (``clahe: only_if_flagged``) and lets reports
    count them. ``under``: mean below ``low`` or more than ``clip_fraction`` of pixels clipped dark
    (< 0.02); ``over``: mean above ``high`` or more than ``clip_fraction`` clipped bright (> 0.98).
    When both tails are clipped the larger one decides. Run it after ``crop_border``: a black frame
    otherwise counts as clipped-dark pixels.
    """
    arr = _as_image(img)
    g = _grey(arr)
    mean = float(g.mean())
    p1, p99 = (float(v) for v in np.percentile(g, [1, 99]))
    dark = float((g < _DARK_CLIP).mean())
    bright = float((g > _BRIGHT_CLIP).mean())
    status: Literal["ok", "under", "over"] = "ok"
    if mean < low:
        status = "under"
    elif mean > high:
        status = "over"
    elif dark > clip_fraction or bright > clip_fraction:
        status = "under" if dark >= bright else "over"
    return ExposureReport(mean, p1, p99, dark, bright, status)


def _clahe_u16(plane: np.ndarray, clip_limit: float, tile_grid: int) -> np.ndarray:
    """CLAHE on one float plane in [0, 1] via 16-bit OpenCV, with 8-bit clip-limit semantics.

    OpenCV's 16-bit CLAHE uses 65536 histogram bins and a per-bin clip of
    ``max(1, int(clip_limit * tile_pixels / 65536))``: for ordinary tile sizes that floors to 1, so
    the clip limit stops meaning anything (8-bit-sourced data is then barely changed, continuous
    data gets unlimited equalisation and amplified noise). So the plane is first snapped to the
    256-level grid (multiples of 257) and the clip limit scaled by 256, which reproduces the usual
    256-bin CLAHE (``clip_limit`` means what it means everywhere else), while the tile-to-tile
    interpolation still produces 16-bit output.
    """
    h, w = plane.shape
    grid = (max(1, min(tile_grid, w)), max(1, min(tile_grid, h)))
    u16 = (np.rint(np.clip(plane, 0.0, 1.0) * 255.0).astype(np.uint16)) * np.uint16(257)
    engine = cv2.createCLAHE(clipLimit=float(clip_limit) * 256.0, tileGridSize=grid)
    return to_unit_range(engine.apply(u16))


def clahe(img: np.ndarray, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (OpenCV ``createCLAHE``).

    Restores local contrast in under/over-exposed films without the noise blow-up of plain
    equalisation. Float [0, 1] is converted to uint16 (0..65535), equalised and converted back to
    float [0, 1] (see :func:`_clahe_u16` for how the clip limit keeps its usual meaning). RGB
    images are equalised on the L channel of CIE-LAB only, so hues do not shift; grey images
    directly.
    """
    arr = _as_image(img)
    if clip_limit <= 0:
        raise PreprocessError(f"clip_limit: must be > 0, got {clip_limit!r}")
    if tile_grid < 1:
        raise PreprocessError(f"tile_grid: must be >= 1, got {tile_grid!r}")
    if arr.ndim == 2:
        return _clahe_u16(arr, clip_limit, tile_grid)
    lab = cv2.cvtColor(np.clip(arr, 0.0, 1.0), cv2.COLOR_RGB2LAB)  # float: L in [0, 100]
    lab[:, :, 0] = _clahe_u16(lab[:, :, 0] / 100.0, clip_limit, tile_grid) * 100.0
    return np.clip(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB), 0.0, 1.0).astype(np.float32)
