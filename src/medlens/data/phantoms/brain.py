"""Brain tumour phantoms: axial MRI slice with a registered CT, tumour mask, stage and risk.

The default offline data set for the ``brain_tumor`` kind. Classes: ``notumor``, ``glioma``,
``meningioma``, ``pituitary``. Each case (:func:`render_brain_case`) is one axial slice through
the lateral ventricles' frontal horns, the third ventricle and the suprasellar region, rendered as
an MRI and, from the same tissue maps and pose, as a brain-window CT (so the pair is registered).

Four independent random streams:

* **anatomy**: head and skull shape, scalp/skull/CSF layer thickness, gyri and sulci, Sylvian and
  interhemispheric fissures, ventricle size (atrophy), deep grey nuclei;
* **lesion**: the tumour. *Glioma*: intra-axial, in the hemispheric white matter, irregular, with
  an enhancing rim, often a necrotic centre, and vasogenic oedema that spreads along the white
  matter. *Meningioma*: extra-axial, round and well circumscribed, with a broad base on the
  dura/inner table, sometimes a dural tail, and on CT calcification in some. *Pituitary*: a small
  round (sometimes bilobed) mass in the sella/suprasellar region on the midline;
* **MRI nuisance**: the sequence (T1 post-contrast-like or FLAIR-like, as the public 4-class sets
  mix sequences), pose, gain/gamma, coil bias field, blur, Rician noise;
* **CT nuisance**: window level/width, blur, noise.

On the FLAIR-like sequence oedema is the hyperintense halo around a glioma; on T1 post-contrast
it is mildly hypointense, while the tumour itself enhances. Nuisances never see the label.

Targets: ``stage`` (0 for ``notumor``; 1, 2, 3 for a tumour whose nominal radius is < 0.09,
< 0.15, >= 0.15 head half-widths) and ``risk`` in [0, 1]::

    risk = clip(base[class] + 0.3 * clip((radius - 0.04) / 0.18, 0, 1)
                + 0.1 * necrosis + N(0, 0.05), 0, 1)

with ``base`` = 0.05 (notumor, no size term, noise sd 0.03), 0.2 (pituitary), 0.3 (meningioma),
0.6 (glioma): aggressive histology, larger size and necrosis raise it, and the noise stands for
everything an image does not show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from medlens.data.phantoms.chest import _Frame, _ramp, _segment_dist, _smooth_noise
from medlens.data.phantoms.liver import _check_label_size, _streams, _to_uint8, write_phantom_set

__all__ = [
    "BRAIN_CLASSES",
    "BrainCase",
    "brain_risk",
    "brain_stage",
    "generate_brain_tumor_phantoms",
    "render_brain_case",
    "render_brain_tumor_phantom",
]

BRAIN_CLASSES: tuple[str, ...] = ("notumor", "glioma", "meningioma", "pituitary")

_RADIUS = {"glioma": (0.07, 0.22), "meningioma": (0.06, 0.2), "pituitary": (0.04, 0.12)}
_RISK_BASE = {"notumor": 0.05, "pituitary": 0.2, "meningioma": 0.3, "glioma": 0.6}
_STAGE_EDGES = (0.09, 0.15)

# Tissue intensities: MRI (T1 post-contrast-like, FLAIR-like) and CT (Hounsfield units).
_TISSUES = ("scalp", "bone", "diploe", "csf", "gm", "wm")
_T1C = {"scalp": 0.82, "bone": 0.05, "diploe": 0.5, "csf": 0.08, "gm": 0.4, "wm": 0.62}
_FLAIR = {"scalp": 0.7, "bone": 0.04, "diploe": 0.35, "csf": 0.06, "gm": 0.5, "wm": 0.4}
_HU = {"scalp": 30.0, "bone": 1200.0, "diploe": 600.0, "csf": 6.0, "gm": 40.0, "wm": 29.0}


@dataclass
class BrainCase:
    """One rendered brain phantom.

    ``image``: float32 MRI ``H x W`` in [0, 1]. ``ct``: float32 registered CT (brain window) in
    [0, 1]. ``mask``: bool tumour (all False for ``notumor``). ``brain``: bool intracranial
    soft tissue. ``stage``: 0-3. ``risk``: float in [0, 1]. ``meta``: drawn parameters.
    """

    image: np.ndarray
    ct: np.ndarray
    mask: np.ndarray
    brain: np.ndarray
    label: str
    stage: int
    risk: float
    meta: dict[str, Any] = field(default_factory=dict)


def brain_stage(label: str, radius: float) -> int:
    """Size stage: 0 without a tumour, else 1/2/3 by nominal radius (head half-widths)."""
    if label == "notumor":
        return 0
    return 1 + int(radius >= _STAGE_EDGES[0]) + int(radius >= _STAGE_EDGES[1])


def brain_risk(label: str, radius: float, necrosis: bool, noise: float) -> float:
    """The documented risk target (see the module docstring); ``noise`` is the drawn N(0, 1)."""
    if label == "notumor":
        return float(np.clip(_RISK_BASE[label] + 0.03 * noise, 0.0, 1.0))
    size_term = 0.3 * float(np.clip((radius - 0.04) / 0.18, 0.0, 1.0))
    value = _RISK_BASE[label] + size_term + 0.1 * float(necrosis) + 0.05 * noise
    return float(np.clip(value, 0.0, 1.0))


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Binary map softened over ~``sigma`` pixels (anti-aliased tissue boundary)."""
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigmaX=sigma)


