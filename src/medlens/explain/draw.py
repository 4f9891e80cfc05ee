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

__all__ = [
    "FocusedCam",
    "focus",
    "focus_box",
    "on_original",
    "overlay",
    "png_base64",
    "save_png",
    "to_original",
]


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


def to_original(cam: np.ndarray, pipeline: Any, info: dict[str, Any]) -> np.ndarray:
    """A heatmap over the model's input carried back to the original image's pixels.

    The pipeline's geometry run backwards (what ``align_mask`` does to a mask, inverted): a
    letterboxed resize loses its padding and is scaled back to the size it was made from; a
    border crop is pasted back in place, zero outside it (the model never saw that border).
    ``info`` is the image's ``PreprocessResult.info``; values stay in [0, 1].
    """
    import cv2

    def hw(size: Any) -> tuple[int, int]:
        return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))

    h0, w0 = (int(v) for v in info["original_shape"][:2])
    crop = info.get("crop_bbox")
    shape, undo = (h0, w0), []  # (step, the shape it was given)
    for step in pipeline.steps:
        kind = getattr(step, "step", "")
        if kind == "crop_border" and crop is not None and not any(k == "crop" for k, _, _ in undo):
            undo.append(("crop", step, shape))
            shape = (int(crop[1]) - int(crop[0]), int(crop[3]) - int(crop[2]))
        elif kind == "resize":
            undo.append(("resize", step, shape))
            shape = hw(step.size)
    c = np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float32)), 0.0, 1.0)
    if c.shape != shape:
        c = cv2.resize(c, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    for kind, step, (h, w) in reversed(undo):
        if kind == "resize":
            if step.keep_aspect:  # drop the letterbox padding, as resize() placed it
                th, tw = c.shape[:2]
                scale = min(th / h, tw / w)
                nh, nw = min(th, max(1, round(h * scale))), min(tw, max(1, round(w * scale)))
                y, x = (th - nh) // 2, (tw - nw) // 2
                c = c[y : y + nh, x : x + nw]
            c = cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR)
        else:
            y0, y1, x0, x1 = (int(v) for v in crop)
            full = np.zeros((h, w), dtype=np.float32)
            full[y0:y1, x0:x1] = c
            c = full
    return np.clip(c, 0.0, 1.0)


def on_original(
    image: Any, cam: np.ndarray, pipeline: Any, info: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """``(image in [0, 1] at its own resolution, heatmap carried back to it)`` for drawing an
    overlay a person can lay beside the original film. ``image``: a path or an array."""
    from medlens.common import to_unit_range
    from medlens.data.io import read_image

    arr = read_image(image).array if isinstance(image, str | Path) else to_unit_range(image)
    return arr, to_original(cam, pipeline, info)


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
