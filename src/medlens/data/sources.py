"""The labelled data a recipe names: its own phantoms (generated once) or the user's folder/CSV/npz.

Lives at the data layer so every caller — a run, k-fold, ``medlens split``, an ONNX export
checking a bundle on its validation images, external evaluation — reads a recipe's data one way,
without importing the workflow that sits downstream of them.
"""

from __future__ import annotations

import json
from pathlib import Path

from medlens.data.manifest import Manifest, load_manifest
from medlens.recipes import Recipe


def ensure_phantoms(recipe: Recipe, root: Path) -> Path:
    """Generate the recipe's phantom data set once (deterministic; reused when present)."""
    from medlens.data.phantoms import generate_phantoms

    ph = recipe.data.phantoms
    out = root / f"phantoms_{ph.kind}_n{ph.n}_s{ph.size}_seed{ph.seed}"
    manifest = out / "manifest.csv"
    stamp = out / "params.json"
    params = {"kind": ph.kind, "n": ph.n, "size": ph.size, "seed": ph.seed}
    if manifest.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == params:
        return manifest
    generate_phantoms(ph.kind, out, n=ph.n, size=ph.size, seed=ph.seed)
    stamp.write_text(json.dumps(params))
    return manifest


def recipe_manifest(recipe: Recipe, data: str | Path | None, work_dir: Path) -> Manifest:
    """The manifest of ``data`` (or, with none given, of the recipe's own data; phantoms are
    generated under ``work_dir/data``), with the columns the recipe reads."""
    path = recipe.data_path(data)
    if recipe.data.source == "phantoms" and data is None:
        path = ensure_phantoms(recipe, work_dir / "data")
    return load_manifest(
        recipe.data, path, recipe.task.classes, recipe.extra_columns(), recipe.path_columns()
    )