def _radial(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float, harm: np.ndarray
) -> np.ndarray:
    """Normalised radius about ``(cx, cy)`` of a blob with Fourier-perturbed outline (1 = edge).

    ``harm`` is ``k x 2`` (amplitude, phase) for harmonics 2..k+1.
    """
    theta = np.arctan2(y - cy, x - cx)
    outline = np.ones_like(theta)
    for k, (amp, ph) in enumerate(harm):
        outline = outline + np.float32(amp) * np.cos((k + 2) * theta + np.float32(ph))
    return np.hypot(x - cx, y - cy) / (np.float32(r) * outline)


def render_brain_case(rng: np.random.Generator, label: str, size: int) -> BrainCase:
    """Render one brain phantom: MRI, registered CT, tumour mask, stage and risk (pure core).

    Child seeds (anatomy, lesion, MRI nuisance, CT nuisance) are drawn from ``rng`` first, so the
    same ``rng`` state gives the same head, pose and acquisition for every label.
    """
    size = _check_label_size(label, size, BRAIN_CLASSES, minimum=32)
    a, les, nu, nct = _streams(rng, 4)

    # ---- MRI acquisition (nuisance); the CT shares the pose (registered pair) -------------
    frame = _Frame(
        size=size,
        theta=float(np.deg2rad(nu.uniform(-12.0, 12.0))),
        scale=float(nu.uniform(0.86, 1.06)),
        shift=(float(nu.uniform(-0.06, 0.06)), float(nu.uniform(-0.05, 0.05))),
    )
    flair = nu.random() < 0.45
    gain = float(np.exp(nu.normal(0.0, 0.15)))
    gamma = float(np.exp(nu.normal(0.0, 0.15)))
    bias = nu.uniform(0.05, 0.25)
    mri_blur = nu.uniform(0.3, 0.9) * size / 128.0
    mri_noise = nu.uniform(0.01, 0.04)
    x, y = frame.x, frame.y
    px = 2.0 / (size * frame.scale)
    sig = max(0.5, 0.6 * size / 128.0)  # softening of binary maps, pixels

    # ---- anatomy ---------------------------------------------------------------------------
    rx, ry, cy0 = a.uniform(0.64, 0.74), a.uniform(0.8, 0.88), a.uniform(-0.03, 0.03)
    egg = a.uniform(0.02, 0.08)  # wider at the back
    t_scalp, t_skull, t_csf = a.uniform(0.03, 0.06), a.uniform(0.035, 0.06), a.uniform(0.01, 0.02)
    radius_scale = 0.5 * (rx + ry)
    q = np.hypot(x / (rx * (1.0 + egg * y)), (y - cy0) / ry)
    depth = (1.0 - q) * radius_scale  # ~ distance inward from the skin
    inner_table = t_scalp + t_skull
    db = depth - (inner_table + t_csf)  # depth below the brain surface

    # Sulci: meandering, roughly radial CSF clefts of varying depth from the brain surface.
    n_gyri = int(a.integers(34, 46))
    phi = np.arctan2(x, -(y - cy0))
    psi = n_gyri * phi + 4.0 * _smooth_noise(a, size, 6) + 5.0 * _smooth_noise(a, size, 14)
    sulc_depth = 0.075 + 0.035 * _smooth_noise(a, size, 7)
    sulci = (np.abs(np.sin(psi / 2.0)) < 0.16) & (db > 0) & (db < sulc_depth)

    mid_x = a.uniform(-0.015, 0.015)
    midline = mid_x + a.uniform(-0.02, 0.02) * y  # slight tilt of the falx
    cis_y = a.uniform(-0.1, -0.03)  # suprasellar cistern (sella region) centre
    cis_r = a.uniform(0.04, 0.055)
    vent = a.uniform(0.8, 1.35)  # ventricle size (atrophy)
    fissure_w = a.uniform(0.006, 0.011)
    midline = midline + 0.006 * _smooth_noise(a, size, 6)  # a slightly wavy falx
    fissure = (np.abs(x - midline) < fissure_w) & (db > 0) & ((y < cis_y - 0.3) | (y > 0.42))
    csf_cortical = (db <= 0) | sulci | fissure
    for side in (-1, 1):  # Sylvian fissures: from the lateral surface, medially and forwards
        sy0 = a.uniform(-0.1, 0.05)
        p0 = (side * rx * 1.0, sy0)
        p1 = (side * rx * a.uniform(0.45, 0.6), sy0 - a.uniform(0.02, 0.08))
        p2 = (p1[0] + side * a.uniform(0.0, 0.08), p1[1] - a.uniform(0.06, 0.14))  # a branch
        width = a.uniform(0.008, 0.014)
        sylvian = np.minimum(_segment_dist(x, y, p0, p1), _segment_dist(x, y, p1, p2) + 0.004)
        csf_cortical |= (sylvian < width) & (depth > 0)
    theta_c = np.arctan2(y - cis_y, x - mid_x)
    cistern = np.hypot(x - mid_x, y - cis_y) < cis_r * (1.0 + 0.25 * np.cos(5 * theta_c))
    ventricles = cistern.copy()
    for side in (-1, 1):
        # Frontal horns: comma-shaped, diverging anteriorly.
        fh = _radial(
            x,
            y,
            mid_x + side * 0.075 * vent,
            cis_y - 0.2,
            0.07 * vent,
            np.array([[0.25, 0.0], [0.1, 0.3]]),
        )
        fh_shape = np.hypot((x - mid_x - side * 0.075 * vent) / 0.55, y - cis_y + 0.2)
        ventricles |= (fh < 1.0) & (fh_shape < 0.09 * vent) & (side * (x - mid_x) > 0.012)
        # Occipital horns / atria.
        ventricles |= (
            np.hypot((x - mid_x - side * 0.2 * vent) / 0.45, (y - 0.32) / 1.0) < 0.05 * vent
        )
    third = (np.abs(x - midline) < 0.012 * vent) & (y > cis_y + cis_r) & (y < cis_y + 0.2)
    ventricles |= third
    ventricles &= db > 0.03
    quad = np.hypot(x - mid_x, (y - cis_y - 0.33) / 0.6) < 0.035  # quadrigeminal cistern

    brain = db > 0
    csf = (csf_cortical | ventricles | quad) & (depth > inner_table)
    # Cortex: grey matter within a cortical thickness of cortical CSF.
    cortex_t = a.uniform(0.035, 0.05)
    scale_px = size * frame.scale / 2.0  # pixels per canonical unit
    dist = cv2.distanceTransform((~csf_cortical).astype(np.uint8), cv2.DIST_L2, 5) / scale_px
    gm = brain & ~csf & (dist < cortex_t)
    deep_gm = np.zeros_like(gm)
    for side in (-1, 1):
        thal = np.hypot((x - mid_x - side * 0.075) / 0.8, y - cis_y - 0.12) < a.uniform(0.06, 0.08)
        lent = _radial(
            x,
            y,
            mid_x + side * 0.2,
            cis_y - 0.06,
            a.uniform(0.06, 0.08),
            np.array([[0.3, np.pi / 2], [0.0, 0.0]]),
        )
        caudate = np.hypot(x - mid_x - side * 0.12 * vent, y - cis_y + 0.2) < 0.045
        deep_gm |= thal | (lent < 1.0) | caudate
    gm |= deep_gm & brain & ~csf
    wm = brain & ~csf & ~gm
    skull_all = (depth > t_scalp) & (depth <= inner_table)
    table = t_skull * a.uniform(0.22, 0.32)
    bone = skull_all & ((depth < t_scalp + table) | (depth > inner_table - table))
    maps = {
        "scalp": _soft((depth > 0) & (depth <= t_scalp), sig),
        "bone": _soft(bone, sig),
        "diploe": _soft(skull_all & ~bone, sig),
        "csf": _soft(csf | ((depth > inner_table) & ~brain), sig),
        "gm": _soft(gm, sig),
        "wm": _soft(wm, sig),
    }
    texture = 0.6 * _smooth_noise(a, size, 8) + 0.4 * _smooth_noise(a, size, 24)
    fat = (depth > 0.25 * t_scalp) & (depth < 0.85 * t_scalp)  # subcutaneous fat in the scalp

    # ---- lesion ----------------------------------------------------------------------------
    radius, necrosis, calcified = 0.0, False, False
    core = np.zeros_like(x)  # tumour body 0..1
    necrotic = np.zeros_like(x)  # glioma: the non-enhancing centre inside an enhancing rim
    oedema = np.zeros_like(x)
    tail = np.zeros_like(x)
    calc = np.zeros_like(x)
    if label != "notumor":
        radius = les.uniform(*_RADIUS[label])
        if label == "glioma":
            for _ in range(200):
                ang, rr = les.uniform(0, 2 * np.pi), les.uniform(0.15, 0.6)
                gx, gy = rr * rx * np.cos(ang), cy0 + rr * ry * np.sin(ang)
                if abs(gx - mid_x) > 0.1 + 0.5 * radius and rr + radius / min(rx, ry) < 0.78:
                    break
            harm = np.stack([les.uniform(0.05, 0.18, 4), les.uniform(0, 2 * np.pi, 4)], axis=1)
            rho = _radial(x, y, gx, gy, radius, harm)
            core = _ramp(1.0 - rho, 0.12)
            necrosis = radius > 0.1 and les.random() < 0.7
            if necrosis:
                necrotic = _ramp(les.uniform(0.45, 0.7) - rho, 0.15)
            extent = les.uniform(1.4, 2.1)
            finger = 1.0 + 0.35 * _smooth_noise(les, size, 10)
            oedema = _ramp(extent * finger - rho, 0.4) * (1.0 - core)
            oedema = oedema * (maps["wm"] + 0.25 * maps["gm"])  # vasogenic: follows white matter
            centre = (gx, gy)
        elif label == "meningioma":
            ang = les.uniform(0, 2 * np.pi)
            # Point on the inner table along the ray at ``ang``, then inwards by 0.55 radius.
            ex, ey = rx * np.cos(ang), ry * np.sin(ang)
            q_e = float(np.hypot(ex / (rx * (1.0 + egg * ey)), ey / ry))
            edge = (1.0 - inner_table / radius_scale) / max(q_e, 1e-6)
            inward = 1.0 - 0.55 * radius / (edge * np.hypot(ex, ey))
            gx, gy = edge * ex * inward, cy0 + edge * ey * inward
            harm = np.stack([les.uniform(0.0, 0.05, 3), les.uniform(0, 2 * np.pi, 3)], axis=1)
            rho = _radial(x, y, gx, gy, radius, harm)
            core = _ramp(1.0 - rho, 0.08) * _ramp(depth - inner_table, px)
            if les.random() < 0.5:  # dural tail: enhancing dura beside the mass
                near = np.hypot(x - gx, y - gy) < 2.2 * radius
                shell = np.exp(-(((depth - inner_table - 0.006) / 0.006) ** 2))
                tail = near * shell * (1.0 - core)
            calcified = les.random() < 0.35
            if calcified:
                spots = _smooth_noise(les, size, 26)
                calc = core * (spots > les.uniform(1.2, 1.8))
                if les.random() < 0.5:  # peripheral (rim) calcification
                    calc = np.maximum(calc, core * _ramp(rho - 0.82, 0.06) * _ramp(1 - rho, 0.05))
            centre = (gx, gy)
        else:  # pituitary
            gx, gy = mid_x + les.normal(0.0, 0.01), cis_y + les.uniform(-0.02, 0.01)
            harm = np.stack([les.uniform(0.0, 0.06, 3), les.uniform(0, 2 * np.pi, 3)], axis=1)
            rho = _radial(x, y, gx, gy, radius, harm)
            if les.random() < 0.4:  # bilobed ("snowman") macroadenoma
                rho = np.minimum(rho, _radial(x, y, gx, gy - 0.8 * radius, 0.7 * radius, harm))
            core = _ramp(1.0 - rho, 0.1)
            centre = (gx, gy)
        het = 1.0 + 0.12 * _smooth_noise(les, size, 14)
        conspicuity = les.uniform(0.75, 1.3)
        core = core * (0.95 if label == "meningioma" else 1.0)
    stage = brain_stage(label, radius)
    risk = brain_risk(label, radius, necrosis, float(les.standard_normal()))
    mask = core > 0.5
    if label != "notumor" and not mask.any():  # a tiny tumour at a small size: keep its peak
        mask = core >= core.max()

    # ---- MRI ---------------------------------------------------------------------------------
    tis = _FLAIR if flair else _T1C
    mri = sum((maps[k] * np.float32(tis[k]) for k in _TISSUES), np.zeros_like(x))
    mri = mri + (0.1 if not flair else 0.05) * maps["scalp"] * fat
    mri = mri * (1.0 + 0.06 * texture * (maps["gm"] + maps["wm"]))
    if label != "notumor":
        # Lesion conspicuity varies (enhancement, partial volume): from subtle to obvious.
        if flair:
            t_level = {"glioma": 0.72, "meningioma": 0.64, "pituitary": 0.64}[label]
            mri = mri + oedema * (0.72 - mri)
            body = (0.5 + conspicuity * (t_level - 0.5)) * het
            mri = mri + core * (body - mri)
            mri = mri + necrotic * (0.35 - mri) * core
        else:
            t_level = {"glioma": 0.82, "meningioma": 0.86, "pituitary": 0.78}[label]
            mri = mri + oedema * (0.45 - mri)
            body = (0.55 + conspicuity * (t_level - 0.55)) * het
            mri = mri + core * (body - mri)
            mri = mri + necrotic * (0.14 - mri) * core
            mri = mri + tail * (0.8 - mri)
        mri = mri + calc * (0.1 - mri)  # calcium is dark on MRI
    field_ = 1.0 + bias * _smooth_noise(nu, size, 3)
    mri = np.clip(mri * field_, 0.0, None)
    mri = gain * np.power(mri, gamma)
    mri = cv2.GaussianBlur(mri.astype(np.float32), (0, 0), sigmaX=mri_blur)
    n1 = nu.standard_normal((size, size)).astype(np.float32) * np.float32(mri_noise)
    n2 = nu.standard_normal((size, size)).astype(np.float32) * np.float32(mri_noise)
    mri = np.clip(np.hypot(mri + n1, n2), 0.0, 1.0).astype(np.float32)  # Rician magnitude

    # ---- CT (same anatomy and pose) ---------------------------------------------------------
    hu = sum((maps[k] * np.float32(_HU[k]) for k in _TISSUES), np.zeros_like(x))
    hu = hu - 110.0 * maps["scalp"] * fat  # fat is about -100 HU
    hu = hu + 2.5 * texture * (maps["gm"] + maps["wm"])
    if label != "notumor":
        t_hu = {"glioma": 47.0, "meningioma": 55.0, "pituitary": 50.0}[label]
        hu = hu + oedema * (18.0 - hu)
        hu = hu + core * (t_hu * (1.0 + 0.5 * (het - 1.0)) - hu)
        hu = hu + necrotic * core * (15.0 - hu)
        hu = hu + calc * (400.0 - hu)
    level, width = nct.uniform(35.0, 45.0), nct.uniform(75.0, 95.0)
    ct = (hu - (level - width / 2.0)) / width
    ct = cv2.GaussianBlur(ct.astype(np.float32), (0, 0), sigmaX=nct.uniform(0.3, 0.8) * size / 128)
    ct = ct + nct.uniform(0.02, 0.05) * nct.standard_normal((size, size)).astype(np.float32)
    ct = np.clip(ct * (depth > -0.01), 0.0, 1.0).astype(np.float32)

    meta: dict[str, Any] = {
        "sequence": "FLAIR" if flair else "T1c",
        "rotation_deg": float(np.rad2deg(frame.theta)),
        "gain": gain,
        "gamma": gamma,
        "ct_window": (float(level), float(width)),
    }
    if label != "notumor":
        meta.update(
            radius=float(radius), centre=centre, necrosis=bool(necrosis), calcified=calcified
        )
    return BrainCase(
        image=mri,
        ct=ct,
        mask=mask,
        brain=brain,
        label=label,
        stage=stage,
        risk=risk,
        meta=meta,
    )


