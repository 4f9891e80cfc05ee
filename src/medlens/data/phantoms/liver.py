"""Liver ultrasound phantoms: fibrosis stage F0-F4, with fibrous-septa masks.

The default offline data set for the ``liver_fibrosis`` kind. Each B-mode image is rendered
procedurally (:func:`render_liver_case`) from three independent random streams, as for the chest
phantoms:

* **anatomy** (abdominal wall layers, liver capsule, parenchymal echotexture, hepatic/portal
  vessels, diaphragm): patient-to-patient variation;
* **lesion** (stages F1-F4 only): the fibrous septa, a network of thin echogenic curvilinear lines
  whose coverage and connectivity grow with the stage (F1 a few short portal strands, F2 longer
  strands and some septa, F3 bridging septa linking into a partial network, F4 complete septa
  enclosing regenerative nodules of uneven echogenicity, with a scalloped, nodular capsule);
* **nuisance** (probe and scanner: sector geometry, probe pose, speckle grain and strength, depth
  attenuation and time-gain compensation, log-compression/gain, near-field reverberation, rib
  shadow, electronic noise, burned-in depth-scale dots).

The nuisance stream never sees the label, so nothing but the septa (and, at F4, the nodular
texture and surface) tells the stages apart; the same generator state rendered at two stages is
the same patient scanned the same way. Within the liver the septa are *mean-preserving*: the
parenchyma is rescaled so the mean echo level inside the liver does not depend on the stage,
because global brightness is a scanner setting, not a fibrosis marker, and a classifier should not
be able to read the stage off a histogram.

This module also holds :func:`write_phantom_set`, the dataset writer shared by the other phantom
generators added with it (smear, brain, sacroiliac), which differ only in what they render and in
their extra manifest columns.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from medlens.data.phantoms.chest import _Frame, _ramp, _segment_dist, _smooth_noise, _write_png
from medlens.errors import DataError

__all__ = [
    "LIVER_CLASSES",
    "LiverCase",
    "generate_liver_phantoms",
    "render_liver_case",
    "render_liver_phantom",
    "write_phantom_set",
]

LIVER_CLASSES: tuple[str, ...] = ("F0", "F1", "F2", "F3", "F4")

# Per stage (F1..F4): fraction of the visible septal network that is fibrotic, and the number of
# selection-field features across the image (more features = shorter, more broken strands).
_COVERAGE = {1: (0.10, 0.16), 2: (0.30, 0.40), 3: (0.60, 0.74), 4: (0.96, 1.0)}
_SELECT_CELLS = {1: 14, 2: 10, 3: 6, 4: 4}
MASK_LEVEL = 0.5  # septa mask: septal profile (0..1) above this


@dataclass
class LiverCase:
    """One rendered liver phantom.

    ``image``: float32 ``H x W`` in [0, 1] (B-mode, black outside the sector). ``mask``: bool
    septa mask (all False for F0). ``fov``: bool sector (field of view). ``liver``: bool liver
    parenchyma inside the sector. ``meta``: drawn lesion and nuisance parameters.
    """

    image: np.ndarray
    mask: np.ndarray
    fov: np.ndarray
    liver: np.ndarray
    label: str
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Helpers shared with the other phantom modules
# --------------------------------------------------------------------------------------------


def _check_label_size(label: str, size: int, classes: Sequence[str], minimum: int = 16) -> int:
    if label not in classes:
        raise DataError(f"label: {label!r} is not one of {list(classes)}")
    if int(size) < minimum:
        raise DataError(f"size: phantoms need at least {minimum} pixels, got {size}")
    return int(size)


def _streams(rng: np.random.Generator, k: int = 3) -> list[np.random.Generator]:
    """``k`` independent child generators drawn from ``rng`` before anything label-dependent."""
    return [np.random.default_rng(int(s)) for s in rng.integers(0, 2**63 - 1, size=k)]


def _image_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Unrotated pixel-centre coordinates in [-1, 1] (``u`` right, ``v`` down)."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) * np.float32(2.0 / size) - 1.0
    u, v = np.meshgrid(coords, coords)
    return u, v


def _aniso_noise(rng: np.random.Generator, size: int, cells_x: int, cells_y: int) -> np.ndarray:
    """Zero-mean, unit-std smooth field with different feature counts along x and y."""
    coarse = rng.standard_normal((cells_y, cells_x)).astype(np.float32)
    f = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return (f - f.mean()) / (f.std() + 1e-6)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def _balanced_labels(classes: Sequence[str], n: int, seed: int) -> list[str]:
    """``n // k`` labels per class (the remainder one each to the first classes), shuffled by a
    seed-determined permutation so neighbouring files do not share a class."""
    k, r = divmod(n, len(classes))
    labels = [c for j, c in enumerate(classes) for _ in range(k + (j < r))]
    order = np.random.default_rng([seed, 0]).permutation(n)
    return [labels[i] for i in order]


# One rendered row: uint8 arrays per file column (e.g. ``{"path": img, "mask_path": mask}``) and
# the values of the extra (non-file) columns.
RenderRow = Callable[[np.random.Generator, str, int], tuple[dict[str, np.ndarray], dict[str, Any]]]


def write_phantom_set(
    out_dir: Path,
    *,
    n: int,
    size: int,
    seed: int,
    classes: Sequence[str],
    prefix: str,
    render: RenderRow,
    folders: Mapping[str, str],
    extra_columns: Sequence[str] = (),
    min_size: int = 16,
) -> Path:
    """Render and write a phantom data set; returns the path of its ``manifest.csv``.

    ``folders`` maps each file column to its sub-folder, ``path`` first (e.g. ``{"path":
    "images", "mask_path": "masks", "ct_path": "ct"}``); every file is ``<folder>/<prefix>_<i>.png``
    and the manifest columns are ``path,label,patient_id``, the other file columns, then
    ``extra_columns``. Image ``i`` is rendered from a generator seeded by ``(seed, 1, i)`` (as for
    the chest phantoms), so the output is byte-identical for a seed and any subset can be rendered
    in parallel; labels are balanced and shuffled by ``(seed, 0)``. Re-running over a folder
    removes phantom files a larger earlier run left behind, and the manifest is written last
    (atomically), so it only exists for a complete set.
    """
    if int(n) < len(classes):
        raise DataError(f"n: need at least {len(classes)} phantoms (one per class), got {n}")
    if int(size) < min_size:
        raise DataError(f"size: phantoms need at least {min_size} pixels, got {size}")
    if int(seed) < 0:
        raise DataError(f"seed: must be a non-negative integer, got {seed}")
    if next(iter(folders)) != "path":
        raise DataError("folders: the first file column must be 'path'")
    n, size, seed = int(n), int(size), int(seed)
    out_dir = Path(out_dir)
    dirs = {col: out_dir / sub for col, sub in folders.items()}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "manifest.csv"
    if manifest.exists():
        manifest.unlink()

    file_re = re.compile(rf"^{re.escape(prefix)}_\d{{5,}}\.png$")
    other_cols = [c for c in folders if c != "path"]
    rows = []
    written = set()
    for i, label in enumerate(_balanced_labels(classes, n, seed)):
        files, extra = render(np.random.default_rng([seed, 1, i]), label, size)
        name = f"{prefix}_{i:05d}.png"
        written.add(name)
        for col, arr in files.items():
            _write_png(dirs[col] / name, arr[..., ::-1] if arr.ndim == 3 else arr)  # RGB -> BGR
        rows.append(
            [f"{folders['path']}/{name}", label, f"P{i:05d}"]
            + [f"{folders[c]}/{name}" for c in other_cols]
            + [extra[c] for c in extra_columns]
        )

    for d in dirs.values():
        for stale in d.iterdir():
            if file_re.match(stale.name) and stale.name not in written:
                stale.unlink()

    tmp = manifest.with_name(f".manifest.{os.getpid()}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "label", "patient_id", *other_cols, *extra_columns])
        writer.writerows(rows)
    os.replace(tmp, manifest)
    return manifest


# --------------------------------------------------------------------------------------------
# Fibrosis
# --------------------------------------------------------------------------------------------


def _voronoi(
    x: np.ndarray, y: np.ndarray, spacing: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Half the gap between the nearest and second-nearest seed (~ distance to the nearest cell
    wall) and the nearest seed's index, for jittered-grid seeds ``spacing`` apart.

    Seeds sit at most 0.38 spacings from their grid node, so both nearest seeds of a pixel are
    among the 5 x 5 nodes around its own: searching those keeps this linear in the pixel count.
    """
    k = int(np.ceil(4.0 / spacing)) + 5  # covers |x|, |y| <= 2 with no clipped duplicates
    origin = -(k - 1) / 2.0 * spacing
    jitter = rng.uniform(-0.38, 0.38, size=(2, k, k)) * spacing
    node = np.arange(k) * spacing + origin
    seed_x = (node[None, :] + jitter[0]).astype(np.float32)
    seed_y = (node[:, None] + jitter[1]).astype(np.float32)
    ci = np.rint((x - origin) / spacing).astype(np.int64)
    cj = np.rint((y - origin) / spacing).astype(np.int64)
    best = np.full(x.shape, np.inf, dtype=np.float32)
    second = np.full(x.shape, np.inf, dtype=np.float32)
    nearest = np.zeros(x.shape, dtype=np.int64)
    for dj in range(-2, 3):
        for di in range(-2, 3):
            ii, jj = np.clip(ci + di, 0, k - 1), np.clip(cj + dj, 0, k - 1)
            d = (x - seed_x[jj, ii]) ** 2 + (y - seed_y[jj, ii]) ** 2
            closer = d < best
            second = np.where(closer, best, np.minimum(second, d))
            nearest = np.where(closer, jj * k + ii, nearest)
            best = np.where(closer, d, best)
    gap = 0.5 * (np.sqrt(second) - np.sqrt(best))
    return gap.astype(np.float32), nearest


