"""Chest X-ray phantoms: normal / pneumonia / tuberculosis, with lesion masks.

The default offline data set for the ``chest_xray`` recipe. Each image is rendered procedurally
(:func:`render_chest_case`) from three independent random streams drawn from the caller's
generator:

* **anatomy** (body silhouette, lungs, ribs, clavicles, mediastinum/spine, heart, diaphragm,
  lung markings): patient-to-patient variation;
* **lesion** (only used for pneumonia / tuberculosis): where the disease is, its shape and its
  contrast, from subtle to obvious;
* **nuisance** (exposure gain/gamma, pose, blur, noise, a burned-in "L"/"R" marker, black
  borders): acquisition variation.

Because the nuisance stream never sees the label, exposure, borders, markers and noise are
statistically independent of the class (no shortcut), and because the streams are separate, the
same generator state rendered as ``normal`` and as ``pneumonia`` gives the *same* patient and
acquisition with and without the lesion, which the tests use to show that the class signal lives
inside the lesion mask.

Geometry is defined in normalised coordinates ``x, y`` in [-1, 1] (``x`` to the image's right,
which is the patient's left on a PA film, ``y`` downwards), so the anatomy looks the same at any
``size``; pose jitter is applied by transforming the sampling grid, so image, mask and lung map
stay pixel-aligned without resampling.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from medlens.errors import DataError

__all__ = [
    "CHEST_CLASSES",
    "ChestCase",
    "generate_chest_phantoms",
    "render_chest_case",
    "render_chest_phantom",
]

CHEST_CLASSES: tuple[str, ...] = ("normal", "pneumonia", "tuberculosis")

# Lesion mask: where the lesion's opacity (0..1, before its contrast is applied) exceeds this.
MASK_LEVEL = 0.2
_FILE_RE = re.compile(r"^cxr_\d{5,}\.png$")


@dataclass
class ChestCase:
    """One rendered phantom with its ground truth.

    ``image``: float32 ``H x W`` in [0, 1] (bright = dense, as on a film). ``mask``: bool lesion
    mask (all False for ``normal``). ``lungs``: uint8 map, 1 = lung on the image's left (patient's
    right), 2 = lung on the image's right, 0 elsewhere. ``meta``: the drawn nuisance and lesion
    parameters (for inspection; not written to the manifest).
    """

    image: np.ndarray
    mask: np.ndarray
    lungs: np.ndarray
    label: str
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Small field helpers (all on the normalised grid)
# --------------------------------------------------------------------------------------------


def _ramp(v: np.ndarray | float, width: float) -> np.ndarray:
    """0 for v <= 0, 1 for v >= width, linear in between: a soft inside-indicator."""
    return np.clip(np.asarray(v, dtype=np.float32) / np.float32(width), 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-std smooth random field with about ``cells`` features across the image."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    field_ = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return (field_ - field_.mean()) / (field_.std() + 1e-6)


def _segment_dist(
    x: np.ndarray, y: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]
) -> np.ndarray:
    """Distance from every grid point to the segment ``p0``-``p1``."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    length2 = dx * dx + dy * dy + 1e-12
    t = np.clip(((x - p0[0]) * dx + (y - p0[1]) * dy) / length2, 0.0, 1.0)
    return np.hypot(x - (p0[0] + t * dx), y - (p0[1] + t * dy))


def _blob(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float, angle: float
) -> np.ndarray:
    """Anisotropic Gaussian bump (peak 1) rotated by ``angle`` radians."""
    c, s = float(np.cos(angle)), float(np.sin(angle))
    u = ((x - cx) * c + (y - cy) * s) / sx
    v = (-(x - cx) * s + (y - cy) * c) / sy
    return np.exp(-0.5 * (u * u + v * v))


# --------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------


_SHIFT = 4  # fractional bits for cv2 drawing coordinates (sub-pixel accuracy)