def render_brain_tumor_phantom(
    rng: np.random.Generator, label: str, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """MRI (float32 ``H x W`` in [0, 1]) and tumour mask (bool) of one brain phantom; use
    :func:`render_brain_case` for the CT, stage and risk."""
    case = render_brain_case(rng, label, size)
    return case.image, case.mask


def _brain_row(
    rng: np.random.Generator, label: str, size: int
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    case = render_brain_case(rng, label, size)
    files = {
        "path": _to_uint8(case.image),
        "mask_path": case.mask.astype(np.uint8) * 255,
        "ct_path": _to_uint8(case.ct),
    }
    return files, {"stage": case.stage, "risk": f"{case.risk:.4f}"}


def generate_brain_tumor_phantoms(
    out_dir: Path, n: int = 600, size: int = 128, seed: int = 0
) -> Path:
    """Write ``n`` brain tumour phantoms under ``out_dir``; returns ``manifest.csv``.

    Layout: ``images/brain_00000.png`` (MRI, 8-bit grey), ``masks/brain_00000.png`` (tumour 255),
    ``ct/brain_00000.png`` (registered CT, brain window) and ``manifest.csv`` with
    ``path,label,patient_id,mask_path,ct_path,stage,risk``. Needs ``size >= 32``. See
    :func:`~medlens.data.phantoms.liver.write_phantom_set` for determinism.
    """
    return write_phantom_set(
        out_dir,
        n=n,
        size=size,
        seed=seed,
        classes=BRAIN_CLASSES,
        prefix="brain",
        render=_brain_row,
        folders={"path": "images", "mask_path": "masks", "ct_path": "ct"},
        extra_columns=("stage", "risk"),
        min_size=32,
    )
