"""Which recipe a command runs: a named or given one, or a generic one built from the data.

``medlens train --data FOLDER`` (no recipe) and ``medlens split FOLDER`` (no ``--recipe``) both
build the same generic recipe from the data — classes from the sub-folder names (or the CSV's
labels), sorted — so the two draw the same split for the same data and seed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from medlens.errors import MedlensError

GENERIC_SIZE = 128


def _name_for(path: Path) -> str:
    base = (
        path.name if path.is_dir() else path.parent.name if path.stem == "manifest" else path.stem
    )
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("_.") or "generic"


def generic_recipe(data: Path) -> Any:
    """A small CNN for the classes the data holds, preprocessing chosen from its first image.

    The classes are the sub-folders' names (or a CSV's labels) in sorted order; no class is
    treated as a priority finding, so the decision is the most probable class. Grey images are
    kept grey (colour ones as RGB) and resized to at most ``GENERIC_SIZE`` pixels.
    """
    from medlens.data.manifest import from_csv, from_folder
    from medlens.recipes import parse_recipe

    path = data.expanduser().resolve()
    if not path.exists():
        raise MedlensError(f"data not found: {path}")
    if path.suffix == ".npz":
        raise MedlensError(
            f"{path}: an .npz needs a recipe naming its classes (data.label_map); "
            "give one, e.g. `medlens train RECIPE --data FILE.npz`"
        )
    csv_path = path / "manifest.csv" if path.is_dir() else path
    if path.is_dir() and not csv_path.is_file():
        manifest, source = from_folder(path), "folder"
    else:
        manifest, source = from_csv(csv_path), "csv"
    if len(manifest.classes) < 2:
        raise MedlensError(
            f"{path}: found {len(manifest.classes)} class(es) {manifest.classes}; a classifier "
            "needs two or more (one sub-folder per class)"
        )
    grey, size = True, GENERIC_SIZE
    try:
        arr = manifest.samples[0].load().array
        grey = arr.ndim == 2
        size = max(32, min(GENERIC_SIZE, *arr.shape[:2]))
    except MedlensError:
        pass  # an unreadable first file: grey at the default size, the run reports the file
    channels = 1 if grey else 3
    recipe = {
        "name": _name_for(path),
        "description": f"Generic classifier for the classes found in {path}.",
        "task": {"classes": manifest.classes},
        "data": {"source": source, "path": str(path)},
        "preprocess": [
            {"step": "grayscale" if grey else "rgb"},
            {"step": "resize", "size": size},
            {"step": "normalize", "mean": [0.5] * channels, "std": [0.25] * channels},
        ],
        "model": {"name": "small_cnn"},
    }
    return parse_recipe(recipe, f"generic recipe for {path}")


def resolve_recipe(recipe: str | None, data: Path | None) -> Any:
    """The recipe a training command runs (``recipe`` wins; else the generic one for ``data``)."""
    from medlens.recipes import load_recipe

    if recipe is not None:
        return load_recipe(recipe)
    if data is None:
        raise MedlensError(
            "give a recipe (a YAML file or a built-in name such as chest_xray), or --data FOLDER "
            "to train a generic classifier on the folder's class sub-folders"
        )
    return generic_recipe(data)