class _Frame:
    """The sampling grid: canonical coordinates of every pixel under a pose (rotation, scale,
    shift), and the inverse map (canonical point -> pixel) for drawing with OpenCV."""

    def __init__(self, size: int, theta: float, scale: float, shift: tuple[float, float]) -> None:
        self.size, self.theta, self.scale, self.shift = size, theta, scale, shift
        self._c, self._s = float(np.cos(theta)), float(np.sin(theta))
        coords = (np.arange(size, dtype=np.float32) + 0.5) * np.float32(2.0 / size) - 1.0
        gx, gy = np.meshgrid(coords, coords)
        gx = (gx - np.float32(shift[0])) / np.float32(scale)
        gy = (gy - np.float32(shift[1])) / np.float32(scale)
        self.x = (self._c * gx + self._s * gy).astype(np.float32)
        self.y = (-self._s * gx + self._c * gy).astype(np.float32)

    def to_px(self, x: float, y: float) -> tuple[int, int]:
        """Pixel position of canonical point ``(x, y)``, scaled by ``2**_SHIFT`` for cv2."""
        gx = self._c * x - self._s * y
        gy = self._s * x + self._c * y
        col = (gx * self.scale + self.shift[0] + 1.0) * self.size / 2.0 - 0.5
        row = (gy * self.scale + self.shift[1] + 1.0) * self.size / 2.0 - 0.5
        return round(col * (1 << _SHIFT)), round(row * (1 << _SHIFT))


@dataclass(frozen=True)
class _Lung:
    side: int  # -1: image left (patient's right), +1: image right
    cx: float
    cy: float
    rx: float
    ry: float
    base: float  # y of the diaphragm dome's top
    dome: float  # dome height

    @property
    def apex(self) -> float:
        return self.cy - self.ry

    @property
    def height(self) -> float:
        return self.base + self.dome * 0.5 - self.apex

    def soft(self, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
        """Soft lung indicator (1 inside, ramps to 0 over the edge)."""
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y, dtype=np.float32)
        t = np.clip((y - self.apex) / (2.0 * self.ry), 0.0, 1.0)
        rx = self.rx * (0.5 + 0.65 * np.sqrt(t))  # narrow apex, broad base
        f = ((x - self.cx) / rx) ** 2 + ((y - self.cy) / self.ry) ** 2
        inside = _ramp(1.0 - f, 0.12)
        # Diaphragm dome: highest mid-lung, deep costophrenic angle laterally.
        dome_y = self.base - self.dome * (1.0 - ((x - self.cx) / (1.15 * self.rx)) ** 2)
        inside = inside * _ramp(dome_y - y, 0.035)
        # Medial edge at the mediastinum.
        return inside * _ramp(self.side * x - 0.075, 0.035)


def _draw_lungs(a: np.random.Generator) -> tuple[_Lung, _Lung]:
    lungs = []
    cy = a.uniform(0.02, 0.08)
    base = a.uniform(0.44, 0.52)
    for side in (-1, 1):
        lungs.append(
            _Lung(
                side=side,
                cx=side * (0.40 + a.uniform(-0.025, 0.025)),
                cy=cy + a.uniform(-0.02, 0.02),
                rx=a.uniform(0.25, 0.29),
                ry=a.uniform(0.70, 0.76),
                # The patient's right hemidiaphragm (image left) sits higher (liver).
                base=base + (0.0 if side < 0 else a.uniform(0.03, 0.07)),
                dome=a.uniform(0.10, 0.16),
            )
        )
    return lungs[0], lungs[1]


