"""Synthetic, offline data sets (phantoms) so every recipe runs without downloading anything.

Phantoms are procedurally rendered images with known ground truth (label and lesion mask). Their
nuisances (exposure, borders, noise, pose, burned-in markers) are drawn independently of the
label, so a model can only score well by finding the lesion itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from medlens.data.phantoms.chest import (
    CHEST_CLASSES,
    ChestCase,
    generate_chest_phantoms,
    render_chest_case,
    render_chest_phantom,
)
from medlens.errors import DataError

__all__ = [
    "CHEST_CLASSES",
    "PHANTOM_KINDS",
    "ChestCase",
    "generate_chest_phantoms",
    "generate_phantoms",
    "render_chest_case",
    "render_chest_phantom",
]

# kind (as written in a recipe's ``data.phantoms.kind``) -> generator(out_dir, n, size, seed).
PHANTOM_KINDS: dict[str, Callable[..., Path]] = {"chest_xray": generate_chest_phantoms}


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
