"""Sacroiliac-joint MRI phantoms: coronal-oblique STIR, sacroiliitis severity, two masks.

The default offline data set for the ``sacroiliitis`` kind. Classes, in order of severity:
``none``, ``mild``, ``moderate``, ``severe`` (stages 0-3). Each case
(:func:`render_sacroiliitis_case`) is a coronal-oblique STIR slice through both sacroiliac
joints: the sacrum (a wedge, wide at S1, with the sacral canal and foramina) in the middle, the
iliac bones either side, each joint an oblique, gently S-shaped line (dark subchondral plates
around a thin intermediate-signal cartilage space) running from top-lateral to bottom-medial,
and gluteal/paraspinal muscle, fat and bright veins around them. Marrow is dark (fat-suppressed).

Three independent random streams, as for the chest phantoms:

* **anatomy**: bone shapes and positions, joint obliquity and curvature, marrow texture, muscle
  and fascia, veins, the sacral canal and foramina, the L5/S1 disc;
* **lesion**: bone-marrow oedema, hyperintense subchondral areas adjacent to the joints, in the
  SPARCC quadrants (upper/lower half of each joint, iliac or sacral side, left or right). With
  severity the number of quadrants grows (mild 1-2, moderate 3-4, severe 5-8), as do the depth
  into the bone, the length along the joint and the signal; severe cases may add erosions
  (focal breaks in the subchondral plate with fluid signal, not part of the inflammation mask);
* **nuisance** (scanner): pose, gain/gamma, coil bias field, incomplete fat suppression (a bright
  smooth patch), motion ghosting along the phase-encode direction, blur, Rician noise.

Masks: ``joints`` (both joint regions: the joint line with the subchondral bone on each side,
present in every image, for segmentation) and ``mask`` (oedema; empty for ``none``).
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
    "SACROILIITIS_CLASSES",
    "SacroiliacCase",
    "generate_sacroiliitis_phantoms",
    "render_sacroiliitis_case",
    "render_sacroiliitis_phantom",
]

SACROILIITIS_CLASSES: tuple[str, ...] = ("none", "mild", "moderate", "severe")

# Per stage (1..3): quadrants involved, depth into bone, length along the joint, signal.
_QUADRANTS = {1: (1, 2), 2: (3, 4), 3: (5, 8)}
_DEPTH = {1: (0.03, 0.05), 2: (0.05, 0.085), 3: (0.08, 0.14)}
_LENGTH = {1: (0.15, 0.3), 2: (0.25, 0.42), 3: (0.35, 0.5)}
_SIGNAL = {1: (0.26, 0.42), 2: (0.32, 0.5), 3: (0.38, 0.6)}
MASK_LEVEL = 0.35  # oedema field (0..1) above this is inflammation
JOINT_MARGIN = 0.045  # joint region: this far either side of the joint space (canonical units)


@dataclass
class SacroiliacCase:
    """One rendered SIJ phantom.

    ``image``: float32 ``H x W`` in [0, 1]. ``mask``: bool bone-marrow oedema (empty for
    ``none``). ``joints``: bool joint regions (both sides; the same for every label).
    ``stage``: 0-3. ``meta``: drawn parameters (quadrants involved, erosions, nuisances).
    """

    image: np.ndarray
    mask: np.ndarray
    joints: np.ndarray
    label: str
    stage: int
    meta: dict[str, Any] = field(default_factory=dict)


class _Joint:
    """One sacroiliac joint: a gently S-curved line from ``top`` to ``bottom`` (canonical).

    ``t`` is the position along the joint (0 top, 1 bottom); ``d`` the signed distance across it,
    positive laterally (towards the ilium), 0 at the sacral subchondral plate.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        side: int,
        top: tuple[float, float],
        bottom: tuple[float, float],
        bend: float,
    ) -> None:
        self.side, self.top, self.bottom, self.bend = side, top, bottom, bend
        dx, dy = bottom[0] - top[0], bottom[1] - top[1]
        self.length = float(np.hypot(dx, dy))
        ux, uy = dx / self.length, dy / self.length
        nx, ny = uy, -ux  # normal; flip so that it points laterally
        if nx * side < 0:
            nx, ny = -nx, -ny
        self.t = ((x - top[0]) * ux + (y - top[1]) * uy) / self.length
        self.d = (x - top[0]) * nx + (y - top[1]) * ny - self.offset(self.t)
        self.normal = (nx, ny)

    def offset(self, t: np.ndarray | float) -> np.ndarray:
        """Lateral displacement of the joint line from the straight chord (S-shape)."""
        tt = np.clip(np.asarray(t, dtype=np.float32), 0.0, 1.0)
        bend = np.float32(self.bend)
        return bend * (np.sin(np.pi * tt) + np.float32(0.5) * np.sin(2.0 * np.pi * tt))