def _render_anatomy(
    a: np.random.Generator, frame: _Frame, lungs: tuple[_Lung, _Lung]
) -> tuple[np.ndarray, np.ndarray]:
    """Normal chest intensity (float32, roughly [0, 1]) and the combined soft lung field."""
    x, y, size = frame.x, frame.y, frame.size
    ax = np.abs(x)
    # Body: chest wall sides, sloping shoulders, neck; open at the bottom (abdomen continues).
    bw = a.uniform(0.84, 0.92)
    side_wall = bw * (1.0 - 0.12 * ((y - 0.35) / 1.2) ** 2)  # barrel: widest at the lower ribs
    shoulder_y = a.uniform(-0.86, -0.78) + 0.22 * np.clip((ax - 0.2) / 0.75, 0.0, None) ** 2
    chest = _ramp(side_wall - ax, 0.06) * _ramp(y - shoulder_y, 0.08)
    neck = _ramp(0.2 - ax, 0.04)
    body = np.maximum(chest, neck)
    img = 0.12 + body * (0.31 + 0.10 * (1.0 - x * x))
    # Abdomen under the diaphragm is denser.
    img = img + 0.07 * body * _ramp(y - 0.30, 0.30)

    # Lungs: air is dark; markings (vessels, hila) and parenchymal texture.
    lung = np.maximum(lungs[0].soft(x, y), lungs[1].soft(x, y))
    tex = 0.6 * _smooth_noise(a, size, 10) + 0.4 * _smooth_noise(a, size, 24)
    depth = a.uniform(0.28, 0.34)
    img = img - lung * depth * (1.0 + 0.07 * tex)
    # Vessels fan out from each hilum, fading with distance: drawn as lines in pixel space
    # (cheap) and softened by a blur of about the vessel width.
    hila = []
    canvas = np.zeros((size, size), dtype=np.float32)
    thickness = max(1, round(0.01 * size))
    for lg in lungs:
        hx, hy = lg.side * 0.2, a.uniform(-0.08, 0.02)
        hila.append((hx, hy))
        for _ in range(int(a.integers(7, 11))):
            ang = a.uniform(-2.4, 1.0) if lg.side > 0 else a.uniform(np.pi - 1.0, np.pi + 2.4)
            length = a.uniform(0.25, 0.55)
            p1 = (hx + length * float(np.cos(ang)), hy + length * float(np.sin(ang)))
            cv2.line(
                canvas, frame.to_px(hx, hy), frame.to_px(*p1), 1.0, thickness, cv2.LINE_AA, _SHIFT
            )
    canvas = cv2.GaussianBlur(canvas, (0, 0), sigmaX=max(0.5, 0.006 * size))
    vessels = np.zeros_like(x)
    for hx, hy in hila:
        r2 = (x - hx) ** 2 + (y - hy) ** 2
        vessels += 0.06 * np.exp(-r2 / 0.015) + 0.05 * canvas * np.exp(-np.sqrt(r2) / 0.35)
    img = img + lung * vessels

    # Posterior ribs: arched bands, periodic in an arch-corrected vertical coordinate.
    ribs = np.zeros_like(x)
    for side in (-1, 1):
        d = side * x
        spacing = a.uniform(0.105, 0.12)
        start = a.uniform(-0.98, -0.90)
        u = y - 0.8 * (d - 0.45) ** 2 + 0.1 * d
        phase = (u - start) / spacing
        phase = phase + 0.03 * phase**2  # lower ribs slightly further apart
        band = (1.0 + np.cos(2.0 * np.pi * phase)) * 0.5
        band = band * band
        band = band * band * band  # ** 6: narrow bright bands
        keep = _ramp(phase + 0.5, 0.3) * _ramp(10.5 - phase, 0.3)
        keep = keep * _ramp(d - 0.06, 0.05) * _ramp(0.93 - d, 0.06)
        ribs += band * keep
    img = img + a.uniform(0.05, 0.08) * ribs * body

    # Clavicles: bright bars from the sternal notch rising laterally.
    clav = np.zeros_like(x)
    cy0 = a.uniform(-0.66, -0.58)
    for side in (-1, 1):
        p0 = (side * 0.07, cy0)
        p1 = (side * a.uniform(0.55, 0.65), cy0 - a.uniform(0.06, 0.14))
        clav = np.maximum(clav, np.exp(-((_segment_dist(x, y, p0, p1) / 0.03) ** 2)))
    img = img + 0.12 * clav

    # Mediastinum (aortic knob bulging to the image right), faint spine, dark trachea.
    knob = 0.05 * np.exp(-(((y + 0.30) / 0.09) ** 2))
    med = _ramp(0.10 + knob - np.abs(x - 0.6 * knob - 0.01), 0.04)
    img = img + 0.14 * med * body
    spine = _ramp(0.055 - ax, 0.015)
    img = img + spine * (0.03 + 0.02 * np.cos(2.0 * np.pi * (y - a.uniform(0, 0.13)) / 0.13))
    trachea_x = a.uniform(-0.02, 0.02)
    trachea = _ramp(0.032 - np.abs(x - trachea_x), 0.015) * _ramp(-0.22 - y, 0.06)
    img = img - 0.10 * trachea

    # Heart: lower middle, extending to the image right (patient's left); covers the lung.
    hc = (a.uniform(0.12, 0.18), a.uniform(0.17, 0.24))
    hr = (a.uniform(0.34, 0.40), a.uniform(0.22, 0.27))
    ang = a.uniform(-0.45, -0.2)
    c, s = float(np.cos(ang)), float(np.sin(ang))
    u = ((x - hc[0]) * c + (y - hc[1]) * s) / hr[0]
    v = (-(x - hc[0]) * s + (y - hc[1]) * c) / hr[1]
    heart = _ramp(1.0 - (u * u + v * v), 0.12)
    level = a.uniform(0.60, 0.66)
    img = img + 0.9 * heart * np.maximum(level - img, 0.0)
    return img.astype(np.float32), lung.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Lesions
