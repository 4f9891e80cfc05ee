"""Peripheral blood smear phantoms: benign lymphocytes vs B-lymphoblasts (ALL), RGB.

The default offline data set for the ``leukemia`` kind. Classes, in order: ``Benign`` (normal
small lymphocytes / hematogones), ``Early`` (early pre-B), ``Pre`` (pre-B) and ``Pro`` (pro-B)
lymphoblasts. Each field is rendered (:func:`render_leukemia_case`) with the Beer-Lambert law from
stain density maps (eosin in red cells; haematoxylin/azure in nuclei and platelets; a pale
basophilic stain in lymphoid cytoplasm), which makes stain colour jitter physically plausible: it
changes the stains' absorption vectors and amounts, never the morphology.

Three independent random streams, as for the chest phantoms:

* **specimen** ("anatomy"): red-cell crowding and shapes, platelets, how many cells of interest
  (1-3) and where they lie, and a per-cell size offset, so one generator state gives the same
  field for every label;
* **lesion**: the morphology of the cells of interest, a monotone progression Benign -> Early ->
  Pre -> Pro in cell size, nuclear size and nuclear:cytoplasmic ratio, chromatin (dense and
  clumped -> paler and finely dispersed), nucleoli (none -> several, more prominent) and nuclear
  contour irregularity (round -> irregular, with clefts at the Pro stage). Adjacent stages
  overlap in every feature, so no single measurement separates them;
* **nuisance** (microscope and staining): stain hue/saturation, background white balance,
  illumination gain and vignetting, magnification, focus blur, camera noise and a burned-in
  scale-bar box.

The mask marks the nuclei of the cells of interest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from medlens.data.phantoms.chest import _ramp
from medlens.data.phantoms.liver import (
    _check_label_size,
    _image_grid,
    _streams,
    _to_uint8,
    write_phantom_set,
)

__all__ = [
    "LEUKEMIA_CLASSES",
    "SmearCase",
    "generate_leukemia_phantoms",
    "render_leukemia_case",
    "render_leukemia_phantom",
]

LEUKEMIA_CLASSES: tuple[str, ...] = ("Benign", "Early", "Pre", "Pro")

# Morphology per stage (index into LEUKEMIA_CLASSES); pairs are (mean, sd) of a normal draw.
# Sizes are in canonical units (the field is 2 wide; a red cell's radius is about 0.095).
# Adjacent stages still overlap in each feature, but by about a pixel of cell radius at 64 px
# (the leukemia recipe's size) rather than by more: with wider spreads the stages were not
# separable at that size by any model trained on a few hundred fields.
_CELL_RADIUS = ((0.11, 0.008), (0.145, 0.009), (0.175, 0.01), (0.205, 0.01))
_NC_RATIO = ((0.72, 0.025), (0.79, 0.022), (0.845, 0.02), (0.89, 0.018))  # nucleus / cell radius
_CHROMATIN = ((1.35, 0.08), (1.08, 0.07), (0.93, 0.07), (0.8, 0.06))  # nuclear stain density
_CLUMPING = (0.42, 0.26, 0.2, 0.16)  # chromatin texture amplitude
_GRAIN = (0.045, 0.028, 0.022, 0.018)  # chromatin texture feature size
_NUCLEOLI = ((0, 0), (0, 1), (1, 2), (1, 3))  # inclusive range of nucleoli
_IRREGULAR = ((0.012, 0.007), (0.04, 0.01), (0.07, 0.012), (0.1, 0.015))  # contour amplitude

# Optical densities (R, G, B) of unit stain amounts.
_OD_EOSIN = np.array([0.10, 0.36, 0.22], dtype=np.float32)
_OD_NUCLEUS = np.array([0.80, 1.35, 0.42], dtype=np.float32)
_OD_CYTO = np.array([0.26, 0.24, 0.07], dtype=np.float32)
_BACKGROUNDS = np.array(  # pinkish, yellowish, lavender slide backgrounds
    [[0.97, 0.91, 0.93], [0.97, 0.95, 0.86], [0.92, 0.91, 0.98]], dtype=np.float32
)


@dataclass
class SmearCase:
    """One rendered smear phantom.

    ``image``: float32 ``H x W x 3`` RGB in [0, 1]. ``mask``: bool nuclei of the cells of
    interest. ``cells``: bool whole cells of interest (nucleus and cytoplasm). ``meta``: drawn
    morphology and nuisance parameters.
    """

    image: np.ndarray
    mask: np.ndarray
    cells: np.ndarray
    label: str
    meta: dict[str, Any] = field(default_factory=dict)


def _patch(
    u: np.ndarray, v: np.ndarray, cx: float, cy: float, radius: float
) -> tuple[slice, slice]:
    """Pixel slices of the square around ``(cx, cy)`` with half-width ``radius`` (canonical)."""
    size = u.shape[0]
    half = 2.0 / size

    def span(c: float) -> slice:
        lo = int(np.floor((c - radius + 1.0) / half))
        hi = int(np.ceil((c + radius + 1.0) / half)) + 1
        return slice(max(lo, 0), min(hi, size))

    return span(cy), span(cx)


def _local_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Zero-mean, unit-std smooth field over a patch with ``cells`` features across it (the
    chromatin texture: few cells = coarse clumps, many = fine, dispersed chromatin)."""
    coarse = rng.standard_normal((max(cells, 2), max(cells, 2))).astype(np.float32)
    f = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return (f - f.mean()) / (f.std() + 1e-6)


