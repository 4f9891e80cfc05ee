"""Heatmaps drawn over the image the model saw, and the ROI "focus" that is labelled as such.

The overlay is drawn on the *preprocessed display image* (after crop and resize, before
normalisation), so every heatmap pixel sits on the pixel it was computed for. Blending is a plain
``(1 - alpha) * image + alpha * colour`` with no rescaling of the grey levels, so the film looks
like the film.

Focusing a heatmap on a region (:func:`focus`) is an edit of the explanation, not a finding: it
removes everything outside the region, so the result records what region was used and how much
of the original heatmap's mass was thrown away. A fixed rectangle (:func:`focus_box`) is labelled
``roi="fixed box"`` so nobody mistakes it for a lesion-driven result.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FocusedCam", "focus", "focus_box", "overlay", "png_base64", "save_png"]


@dataclass
class FocusedCam:
    """A heatmap restricted to a region. ``meta``: ``roi`` (what the region is),
    ``roi_fraction`` (share of the image), ``energy_kept`` (share of the original heatmap's mass
    inside the region: low means the focus hid most of what the model looked at)."""

    cam: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.cam if dtype is None else self.cam.astype(dtype)


def focus(cam: np.ndarray, mask: np.ndarray, roi: str = "mask") -> FocusedCam:
    """``cam * mask`` renormalised to [0, 1]; exactly zero outside ``mask``.

    ``roi`` names the region (``"lesion mask"``, ``"lung mask"``...) and is kept in the result's
    metadata. An empty region, or a heatmap with no mass inside it, gives an all-zero map (with
    ``energy_kept`` 0), never a rescaled speck of noise.
    """
    c = np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float32)), 0.0, None)
    m = np.asarray(mask).astype(bool)
    if c.shape != m.shape:
        raise ValueError(f"cam {c.shape} and mask {m.shape} must have the same shape")
    out = np.where(m, c, np.float32(0.0)).astype(np.float32)
    total = float(c.sum())
    kept = float(out.sum()) / total if total > 0 else 0.0
    peak = float(out.max()) if out.size else 0.0
    if peak > 0:
        out = out / np.float32(peak)
        out[~m] = 0.0
    return FocusedCam(
        out,
        {"roi": roi, "roi_fraction": float(m.mean()) if m.size else 0.0, "energy_kept": kept},
    )


def focus_box(cam: np.ndarray, box: Sequence[float]) -> FocusedCam:
    """Focus on a fixed rectangle ``(x1, y1, x2, y2)`` in heatmap pixels; labelled "fixed box".

    A box chosen in advance says nothing about where the lesion is; the label travels with the
    result so a report can say so.
    """
    from medlens.explain.scores import box_mask

    c = np.asarray(cam)
    res = focus(c, box_mask(c.shape[:2], [box]), roi="fixed box")
    res.meta["box"] = [float(v) for v in box]
    return res


def overlay(
    display_image: np.ndarray,
    cam: np.ndarray,
    colormap: str = "jet",
    alpha: float = 0.4,
) -> np.ndarray:
    """``uint8 H x W x 3`` RGB: the display image blended with the coloured heatmap.

    ``display_image``: ``H x W`` or ``H x W x 3`` in [0, 1] (the preprocessed, un-normalised
    image). ``cam``: ``h x w`` in [0, 1], resized bilinearly to the image if needed.
    ``colormap``: any matplotlib colormap name.
    """
    import cv2
    import matplotlib

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = np.asarray(display_image, dtype=np.float32)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"display image must be H x W or H x W x 3, got {img.shape}")
    h, w = img.shape[:2]
    c = np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float32)), 0.0, 1.0)
    if c.shape != (h, w):
        c = np.clip(cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError:
        raise ValueError(f"unknown colormap {colormap!r}") from None
    heat = cmap(c)[:, :, :3].astype(np.float32)
    out = (1.0 - alpha) * np.clip(img, 0.0, 1.0) + alpha * heat
    return np.rint(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an ``H x W x 3`` uint8 RGB (or ``H x W`` grey) array as PNG; returns the path."""
    from PIL import Image

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(p, format="PNG")
    return p


def png_base64(rgb: np.ndarray) -> str:
    """Base64 PNG of an RGB/grey uint8 array (for ``data:`` URIs in HTML)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