# --------------------------------------------------------------------------------------------


def _sample_in_lung(
    rng: np.random.Generator,
    lung: _Lung,
    zone: tuple[float, float],
    min_soft: float = 0.9,
    lateral: tuple[float, float] = (-0.9, 0.9),
) -> tuple[float, float]:
    """A point inside ``lung`` whose relative height (0 apex, 1 base) lies within ``zone``.

    ``lateral`` bounds the offset from the lung's centre line in lung half-widths (positive =
    towards the chest wall).
    """
    for _ in range(200):
        py = lung.apex + lung.height * rng.uniform(*zone)
        px = lung.cx + lung.side * rng.uniform(*lateral) * lung.rx
        if float(lung.soft(px, py)) >= min_soft:
            return px, py
    return lung.cx, lung.apex + lung.height * 0.5 * (zone[0] + zone[1])


def _pneumonia(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, lungs: tuple[_Lung, _Lung], px: float
) -> tuple[np.ndarray, dict[str, Any]]:
    """Unilateral mid/lower-zone consolidation: soft-edged, patchy, maybe air bronchograms."""
    side = int(rng.choice([-1, 1]))
    lung = lungs[0] if side < 0 else lungs[1]
    # Mostly lateral to the heart shadow, where a consolidation is seen against aerated lung (the
    # heart covers the lower medial part of the image-right lung, so that side starts higher).
    zone, lateral = ((0.47, 0.78), (0.2, 0.8)) if side < 0 else ((0.40, 0.62), (0.45, 0.85))
    c0 = _sample_in_lung(rng, lung, zone, min_soft=0.95, lateral=lateral)
    op = np.zeros_like(x)
    n_blobs = int(rng.integers(3, 7))
    for i in range(n_blobs):
        cx = c0[0] + (0.0 if i == 0 else rng.normal(0, 0.09))
        cy = c0[1] + (0.0 if i == 0 else abs(rng.normal(0, 0.07)))  # spread downwards
        sx, sy = rng.uniform(0.11, 0.20), rng.uniform(0.09, 0.17)
        op += rng.uniform(0.5, 1.0) * _blob(
            x, y, cx, cy, max(sx, 2 * px), max(sy, 2 * px), rng.uniform(0, np.pi)
        )
    op /= op.max() + 1e-6
    op = np.clip((op - 0.12) / 0.5, 0.0, 1.0)
    op = op * op * (3.0 - 2.0 * op)  # smoothstep: plateau with soft edges
    # Patchy, fluffy airspace filling (texture of a few pixels at 128 px), unlike the smooth
    # soft-tissue shadows (heart, diaphragm) it could otherwise be mistaken for.
    patch = 0.5 * _smooth_noise(rng, x.shape[0], 8) + 0.5 * _smooth_noise(rng, x.shape[0], 30)
    op = op * np.clip(0.8 + 0.35 * patch, 0.3, 1.0)
    bronchograms = bool(rng.random() < 0.6)
    if bronchograms:
        hx, hy = side * 0.19, -0.02
        air = np.zeros_like(x)
        for _ in range(int(rng.integers(1, 4))):
            end = (c0[0] + rng.normal(0, 0.06), c0[1] + rng.normal(0.05, 0.05))
            d = _segment_dist(x, y, (hx, hy), end)
            air = np.maximum(air, np.exp(-((d / max(0.011, px)) ** 2)))
        op = op * (1.0 - 0.55 * air)
    op = op * lung.soft(x, y)
    return op.astype(np.float32), {
        "side": "image_left" if side < 0 else "image_right",
        "blobs": n_blobs,
        "air_bronchograms": bronchograms,
    }