def render_leukemia_case(rng: np.random.Generator, label: str, size: int) -> SmearCase:
    """Render one blood smear phantom with its nucleus mask (the pure core).

    Child seeds for specimen, lesion (morphology) and nuisance are drawn from ``rng`` first, so
    the same ``rng`` state gives the same field, cell positions and acquisition for every label.
    """
    size = _check_label_size(label, size, LEUKEMIA_CLASSES, minimum=32)
    stage = LEUKEMIA_CLASSES.index(label)
    a, les, nu = _streams(rng)
    u, v = _image_grid(size)
    px = 2.0 / size

    # ---- microscope and stain (nuisance) ---------------------------------------------------
    mag = nu.uniform(0.92, 1.08)
    hue = np.exp(nu.normal(0.0, 0.12, size=(3, 3))).astype(np.float32)  # per stain and channel
    amount = np.exp(nu.normal(0.0, 0.18, size=3)).astype(np.float32)  # saturation per stain
    bg = _BACKGROUNDS[int(nu.integers(0, 3))] * np.exp(nu.normal(0.0, 0.015, size=3))
    gain = float(np.exp(nu.normal(0.0, 0.06)))
    vignette = nu.uniform(0.0, 0.3)
    vig_c = nu.uniform(-0.3, 0.3, size=2)
    blur = nu.uniform(0.2, 1.0) * size / 128.0
    noise = nu.uniform(0.004, 0.02)
    scale_bar = nu.random() < 0.6

    # ---- specimen ("anatomy") -------------------------------------------------------------
    eosin = np.zeros((size, size), dtype=np.float32)
    nuclear = np.zeros((size, size), dtype=np.float32)
    rbc_r = a.uniform(0.085, 0.105) * mag
    n_rbc = int(a.integers(35, 110))
    # Rejection sampling (crowding without heavy stacking; 15 % may overlap anyway).
    candidates = a.uniform(-1.1, 1.1, size=(n_rbc * 6, 2))
    may_overlap = a.random(n_rbc * 6) < 0.15
    placed = np.empty((n_rbc, 2))
    count = 0
    for c, overlap_ok in zip(candidates, may_overlap, strict=True):
        if count >= n_rbc:
            break
        if (
            overlap_ok
            or count == 0
            or (((placed[:count] - c) ** 2).sum(1) > (1.7 * rbc_r) ** 2).all()
        ):
            placed[count] = c
            count += 1
    centres = [(float(cx), float(cy)) for cx, cy in placed[:count]]
    for cx, cy in centres:
        r = rbc_r * a.uniform(0.88, 1.12)
        ecc, rot = a.uniform(1.0, 1.15), a.uniform(0.0, np.pi)
        pallor = a.uniform(0.35, 0.75)
        sy, sx = _patch(u, v, cx, cy, 1.3 * r)
        du, dv = u[sy, sx] - cx, v[sy, sx] - cy
        cr, sr = np.cos(rot), np.sin(rot)
        rho = np.hypot((du * cr + dv * sr) * ecc, (-du * sr + dv * cr)) / r
        disc = _ramp(1.0 - rho, 0.12) * (1.0 - pallor * np.exp(-((rho / 0.5) ** 2)))
        eosin[sy, sx] += disc * np.float32(a.uniform(0.85, 1.15))
    for _ in range(int(a.integers(0, 7))):  # platelets: small purple granular dots
        cx, cy, r = a.uniform(-1, 1), a.uniform(-1, 1), a.uniform(0.012, 0.025) * mag
        sy, sx = _patch(u, v, cx, cy, 2.0 * r)
        rho = np.hypot(u[sy, sx] - cx, v[sy, sx] - cy) / max(r, px)
        nuclear[sy, sx] += 0.6 * np.exp(-(rho**2))
    n_cells = int(a.integers(1, 4))
    cells: list[tuple[float, float, float]] = []  # centre and size offset (in sds)
    for _ in range(200):
        if len(cells) >= n_cells:
            break
        c = (a.uniform(-0.6, 0.6), a.uniform(-0.6, 0.6))
        if all(np.hypot(c[0] - q[0], c[1] - q[1]) > 0.55 for q in cells):
            cells.append((c[0], c[1], float(np.clip(a.normal(), -2.0, 2.0))))

    # ---- cells of interest (lesion stream: morphology) ------------------------------------
    cyto = np.zeros((size, size), dtype=np.float32)
    cover = np.zeros((size, size), dtype=np.float32)
    nucleus_soft = np.zeros((size, size), dtype=np.float32)
    morph = []
    for cx, cy, z in cells:
        rc = (_CELL_RADIUS[stage][0] + z * _CELL_RADIUS[stage][1]) * mag
        ratio = float(np.clip(les.normal(*_NC_RATIO[stage]), 0.62, 0.95))
        rn = rc * ratio
        density = les.normal(*_CHROMATIN[stage])
        lo, hi = _NUCLEOLI[stage]
        n_nucleoli = int(les.integers(lo, hi + 1))
        irr = max(0.0, les.normal(*_IRREGULAR[stage]))
        harmonics = les.uniform(0.3, 1.0, size=5) * irr
        phases = les.uniform(0.0, 2.0 * np.pi, size=5)
        cleft = stage == 3 and les.random() < 0.5
        cleft_ang = les.uniform(0.0, 2.0 * np.pi)
        off_r, off_a = les.uniform(0.0, 0.8) * (rc - rn), les.uniform(0.0, 2.0 * np.pi)
        ncx, ncy = cx + off_r * np.cos(off_a), cy + off_r * np.sin(off_a)
        morph.append(
            {
                "cell_radius": float(rc),
                "nc_ratio": ratio,
                "nucleoli": n_nucleoli,
                "irregularity": float(irr),
            }
        )

        sy, sx = _patch(u, v, cx, cy, 1.25 * rc)
        du, dv = u[sy, sx] - cx, v[sy, sx] - cy
        cell_rho = np.hypot(du, dv) / rc
        body = _ramp(1.0 - cell_rho, 0.1)
        cover[sy, sx] = np.maximum(cover[sy, sx], body)
        cyto[sy, sx] += body * np.float32(les.uniform(0.7, 1.0))

        nu_, nv_ = u[sy, sx] - ncx, v[sy, sx] - ncy
        theta = np.arctan2(nv_, nu_)
        radius = np.ones_like(theta)
        for k in range(5):
            radius = radius + harmonics[k] * np.cos((k + 2) * theta + phases[k])
        if cleft:  # notch: a narrow indentation of the nuclear contour
            dtheta = np.angle(np.exp(1j * (theta - cleft_ang)))
            radius = radius - 0.3 * np.exp(-((dtheta / 0.25) ** 2))
        rho = np.hypot(nu_, nv_) / (rn * radius)
        inside = _ramp(1.0 - rho, 0.08)
        grain_cells = round(2.5 * rn / _GRAIN[stage]) + 1
        tex = _local_noise(les, inside.shape, grain_cells)
        chromatin = np.clip(1.0 + _CLUMPING[stage] * tex, 0.2, None)
        for _ in range(n_nucleoli):
            ang_n, rad_n = les.uniform(0.0, 2.0 * np.pi), les.uniform(0.0, 0.55) * rn
            size_n = les.uniform(0.10, 0.16) * rn
            d = np.hypot(nu_ - rad_n * np.cos(ang_n), nv_ - rad_n * np.sin(ang_n))
            chromatin = chromatin * (1.0 - 0.6 * np.exp(-((d / size_n) ** 2)))
        nuclear[sy, sx] += np.float32(density) * inside * chromatin
        nucleus_soft[sy, sx] = np.maximum(nucleus_soft[sy, sx], inside)

    # The cells of interest lie on top: red cells beneath them do not show.
    eosin = eosin * (1.0 - 0.95 * cover)
    cyto = cyto * (1.0 - nucleus_soft)

    # ---- optics (nuisance) ------------------------------------------------------------------
    od = (
        eosin[..., None] * (_OD_EOSIN * hue[0] * amount[0])
        + nuclear[..., None] * (_OD_NUCLEUS * hue[1] * amount[1])
        + cyto[..., None] * (_OD_CYTO * hue[2] * amount[2])
    )
    img = bg[None, None, :].astype(np.float32) * np.exp(-od)
    r2 = (u - np.float32(vig_c[0])) ** 2 + (v - np.float32(vig_c[1])) ** 2
    img = img * (gain * (1.0 - vignette * r2 / 2.0))[..., None]
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigmaX=blur)
    img = img + noise * nu.standard_normal(img.shape).astype(np.float32)
    img = np.clip(img, 0.0, 1.0)
    if scale_bar:  # white label box with a dark bar in the bottom-right corner, as on the scope
        w, h = max(6, size // 9), max(3, size // 24)
        x0, y0 = size - w - max(1, size // 64), size - h - max(1, size // 64)
        img[y0 : y0 + h, x0 : x0 + w] = 0.97
        bar_y = y0 + h // 2
        img[bar_y, x0 + 1 : x0 + w - 1] = (0.1, 0.1, 0.1) if size >= 64 else 0.5
    mask = nucleus_soft > 0.5
    return SmearCase(
        image=img.astype(np.float32),
        mask=mask,
        cells=cover > 0.5,
        label=label,
        meta={
            "cells": morph,
            "red_cells": len(centres),
            "magnification": float(mag),
            "vignette": float(vignette),
            "blur": float(blur),
            "scale_bar": bool(scale_bar),
        },
    )


def render_leukemia_phantom(
    rng: np.random.Generator, label: str, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Image (float32 ``H x W x 3`` RGB in [0, 1]) and nucleus mask (bool) of one phantom."""
    case = render_leukemia_case(rng, label, size)
    return case.image, case.mask


def _leukemia_row(
    rng: np.random.Generator, label: str, size: int
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    image, mask = render_leukemia_phantom(rng, label, size)
    return {"path": _to_uint8(image), "mask_path": mask.astype(np.uint8) * 255}, {}


def generate_leukemia_phantoms(out_dir: Path, n: int = 600, size: int = 128, seed: int = 0) -> Path:
    """Write ``n`` blood smear phantoms under ``out_dir``; returns ``manifest.csv``.

    Layout: ``images/smear_00000.png`` (8-bit RGB), ``masks/smear_00000.png`` (nuclei of the cells
    of interest, 255) and ``manifest.csv`` with ``path,label,patient_id,mask_path``. Needs
    ``size >= 32`` (cells must span a few pixels). See
    :func:`~medlens.data.phantoms.liver.write_phantom_set` for determinism.
    """
    return write_phantom_set(
        out_dir,
        n=n,
        size=size,
        seed=seed,
        classes=LEUKEMIA_CLASSES,
        prefix="smear",
        render=_leukemia_row,
        folders={"path": "images", "mask_path": "masks"},
        min_size=32,
    )