def render_sacroiliitis_case(rng: np.random.Generator, label: str, size: int) -> SacroiliacCase:
    """Render one SIJ phantom with its oedema and joint masks (the pure core).

    Child seeds (anatomy, lesion, nuisance) are drawn from ``rng`` first, so the same ``rng``
    state gives the same pelvis, pose and scanner for every severity.
    """
    size = _check_label_size(label, size, SACROILIITIS_CLASSES, minimum=32)
    stage = SACROILIITIS_CLASSES.index(label)
    a, les, nu = _streams(rng)

    # ---- scanner (nuisance) ----------------------------------------------------------------
    frame = _Frame(
        size=size,
        theta=float(np.deg2rad(nu.uniform(-7.0, 7.0))),
        scale=float(nu.uniform(0.9, 1.1)),
        shift=(float(nu.uniform(-0.06, 0.06)), float(nu.uniform(-0.06, 0.06))),
    )
    gain = float(np.exp(nu.normal(0.0, 0.15)))
    gamma = float(np.exp(nu.normal(0.0, 0.15)))
    bias = nu.uniform(0.08, 0.3)
    fatsat_fail = nu.random() < 0.4
    fatsat_amp = nu.uniform(0.1, 0.3)
    ghost = nu.random() < 0.3
    ghost_amp, ghost_shift = nu.uniform(0.04, 0.12), int(nu.integers(size // 8, size // 3))
    blur = nu.uniform(0.3, 0.9) * size / 128.0
    noise = nu.uniform(0.012, 0.035)
    x, y = frame.x, frame.y
    px = 2.0 / (size * frame.scale)
    edge = max(0.012, 0.8 * px)

    # ---- anatomy ---------------------------------------------------------------------------
    y_top, y_bot = a.uniform(-0.5, -0.38), a.uniform(0.42, 0.55)
    w_top, w_bot = a.uniform(0.3, 0.38), a.uniform(0.1, 0.15)
    gap = a.uniform(0.014, 0.022)  # joint space width
    plate = max(0.008, 0.6 * px)  # subchondral plate thickness
    joints = []
    for side in (-1, 1):
        top = (side * (w_top + a.uniform(-0.02, 0.02)), y_top + a.uniform(0.0, 0.05))
        bottom = (side * (w_bot + a.uniform(-0.02, 0.02)), y_bot - a.uniform(0.05, 0.12))
        joints.append(_Joint(x, y, side, top, bottom, a.uniform(-0.025, 0.025)))
    in_len = [_ramp(j.t, 0.03) * _ramp(1.0 - j.t, 0.03) for j in joints]

    # Sacrum: medial to both joint lines, between the S1 endplate and a rounded tip.
    endplate = y_top - 0.04 * (1.0 - (x / max(w_top, 1e-3)) ** 2)
    sacrum = _ramp(-joints[0].d, edge) * _ramp(-joints[1].d, edge) * _ramp(y - endplate, edge)
    tip = np.hypot(x / (1.3 * w_bot), (y - y_bot + 0.08) / 0.16)
    sacrum = sacrum * np.maximum(_ramp(y_bot - 0.08 - y, edge), _ramp(1.0 - tip, 0.08))
    # Ilia: lateral to each joint, thick wing above, narrowing to the sciatic notch below.
    ilium = np.zeros_like(x)
    for j in joints:
        # A rounded (super-elliptic) wing whose medial edge is the joint: widest above, where
        # it flares beyond the top of the joint, narrowing towards the sciatic notch below.
        t_lo, t_hi = -a.uniform(0.25, 0.4), a.uniform(1.0, 1.12)
        t_mid, t_half = 0.5 * (t_lo + t_hi), 0.5 * (t_hi - t_lo)
        width = (
            np.float32(a.uniform(0.26, 0.34))
            + np.float32(a.uniform(0.25, 0.4)) * np.clip(1.0 - j.t, 0.0, 1.4) ** 1.3
        )
        lateral = np.clip(j.d - gap, 0.0, None) / width
        shape = lateral**2.5 + np.abs((j.t - t_mid) / t_half) ** 2.5
        ilium = np.maximum(ilium, _ramp(j.d - gap, edge) * _ramp(1.0 - shape, 0.06))
    bone = np.maximum(sacrum, ilium)

    marrow_tex = 0.6 * _smooth_noise(a, size, 18) + 0.4 * _smooth_noise(a, size, 40)
    marrow_level = a.uniform(0.14, 0.22)
    muscle_level = a.uniform(0.26, 0.34)
    fascia = np.exp(-((_smooth_noise(a, size, 6) / 0.06) ** 2))  # thin bright fascial planes
    fat = _ramp(_smooth_noise(a, size, 4) - a.uniform(0.6, 1.0), 0.4)  # suppressed fat pads

    img = muscle_level * (1.0 + 0.08 * _smooth_noise(a, size, 12)) * (1.0 - bone)
    img = img - 0.12 * fat * (1.0 - bone) + 0.07 * fascia * (1.0 - bone)
    img = img + bone * marrow_level * (1.0 + 0.25 * marrow_tex)
    # Cortex and subchondral plates: dark rims of every bone.
    for b in (sacrum, ilium):
        inner = cv2.erode((b > 0.5).astype(np.uint8), np.ones((3, 3), np.uint8))
        rim = (b > 0.5) & (inner == 0)
        img = np.where(rim, 0.5 * img, img)
    # Joint space: thin intermediate signal (cartilage) between the plates.
    for j, ln in zip(joints, in_len, strict=True):
        space = _ramp(j.d - plate, 0.004) * _ramp(gap - plate - j.d, 0.004) * ln
        plates = (np.exp(-((j.d / plate) ** 2)) + np.exp(-(((j.d - gap) / plate) ** 2))) * ln
        img = img * (1.0 - 0.75 * np.clip(plates, 0.0, 1.0)) + 0.12 * space
    # Sacral canal (CSF, bright) and foramina (nerve roots in bright fat-suppressed fluid).
    canal_w = a.uniform(0.025, 0.04)
    canal = _ramp(canal_w - np.abs(x - a.uniform(-0.01, 0.01)), 0.01) * _ramp(y - y_top, 0.02)
    canal = canal * _ramp(y_top + a.uniform(0.25, 0.4) - y, 0.05)
    img = img + 0.45 * canal
    for k in range(4):
        fy = y_top + 0.12 + k * (y_bot - y_top - 0.15) / 4.0
        half_w = w_top + (w_bot - w_top) * (fy - y_top) / (y_bot - y_top)
        for side in (-1, 1):
            fx = side * 0.45 * half_w
            r = np.hypot(x - fx, y - fy)
            rad = 0.03 - 0.004 * k
            img = img + 0.25 * np.exp(-(((r - rad) / 0.008) ** 2)) * sacrum
    # L5/S1 disc above the sacrum (bright nucleus), L5 body above it.
    disc_y = y_top - a.uniform(0.06, 0.09)
    disc = _ramp(0.012 - np.abs(y - disc_y - 0.03 * x * x), 0.01) * _ramp(
        w_top * 0.85 - np.abs(x), 0.02
    )
    l5_shape = np.abs(x / (0.8 * w_top)) ** 4 + np.abs((y - disc_y + 0.3) / 0.27) ** 4
    l5 = _ramp(1.0 - l5_shape, 0.1)  # a rounded-rectangle vertebral body above the disc
    img = img * (1.0 - l5) + l5 * marrow_level * (1.1 + 0.25 * marrow_tex) + 0.35 * disc
    # Veins: bright tubular lines in the soft tissue (also mimics of oedema for a histogram).
    veins = np.zeros_like(x)
    for _ in range(int(a.integers(2, 6))):
        p0 = (a.uniform(-1, 1), a.uniform(-1, 1))
        ang, length = a.uniform(0, 2 * np.pi), a.uniform(0.1, 0.3)
        p1 = (p0[0] + length * np.cos(ang), p0[1] + length * np.sin(ang))
        ang += a.uniform(-1.0, 1.0)
        p2 = (p1[0] + length * np.cos(ang), p1[1] + length * np.sin(ang))
        d = np.minimum(_segment_dist(x, y, p0, p1), _segment_dist(x, y, p1, p2))
        veins = np.maximum(veins, np.exp(-((d / a.uniform(0.008, 0.016)) ** 2)))
    img = img + a.uniform(0.15, 0.35) * veins * (1.0 - bone)

    joint_region = np.zeros((size, size), dtype=bool)
    for j in joints:
        joint_region |= (
            (np.abs(j.d - gap / 2.0) < JOINT_MARGIN + gap / 2.0) & (j.t > 0.0) & (j.t < 1.0)
        )

    # ---- lesion: bone-marrow oedema and erosions -----------------------------------------
    oedema = np.zeros_like(x)  # added signal
    extent = np.zeros_like(x)  # where the oedema is (0..1), regardless of its signal
    meta: dict[str, Any] = {"stage": stage, "quadrants": []}
    if stage > 0:
        n_q = int(les.integers(_QUADRANTS[stage][0], _QUADRANTS[stage][1] + 1))
        quads = les.permutation(8)[:n_q]
        blotch = _smooth_noise(les, size, 16)
        for qd in quads:
            side_i, iliac, lower = int(qd) // 4, bool((int(qd) // 2) % 2), bool(int(qd) % 2)
            j = joints[side_i]
            depth_q = les.uniform(*_DEPTH[stage])
            length = les.uniform(*_LENGTH[stage])
            start = (0.5 if lower else 0.0) + les.uniform(0.0, 0.5 - length)
            centre = start + length / 2.0
            into = (j.d - gap) if iliac else -j.d  # distance into the bone from its plate
            host = ilium if iliac else sacrum
            along = np.exp(-((np.abs(j.t - centre) / (0.5 * length)) ** 4))
            across = np.exp(-((np.clip(into, 0.0, None) / depth_q) ** 1.5)) * _ramp(
                into + 0.004, 0.006
            )
            field_q = along * across * host * (0.8 + 0.25 * blotch)
            oedema = np.maximum(oedema, np.float32(les.uniform(*_SIGNAL[stage])) * field_q)
            extent = np.maximum(extent, field_q)
            where = ("image_left" if j.side < 0 else "image_right", "iliac" if iliac else "sacral")
            meta["quadrants"].append(f"{where[0]}-{where[1]}-{'lower' if lower else 'upper'}")
        # At small sizes a thin mild lesion can fall between pixel centres: keep its peak.
        mask = extent > min(MASK_LEVEL, 0.9 * float(extent.max()))
        img = img + oedema
        if stage == 3 and les.random() < 0.7:  # erosions: focal plate breaks filled with fluid
            n_er = int(les.integers(2, 6))
            meta["erosions"] = n_er
            for _ in range(n_er):
                j = joints[int(les.integers(0, 2))]
                t0, r_e = les.uniform(0.1, 0.9), les.uniform(0.012, 0.025)
                iliac_side = les.random() < 0.7
                d0 = gap + 0.5 * r_e if iliac_side else -0.5 * r_e
                cx = j.top[0] + t0 * (j.bottom[0] - j.top[0])
                cy = j.top[1] + t0 * (j.bottom[1] - j.top[1])
                off = float(j.offset(t0)) + d0
                cx, cy = cx + off * j.normal[0], cy + off * j.normal[1]
                hole = _ramp(r_e - np.hypot(x - cx, y - cy), 0.006)
                img = img * (1.0 - hole) + hole * les.uniform(0.45, 0.65)
    else:
        mask = np.zeros((size, size), dtype=bool)

    # ---- acquisition (nuisance) ------------------------------------------------------------
    img = np.clip(img, 0.0, None)
    if fatsat_fail:  # incomplete fat suppression: a smooth bright patch towards one edge
        fx, fy = nu.uniform(-1, 1, size=2)
        patch = np.exp(-((x - 1.3 * fx) ** 2 + (y - 1.3 * fy) ** 2) / nu.uniform(0.15, 0.4))
        img = img + fatsat_amp * patch.astype(np.float32)
    img = img * (1.0 + bias * _smooth_noise(nu, size, 3))
    img = gain * np.power(np.clip(img, 0.0, None), gamma)
    if ghost:  # motion ghost: a faint copy shifted along the phase-encode direction (rows)
        img = img + ghost_amp * np.roll(img, ghost_shift, axis=0)
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigmaX=blur)
    n1 = nu.standard_normal((size, size)).astype(np.float32) * np.float32(noise)
    n2 = nu.standard_normal((size, size)).astype(np.float32) * np.float32(noise)
    img = np.clip(np.hypot(img + n1, n2), 0.0, 1.0).astype(np.float32)

    meta.update(
        rotation_deg=float(np.rad2deg(frame.theta)),
        gain=gain,
        gamma=gamma,
        fat_suppression_failure=bool(fatsat_fail),
        ghost=bool(ghost),
    )
    return SacroiliacCase(
        image=img, mask=mask, joints=joint_region, label=label, stage=stage, meta=meta
    )


def render_sacroiliitis_phantom(
    rng: np.random.Generator, label: str, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image (float32 ``H x W`` in [0, 1]), oedema mask and joint mask (bool) of one phantom."""
    case = render_sacroiliitis_case(rng, label, size)
    return case.image, case.mask, case.joints


def _sij_row(
    rng: np.random.Generator, label: str, size: int
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    case = render_sacroiliitis_case(rng, label, size)
    files = {
        "path": _to_uint8(case.image),
        "mask_path": case.mask.astype(np.uint8) * 255,
        "joint_mask_path": case.joints.astype(np.uint8) * 255,
    }
    return files, {"stage": case.stage, "detected": int(case.stage > 0)}


def generate_sacroiliitis_phantoms(
    out_dir: Path, n: int = 600, size: int = 128, seed: int = 0
) -> Path:
    """Write ``n`` SIJ MRI phantoms under ``out_dir``; returns ``manifest.csv``.

    Layout: ``images/sij_00000.png`` (8-bit grey), ``masks/sij_00000.png`` (oedema 255),
    ``joint_masks/sij_00000.png`` (both joint regions 255) and ``manifest.csv`` with
    ``path,label,patient_id,mask_path,joint_mask_path,stage,detected`` (``stage`` 0-3 in the
    order none, mild, moderate, severe; ``detected`` = 1 unless ``none``). Needs ``size >= 32``.
    See :func:`~medlens.data.phantoms.liver.write_phantom_set` for determinism.
    """
    return write_phantom_set(
        out_dir,
        n=n,
        size=size,
        seed=seed,
        classes=SACROILIITIS_CLASSES,
        prefix="sij",
        render=_sij_row,
        folders={"path": "images", "mask_path": "masks", "joint_mask_path": "joint_masks"},
        extra_columns=("stage", "detected"),
        min_size=32,
    )