def _tuberculosis(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, lungs: tuple[_Lung, _Lung], px: float
) -> tuple[np.ndarray, dict[str, Any]]:
    """Bilateral upper-zone disease: nodules, cavities (bright ring, dark centre), fibrosis."""
    op = np.zeros_like(x)
    meta: dict[str, Any] = {"nodules": 0, "cavities": 0, "streaks": 0}
    for lung in lungs:
        side_op = np.zeros_like(x)
        # A hazy infiltrate that the nodules sit in, most of the time.
        if rng.random() < 0.75:
            cx, cy = _sample_in_lung(rng, lung, (0.12, 0.35))
            side_op += rng.uniform(0.3, 0.55) * _blob(
                x,
                y,
                cx,
                cy,
                rng.uniform(0.07, 0.12),
                rng.uniform(0.06, 0.10),
                rng.uniform(0, np.pi),
            )
        n_nod = int(rng.integers(3, 8))
        meta["nodules"] += n_nod
        for _ in range(n_nod):
            cx, cy = _sample_in_lung(rng, lung, (0.08, 0.40))
            sigma = max(rng.uniform(0.018, 0.038), 1.2 * px)
            side_op = np.maximum(
                side_op, rng.uniform(0.7, 1.0) * _blob(x, y, cx, cy, sigma, sigma, 0.0)
            )
        if rng.random() < 0.5:
            meta["cavities"] += 1
            cx, cy = _sample_in_lung(rng, lung, (0.12, 0.38))
            r = rng.uniform(0.035, 0.06)
            w = max(rng.uniform(0.010, 0.016), 0.8 * px)
            rho = np.hypot(x - cx, y - cy)
            ring = np.exp(-(((rho - r) / w) ** 2))
            halo = 0.3 * np.exp(-((rho / (1.8 * r)) ** 2))
            side_op = np.maximum(side_op, ring + halo)
            side_op = side_op * (1.0 - 0.85 * np.exp(-((rho / (0.65 * r)) ** 2)))  # air centre
        if rng.random() < 0.5:
            for _ in range(int(rng.integers(1, 4))):
                meta["streaks"] += 1
                p0 = _sample_in_lung(rng, lung, (0.06, 0.30))
                p1 = (lung.side * 0.2 + rng.normal(0, 0.04), rng.uniform(-0.2, -0.05))
                p1 = (p0[0] + 0.6 * (p1[0] - p0[0]), p0[1] + 0.6 * (p1[1] - p0[1]))
                d = _segment_dist(x, y, p0, p1)
                side_op = np.maximum(side_op, 0.5 * np.exp(-((d / max(0.009, 0.7 * px)) ** 2)))
        op = np.maximum(op, np.clip(side_op, 0.0, 1.0) * lung.soft(x, y))
    return op.astype(np.float32), meta


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def render_chest_case(rng: np.random.Generator, label: str, size: int) -> ChestCase:
    """Render one chest phantom with its lesion mask and lung map (the pure core).

    Three child seeds are drawn from ``rng`` first (anatomy, lesion, nuisance), so the label only
    changes the lesion: the same ``rng`` state gives the same patient and acquisition for every
    label.
    """
    if label not in CHEST_CLASSES:
        raise DataError(f"label: {label!r} is not one of {list(CHEST_CLASSES)}")
    if int(size) < 16:
        raise DataError(f"size: phantoms need at least 16 pixels, got {size}")
    size = int(size)
    seeds = rng.integers(0, 2**63 - 1, size=3)
    a, les, nu = (np.random.default_rng(int(s)) for s in seeds)

    # Pose (nuisance): rotation, scale, shift, applied to the sampling grid.
    frame = _Frame(
        size=size,
        theta=float(np.deg2rad(nu.uniform(-5.0, 5.0))),
        scale=float(nu.uniform(0.93, 1.07)),
        shift=(float(nu.uniform(-0.04, 0.04)), float(nu.uniform(-0.04, 0.04))),
    )
    x, y = frame.x, frame.y
    px = 2.0 / (size * frame.scale)  # one pixel in normalised units

    lungs = _draw_lungs(a)
    img, _ = _render_anatomy(a, frame, lungs)
    lung_map = np.zeros((size, size), dtype=np.uint8)
    lung_map[lungs[0].soft(x, y) > 0.5] = 1
    lung_map[lungs[1].soft(x, y) > 0.5] = 2

    meta: dict[str, Any] = {}
    mask = np.zeros((size, size), dtype=bool)
    if label != "normal":
        lesion_fn = _pneumonia if label == "pneumonia" else _tuberculosis
        op, meta["lesion"] = lesion_fn(les, x, y, lungs, px)
        # Contrast: mostly clearly visible, some subtle.
        contrast = les.uniform(0.12, 0.18) if les.random() < 0.12 else les.uniform(0.18, 0.38)
        contrast *= 1.15 if label == "pneumonia" else 1.2  # relative to aerated lung
        meta["lesion"]["contrast"] = float(contrast)
        img = img + np.float32(contrast) * op
        mask = op > MASK_LEVEL
    img = np.clip(img, 0.0, 1.0)

    # Exposure (nuisance): gamma, gain, offset.
    gamma = float(np.exp(nu.normal(0.0, 0.18)))
    gain = float(np.exp(nu.normal(0.0, 0.17)))
    offset = float(nu.normal(0.0, 0.03))
    img = np.clip(offset + gain * np.power(img, gamma), 0.0, 1.0)
    # Detector blur and noise (Gaussian + signal-dependent quantum noise).
    blur = nu.uniform(0.3, 0.9) * size / 128.0
    img = cv2.GaussianBlur(img, (0, 0), sigmaX=blur)
    sigma = nu.uniform(0.006, 0.02)
    quantum = nu.uniform(0.01, 0.035)
    noise = nu.standard_normal((size, size)).astype(np.float32)
    img = np.clip(img + noise * np.sqrt(sigma**2 + quantum**2 * img), 0.0, 1.0).astype(np.float32)

    # Black borders on random sides (scanner frame / letterbox), 1-12 % of the width.
    borders = [round(nu.uniform(0.01, 0.12) * size) if nu.random() < 0.3 else 0 for _ in range(4)]
    top, bottom, left, right = borders

    # Burned-in side marker in a random corner, inside the exposed field.
    letter = "L" if nu.random() < 0.5 else "R"
    corner = int(nu.integers(0, 4))  # 0 TL, 1 TR, 2 BL, 3 BR
    font_scale = 0.42 * size / 128.0
    thick = max(1, round(size / 128.0))
    (tw, th), _ = cv2.getTextSize(letter, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thick)
    inset = max(2, round(0.04 * size))
    tx = left + inset if corner in (0, 2) else size - right - inset - tw
    ty = top + inset + th if corner in (0, 1) else size - bottom - inset
    stamp = np.zeros((size, size), dtype=np.uint8)  # putText draws on 8-bit images only
    cv2.putText(
        stamp,
        letter,
        (int(tx), int(ty)),
        cv2.FONT_HERSHEY_SIMPLEX,
        font_scale,
        255,
        thick,
        cv2.LINE_AA,
    )
    alpha = stamp.astype(np.float32) / 255.0
    img = img * (1.0 - alpha) + alpha * np.float32(nu.uniform(0.85, 1.0))

    for arr in (img, mask):
        arr[:top] = 0
        arr[size - bottom :] = 0
        arr[:, :left] = 0
        arr[:, size - right :] = 0

    meta.update(
        rotation_deg=float(np.rad2deg(frame.theta)),
        scale=frame.scale,
        shift=list(frame.shift),
        gamma=gamma,
        gain=gain,
        offset=offset,
        blur=float(blur),
        noise_sigma=float(sigma),
        quantum=float(quantum),
        borders={"top": top, "bottom": bottom, "left": left, "right": right},
        marker=letter,
        marker_corner=["top-left", "top-right", "bottom-left", "bottom-right"][corner],
    )
    return ChestCase(image=img, mask=mask, lungs=lung_map, label=label, meta=meta)


