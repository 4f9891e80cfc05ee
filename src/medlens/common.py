"""Small rules every layer needs, in one home: file hashes, JSON-safe values, pixels → [0, 1],
and how a probability is written for a person.

This module sits below ``data``: it imports nothing from medlens, so any layer may use it without
an arrow pointing back up the data → preprocess → models → … flow.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np

_CHUNK = 1 << 20


def file_sha256(path: str | Path, chunk: int = _CHUNK) -> str:
    """SHA-256 of a file's bytes, read in chunks so a large scan never sits in memory twice."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def bytes_sha256(data: bytes) -> str:
    """SHA-256 of bytes already in memory (uploads)."""
    return hashlib.sha256(data).hexdigest()


def json_safe(obj: Any) -> Any:
    """A value ``json.dumps`` writes as strict JSON: NaN/inf become null, numpy becomes Python.

    JSON has no NaN, and an undefined figure (an AUC with one class present) must read as
    "not defined", never as a number.
    """
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating | float):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def to_unit_range(arr: np.ndarray) -> np.ndarray:
    """Pixels as float32 in [0, 1] by their storage type: ``uint8``/``uint16``/… divide by the
    type's maximum, ``bool`` maps to {0, 1}, floats are taken as already scaled and clipped.

    The full range of the type, not the image's own min/max: a dark image stays dark, which is
    what the exposure check and the model were trained to see.
    """
    a = np.asarray(arr)
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        if info.min < 0:  # signed: shift to start at zero
            return ((a.astype(np.float64) - info.min) / (info.max - info.min)).astype(np.float32)
        return a.astype(np.float32) / float(info.max)
    return np.clip(a.astype(np.float32, copy=False), 0.0, 1.0)


def rescale_to_unit(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear window ``[lo, hi]`` → [0, 1] (clipped); a flat window maps to zeros.

    Used for windowed data (CT/MRI intensity ranges, percentile windows of a volume).
    """
    a = np.asarray(arr, dtype=np.float64)
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return np.zeros(a.shape, dtype=np.float32)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def pct(p: float | None, decimals: int = 0) -> str:
    """A probability as a percentage that never claims a certainty the model did not give.

    ``0.42`` → ``"42%"``; ``0.996`` → ``">99%"`` (``">99.9%"`` with one decimal); ``0.001`` →
    ``"<1%"``; exactly 1 or 0 print as ``"100%"`` / ``"0%"``; None or NaN → ``"n/a"``. A 99.6 %
    bar beside a "100 %" headline reads as a contradiction, and as a certainty.
    """
    if p is None or not math.isfinite(p):
        return "n/a"
    text = f"{100 * p:.{decimals}f}"
    step = 10.0**-decimals
    if p < 1 and float(text) >= 100:
        return f">{100 - step:.{decimals}f}%"
    if p > 0 and float(text) <= 0:
        return f"<{step:.{decimals}f}%"
    return f"{text}%"


def resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D array to ``shape`` (rows, cols), pixel centres mapped.

    One rule for masks read at an image's size and masks carried through preprocessing, so a mask
    lands on the same pixels whichever path brought it.
    """
    rows, cols = int(shape[0]), int(shape[1])
    if rows <= 0 or cols <= 0:
        raise ValueError(f"shape must be two positive integers, got {shape!r}")
    h, w = mask.shape
    if (h, w) == (rows, cols):
        return mask
    ri = np.minimum(((np.arange(rows) + 0.5) * h / rows).astype(np.intp), h - 1)
    ci = np.minimum(((np.arange(cols) + 0.5) * w / cols).astype(np.intp), w - 1)
    return mask[ri[:, None], ci[None, :]]