def render_liver_case(rng: np.random.Generator, label: str, size: int) -> LiverCase:
    """Render one liver ultrasound phantom with its septa mask (the pure core).

    Three child seeds (anatomy, lesion, nuisance) are drawn from ``rng`` first, so the stage only
    changes the septa and the F4 nodularity.
    """
    size = _check_label_size(label, size, LIVER_CLASSES)
    stage = LIVER_CLASSES.index(label)
    a, les, nu = _streams(rng)
    px = 2.0 / size

    # ---- probe and scanner (nuisance) ------------------------------------------------------
    frame = _Frame(
        size=size,
        theta=float(np.deg2rad(nu.uniform(-10.0, 10.0))),
        scale=float(nu.uniform(0.9, 1.1)),
        shift=(float(nu.uniform(-0.08, 0.08)), float(nu.uniform(-0.06, 0.06))),
    )
    apex_x, apex_y = nu.uniform(-0.04, 0.04), nu.uniform(-1.5, -1.2)
    half = nu.uniform(0.42, 0.6)  # sector half-angle (rad)
    r0 = nu.uniform(-0.96, -0.86) - apex_y
    r1 = nu.uniform(0.9, 0.99) - apex_y
    speckle_sigma = nu.uniform(0.7, 1.5) * size / 128.0
    speckle_power = nu.uniform(0.55, 1.0)
    alpha, tgc = nu.uniform(0.3, 1.6), nu.uniform(0.0, 1.2)
    gamma = nu.uniform(0.55, 0.9)  # log compression
    gain = float(np.exp(nu.normal(0.0, 0.22)))
    reverb = nu.uniform(0.0, 0.5)
    shadow = nu.random() < 0.2
    shadow_ang, shadow_w = nu.uniform(-1.0, 1.0), nu.uniform(0.05, 0.12)
    shadow_depth = nu.uniform(0.5, 0.85)
    blur = nu.uniform(0.3, 0.8) * size / 128.0
    enoise = nu.uniform(0.01, 0.03)
    dots = nu.random() < 0.7

    u, v = _image_grid(size)
    du, dv = u - np.float32(apex_x), v - np.float32(apex_y)
    r = np.hypot(du, dv)
    ang = np.arctan2(du, dv)
    fov_soft = _ramp(r - r0, px) * _ramp(r1 - r, px) * _ramp(half - np.abs(ang), px / r)
    fov = fov_soft > 0.5
    depth = np.clip((r - r0) / (r1 - r0), 0.0, 1.0)

    # ---- anatomy ---------------------------------------------------------------------------
    x, y = frame.x, frame.y
    cap0, cap_tilt, cap_curv = a.uniform(-0.7, -0.48), a.uniform(-0.15, 0.15), a.uniform(0.0, 0.25)
    fascia = [a.uniform(0.06, 0.16), a.uniform(0.18, 0.3)]
    wall_level = a.uniform(0.25, 0.4)
    tex_coarse = _smooth_noise(a, size, 6)
    tex_fine = _smooth_noise(a, size, 22)
    echo = a.uniform(0.42, 0.58)
    vessels = []  # hepatic/portal veins: gently curved tubes, or round/oval cross-sections
    for _ in range(int(a.integers(1, 4))):
        p0 = (a.uniform(-0.7, 0.7), a.uniform(-0.25, 0.7))
        ang_v, bend = a.uniform(0, np.pi), a.uniform(-0.6, 0.6)
        length = a.uniform(0.0, 0.4) if a.random() < 0.4 else a.uniform(0.4, 0.8)
        p1 = (p0[0] + length * np.cos(ang_v), p0[1] + length * np.sin(ang_v))
        p2 = (
            p1[0] + 0.7 * length * np.cos(ang_v + bend),
            p1[1] + 0.7 * length * np.sin(ang_v + bend),
        )
        vessels.append((p0, p1, p2, a.uniform(0.035, 0.085), a.random() < 0.5))
    diaphragm = a.random() < 0.65
    dia0, dia_curv, dia_tilt = a.uniform(0.45, 0.85), a.uniform(0.1, 0.4), a.uniform(-0.2, 0.2)

    # ---- lesion parameters (drawn before any field that uses them) ------------------------
    meta: dict[str, Any] = {"stage": stage}
    wall_base = cap0 + cap_tilt * x + cap_curv * x * x  # deep edge of the abdominal wall
    capsule_y = wall_base
    if stage == 4:
        bump_amp, bump_period = les.uniform(0.015, 0.035), les.uniform(0.1, 0.18)
        bump_phase = les.uniform(0.0, 1.0)
        capsule_y = capsule_y + bump_amp * np.abs(
            np.sin(np.pi * (x / bump_period + bump_phase))
        ).astype(np.float32)
        meta["surface_nodularity"] = float(bump_amp)

    liver_soft = _ramp(y - capsule_y, px)
    if diaphragm:
        dia_y = dia0 - dia_curv * x * x + dia_tilt * x
        liver_soft = liver_soft * _ramp(dia_y - y, px)
    vessel_soft = np.zeros_like(x)
    vessel_wall = np.zeros_like(x)
    wall_w = max(0.012, 0.5 * px)
    for p0, p1, p2, rad, echogenic_wall in vessels:
        # Tapering: the branch beyond the bend is narrower. ``excess`` < 0 inside the lumen.
        excess = np.minimum(
            _segment_dist(x, y, p0, p1) - rad, _segment_dist(x, y, p1, p2) - 0.6 * rad
        )
        vessel_soft = np.maximum(vessel_soft, _ramp(-excess, px))
        if echogenic_wall:  # portal veins: bright fibro-fatty wall
            vessel_wall = np.maximum(vessel_wall, np.exp(-((excess / wall_w) ** 2)))
    vessel_wall *= liver_soft

    # Reflectivity (before speckle, attenuation and display mapping).
    parenchyma = echo * (1.0 + 0.12 * tex_coarse + 0.07 * tex_fine)
    refl = parenchyma * liver_soft * (1.0 - 0.93 * vessel_soft)
    region = liver_soft * (1.0 - vessel_soft)  # where septa can be

    # ---- septa -----------------------------------------------------------------------------
    mask = np.zeros((size, size), dtype=bool)
    if stage > 0:
        spacing = les.uniform(0.17, 0.24) if stage == 4 else les.uniform(0.28, 0.38)
        wiggle = les.uniform(0.025, 0.045)
        xw = x + np.float32(wiggle) * _smooth_noise(les, size, 8)
        yw = y + np.float32(wiggle) * _smooth_noise(les, size, 8)
        gap, cell = _voronoi(xw, yw, spacing, les)
        # At least ~1 pixel wide at the rendered size: a septum thinner than a pixel is
        # averaged into the speckle and no longer tells the stages apart at small sizes.
        width = max(les.uniform(0.008, 0.012) * (1.0 + 0.15 * stage), 0.9 * px)
        profile = np.exp(-((gap / width) ** 2))
        select = _smooth_noise(les, size, _SELECT_CELLS[stage])
        coverage = les.uniform(*_COVERAGE[stage])
        visible = (profile > MASK_LEVEL) & (region > 0.5) & fov
        if visible.any():
            thr = float(np.quantile(select[visible], coverage))
        else:  # pragma: no cover - the sector always shows some liver
            thr = float(select.max())
        chosen = _ramp(thr - select + 0.06, 0.12)  # >= 0.5 exactly where select <= thr
        septa = profile * chosen * region
        contrast = les.uniform(1.1, 2.0)  # septa are echogenic: brighter than the speckle
        boosted = refl * (1.0 + np.float32(contrast) * septa)
        if stage == 4:  # regenerative nodules: each a little brighter or darker than the next
            nod = les.normal(0.0, 0.09, size=int(cell.max()) + 1).astype(np.float32)
            boosted = boosted * (1.0 + nod[cell] * region)
        # Mean-preserving inside the liver: the stage must not shift the overall echo level.
        inside = region > 0.5
        boosted[inside] *= refl[inside].mean() / max(float(boosted[inside].mean()), 1e-6)
        refl = boosted
        mask = visible & (chosen >= 0.5)
        meta.update(coverage=float(coverage), contrast=float(contrast), spacing=float(spacing))

    # ---- capsule, abdominal wall, diaphragm (anatomy, after septa so they stay unchanged) ---
    # The abdominal wall's layers follow its own deep edge; only the liver surface (capsule)
    # takes the F4 nodularity, the gap filled with wall tissue.
    above = capsule_y - y  # height above the liver surface
    above_wall = wall_base - y
    wall = (above > 0) * (
        wall_level * (1.0 + 0.25 * _aniso_noise(a, size, 3, 16))
        + 0.7 * np.exp(-(((above_wall - fascia[0]) / (2 * wall_w)) ** 2))
        + 0.5 * np.exp(-(((above_wall - fascia[1]) / (2 * wall_w)) ** 2))
    )
    refl = refl + wall + 1.1 * np.exp(-((above / wall_w) ** 2)) + 0.6 * vessel_wall
    if diaphragm:
        below = y - dia_y
        refl = refl + 1.4 * np.exp(-((below / (1.5 * wall_w)) ** 2))
        refl = refl + (below > 0) * 0.12 * (1.0 + 0.3 * tex_coarse)  # mirror/air beyond

    # ---- acquisition (nuisance) --------------------------------------------------------------
    zr = nu.standard_normal((size, size)).astype(np.float32)
    zi = nu.standard_normal((size, size)).astype(np.float32)
    sig = (max(0.4, speckle_sigma * 1.6), max(0.3, speckle_sigma * 0.7))  # lateral > axial
    zr = cv2.GaussianBlur(zr, (0, 0), sigmaX=sig[0], sigmaY=sig[1])
    zi = cv2.GaussianBlur(zi, (0, 0), sigmaX=sig[0], sigmaY=sig[1])
    speckle = np.hypot(zr, zi)
    speckle /= speckle.mean() + 1e-6
    amp = np.clip(refl, 0.0, None) * np.power(speckle, speckle_power)
    amp = amp * np.exp(-alpha * depth) * (1.0 + tgc * depth)
    amp = amp * (1.0 - 0.35 * (np.abs(ang) / half) ** 4)
    amp = amp + reverb * np.exp(-(r - r0) / 0.05) * (0.6 + 0.4 * np.cos((r - r0) * 90.0))
    if shadow:
        wedge = _ramp(shadow_w - np.abs(ang - shadow_ang * half), 0.03) * _ramp(depth - 0.12, 0.05)
        amp = amp * (1.0 - shadow_depth * wedge)
    img = gain * 0.62 * np.power(np.clip(amp, 0.0, None), gamma)
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigmaX=blur)
    img = img + enoise * nu.standard_normal((size, size)).astype(np.float32)
    img = np.clip(img * fov_soft, 0.0, 1.0)
    if dots:  # burned-in depth scale: dots near the right edge, one per sixth of the depth
        col = size - max(2, size // 24)
        for k in range(1, 6):
            row = round((apex_y + r0 + (r1 - r0) * k / 6.0 + 1.0) * size / 2.0)
            if 0 <= row < size:
                img[row, col] = 0.8
    img = img.astype(np.float32)

    meta.update(
        rotation_deg=float(np.rad2deg(frame.theta)),
        sector_half_angle=float(half),
        gain=gain,
        gamma=float(gamma),
        attenuation=float(alpha),
        tgc=float(tgc),
        speckle_power=float(speckle_power),
        rib_shadow=bool(shadow),
    )
    return LiverCase(
        image=img, mask=mask, fov=fov, liver=(liver_soft > 0.5) & fov, label=label, meta=meta
    )


def render_liver_phantom(
    rng: np.random.Generator, label: str, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Image (float32 ``H x W`` in [0, 1]) and septa mask (bool) of one liver phantom."""
    case = render_liver_case(rng, label, size)
    return case.image, case.mask


def _liver_row(
    rng: np.random.Generator, label: str, size: int
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    image, mask = render_liver_phantom(rng, label, size)
    files = {"path": _to_uint8(image), "mask_path": mask.astype(np.uint8) * 255}
    return files, {"stage": LIVER_CLASSES.index(label)}


def generate_liver_phantoms(out_dir: Path, n: int = 600, size: int = 128, seed: int = 0) -> Path:
    """Write ``n`` liver ultrasound phantoms under ``out_dir``; returns ``manifest.csv``.

    Layout: ``images/liver_00000.png`` (8-bit grey), ``masks/liver_00000.png`` (septa 255) and
    ``manifest.csv`` with ``path,label,patient_id,mask_path,stage`` (``stage`` = 0..4, the
    ordinal fibrosis stage of ``label``). See :func:`write_phantom_set` for determinism.
    """
    return write_phantom_set(
        out_dir,
        n=n,
        size=size,
        seed=seed,
        classes=LIVER_CLASSES,
        prefix="liver",
        render=_liver_row,
        folders={"path": "images", "mask_path": "masks"},
        extra_columns=("stage",),
    )