def render_chest_phantom(
    rng: np.random.Generator, label: str, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Image (float32 ``H x W`` in [0, 1]) and lesion mask (bool) of one phantom."""
    case = render_chest_case(rng, label, size)
    return case.image, case.mask


# --------------------------------------------------------------------------------------------
# Data set on disk
# --------------------------------------------------------------------------------------------


def _write_png(path: Path, arr: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", arr)
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 grey
        raise DataError(f"{path}: PNG encoding failed")
    path.write_bytes(buf.tobytes())


def _labels(n: int, seed: int) -> list[str]:
    """Balanced labels (n // 3 each, remainder to normal) in a seed-determined order."""
    k = n // 3
    labels = ["normal"] * (n - 2 * k) + ["pneumonia"] * k + ["tuberculosis"] * k
    order = np.random.default_rng([seed, 0]).permutation(n)
    return [labels[i] for i in order]


def generate_chest_phantoms(out_dir: Path, n: int = 600, size: int = 128, seed: int = 0) -> Path:
    """Write ``n`` chest phantoms under ``out_dir`` and return the path of ``manifest.csv``.

    Layout: ``images/cxr_00000.png`` (8-bit grey), ``masks/cxr_00000.png`` (lesion 255, else 0)
    and ``manifest.csv`` (``path,label,patient_id,mask_path``, paths relative to ``out_dir``, one
    patient per image). Image ``i`` is rendered from its own generator seeded by ``(seed, i)``, so
    the output is byte-identical for a given seed and any subset can be rendered in parallel.
    Re-running over the same folder overwrites it, removing phantom files a larger earlier run
    left behind; the manifest is written last (atomically), so it only exists for a complete set.
    """
    if int(n) < 3:
        raise DataError(f"n: need at least 3 phantoms (one per class), got {n}")
    if int(size) < 16:
        raise DataError(f"size: phantoms need at least 16 pixels, got {size}")
    if int(seed) < 0:
        raise DataError(f"seed: must be a non-negative integer, got {seed}")
    n, size, seed = int(n), int(size), int(seed)
    out_dir = Path(out_dir)
    img_dir, mask_dir = out_dir / "images", out_dir / "masks"
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "manifest.csv"
    if manifest.exists():
        manifest.unlink()

    rows = []
    written = set()
    for i, label in enumerate(_labels(n, seed)):
        image, mask = render_chest_phantom(np.random.default_rng([seed, 1, i]), label, size)
        name = f"cxr_{i:05d}.png"
        written.add(name)
        _write_png(img_dir / name, np.rint(image * 255.0).astype(np.uint8))
        _write_png(mask_dir / name, mask.astype(np.uint8) * 255)
        rows.append((f"images/{name}", label, f"P{i:05d}", f"masks/{name}"))

    for folder in (img_dir, mask_dir):
        for stale in folder.iterdir():
            if _FILE_RE.match(stale.name) and stale.name not in written:
                stale.unlink()

    tmp = manifest.with_name(f".manifest.{os.getpid()}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "label", "patient_id", "mask_path"])
        writer.writerows(rows)
    os.replace(tmp, manifest)
    return manifest
