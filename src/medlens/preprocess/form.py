"""Steps that remove acquisition properties a model could read the label from (shortcuts).

When a data set's classes come from different sources, properties of the *acquisition* (image
shape, overall brightness and contrast) line up with the class, and a network learns them as
readily as anatomy (``medlens audit``'s shortcut probe finds them). Two pure functions here put
every image in one form before the model sees it, so those properties carry nothing:

* :func:`common_form` gives every image one aspect ratio by a centred crop (or a centred black
  pad), so width/height and aspect say nothing about the source;
* :func:`standardize` maps each image's own low/high percentiles to 0 and 1, so a source's
  brightness offset or gain (or a gamma-free contrast difference) is gone.

Colour mode is removed by the existing ``grayscale`` step; compression artefacts and gamma are
randomised at training time instead (``train.augment``: ``jpeg``, ``gamma``, ``blur``,
``colour_jitter``), since they cannot be undone per image.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["common_form", "form_box", "standardize"]


def form_box(height: int, width: int, aspect: float) -> tuple[int, int, int, int]:
    """The centred ``(y0, y1, x0, x1)`` crop of an ``height x width`` image with ``width /
    height == aspect`` (as near as whole pixels allow)."""
    if width >= aspect * height:  # too wide: keep the full height
        w = max(1, min(width, round(aspect * height)))
        x0 = (width - w) // 2
        return 0, height, x0, x0 + w
    h = max(1, min(height, round(width / aspect)))
    y0 = (height - h) // 2
    return y0, y0 + h, 0, width


def common_form(
    img: np.ndarray, aspect: float = 1.0, mode: Literal["crop", "pad"] = "crop"
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The image at one aspect ratio, and where the original lies in it.

    ``crop``: the centred window of that aspect (returned box: the window in the input's
    pixels). ``pad``: the image centred on a black canvas of that aspect (returned box: where the
    input sits on the canvas). Either way the next ``resize`` then gives every image the same
    shape without stretching one source more than another.
    """
    h, w = img.shape[:2]
    if mode == "crop":
        y0, y1, x0, x1 = form_box(h, w, aspect)
        return np.ascontiguousarray(img[y0:y1, x0:x1]), (y0, y1, x0, x1)
    if w >= aspect * h:
        ch, cw = max(h, round(w / aspect)), w
    else:
        ch, cw = h, max(w, round(aspect * h))
    y0, x0 = (ch - h) // 2, (cw - w) // 2
    canvas = np.zeros((ch, cw, *img.shape[2:]), dtype=np.float32)
    canvas[y0 : y0 + h, x0 : x0 + w] = img
    return canvas, (y0, y0 + h, x0, x0 + w)


def standardize(
    img: np.ndarray, low: float = 1.0, high: float = 99.0, ignore_black: bool = False
) -> np.ndarray:
    """Each image's ``low``/``high`` percentiles (over all channels) mapped to 0 and 1, clipped.

    Robust percentiles rather than mean/std so a burned-in label or a few saturated pixels do
    not set the scale. ``ignore_black`` takes the percentiles over pixels above 1/255 only (an
    ultrasound fan or a letterbox would otherwise pull the low end to 0). A flat image stays as
    it is (there is no contrast to standardise).
    """
    x = np.asarray(img, dtype=np.float32)
    values = x[x > 1.0 / 255.0] if ignore_black else x.ravel()
    if values.size < 2:
        return x.copy()
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    if hi - lo < 1e-6:
        return x.copy()
    out = (x - lo) / (hi - lo)
    if ignore_black:
        out = np.where(x > 1.0 / 255.0, out, 0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
