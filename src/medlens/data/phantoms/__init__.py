"""Synthetic, offline data sets (phantoms) so every recipe runs without downloading anything.

Phantoms are procedurally rendered images with known ground truth (label and lesion mask). Their
nuisances (exposure, borders, noise, pose, burned-in markers) are drawn independently of the
label, so a model can only score well by finding the lesion itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from medlens.data.phantoms.brain import (
    BRAIN_CLASSES,
    generate_brain_tumor_phantoms,
    render_brain_case,
    render_brain_tumor_phantom,
)
from medlens.data.phantoms.chest import (
    CHEST_CLASSES,
    ChestCase,
    generate_chest_phantoms,
    render_chest_case,
    render_chest_phantom,
)
from medlens.data.phantoms.liver import (
    LIVER_CLASSES,
    generate_liver_phantoms,
    render_liver_case,
    render_liver_phantom,
)
from medlens.data.phantoms.sacroiliac import (
    SACROILIITIS_CLASSES,
    generate_sacroiliitis_phantoms,
    render_sacroiliitis_case,
    render_sacroiliitis_phantom,
)
from medlens.data.phantoms.smear import (
    LEUKEMIA_CLASSES,
    generate_leukemia_phantoms,
    render_leukemia_case,
    render_leukemia_phantom,
)
from medlens.errors import DataError

__all__ = [
    "BRAIN_CLASSES",
    "CHEST_CLASSES",
    "LEUKEMIA_CLASSES",
    "LIVER_CLASSES",
    "PHANTOM_KINDS",
    "SACROILIITIS_CLASSES",
    "ChestCase",
    "generate_brain_tumor_phantoms",
    "generate_chest_phantoms",
    "generate_leukemia_phantoms",
    "generate_liver_phantoms",
    "generate_phantoms",
    "generate_sacroiliitis_phantoms",
    "render_brain_case",
    "render_brain_tumor_phantom",
    "render_chest_case",
    "render_chest_phantom",
    "render_leukemia_case",
    "render_leukemia_phantom",
    "render_liver_case",
    "render_liver_phantom",
    "render_sacroiliitis_case",
    "render_sacroiliitis_phantom",
]

# kind (as written in a recipe's ``data.phantoms.kind``) -> generator(out_dir, n, size, seed).
PHANTOM_KINDS: dict[str, Callable[..., Path]] = {
    "chest_xray": generate_chest_phantoms,
    "liver_fibrosis": generate_liver_phantoms,
    "leukemia": generate_leukemia_phantoms,
    "brain_tumor": generate_brain_tumor_phantoms,
    "sacroiliitis": generate_sacroiliitis_phantoms,
}


def generate_phantoms(
    kind: str, out_dir: str | Path, n: int = 600, size: int = 128, seed: int = 0
) -> Path:
    """Generate the phantom data set ``kind`` under ``out_dir``; returns its ``manifest.csv``."""
    try:
        generator = PHANTOM_KINDS[kind]
    except KeyError:
        known = ", ".join(sorted(PHANTOM_KINDS))
        raise DataError(
            f"data.phantoms.kind: unknown phantom kind {kind!r}; use one of: {known}"
        ) from None
    return generator(Path(out_dir), n=n, size=size, seed=seed)
