"""Which images an export is checked and calibrated on: the run's validation split.

A bundle written by ``medlens train`` sits in its run folder beside ``splits.csv``; its recipe
(inside the bundle) says where the data is. So by default the export rebuilds the manifest from
the recipe (regenerating phantoms when that is the source, deterministically) and takes the
images ``splits.csv`` assigns to ``val`` — the same images that chose the temperature and the
thresholds, never the test split.

``data`` (``--calibration-data``) overrides the location: a labelled data set (class folders,
CSV or .npz, read with the bundle's recipe). When the run's ``splits.csv`` covers it, its
validation split is used; otherwise every image of it (say, a separate calibration set).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medlens.errors import DataError, MedlensError

if TYPE_CHECKING:
    from medlens.bundle import Bundle
    from medlens.data.manifest import Sample


@dataclass
class CheckImages:
    samples: list[Sample]
    source: str  # said in export.json: where the images came from


def _recipe(bundle: Bundle) -> Any:
    import yaml

    from medlens.recipes import parse_recipe

    path = bundle.path / "recipe.yaml"
    if not path.is_file():
        raise MedlensError(f"{bundle.path}: no recipe.yaml; give --calibration-data")
    return parse_recipe(yaml.safe_load(path.read_text()), str(path))


def validation_images(bundle: Bundle, data: str | Path | None = None) -> CheckImages:
    """The images to check an export on (see the module docstring)."""
    from medlens.data.manifest import load_manifest
    from medlens.data.splits import read_splits

    run_dir = bundle.path.resolve().parent
    splits_csv = run_dir / "splits.csv"
    if data is None and not splits_csv.is_file():
        raise MedlensError(
            f"{bundle.path} is not inside a run folder with splits.csv, so its validation images "
            "are unknown; give labelled images with --calibration-data FOLDER_OR_CSV"
        )
    recipe = _recipe(bundle)
    if data is not None:
        root = Path(data).expanduser().resolve()
        manifest = load_manifest(
            recipe.data, root, bundle.classes, recipe.extra_columns(), recipe.path_columns()
        )
        if splits_csv.is_file():
            try:
                val = read_splits(splits_csv, manifest).samples(manifest, "val")
            except DataError:
                val = []
            if val:
                return CheckImages(val, f"validation split ({splits_csv}) of {root}")
        return CheckImages(list(manifest.samples), f"all {len(manifest.samples)} images of {root}")
    from medlens.data.sources import recipe_manifest

    try:
        manifest = recipe_manifest(recipe, None, run_dir.parent)
        val = read_splits(splits_csv, manifest).samples(manifest, "val")
    except MedlensError as exc:
        raise MedlensError(
            f"the validation images of {run_dir} could not be found again ({exc}); if the run "
            "was trained with --data, give the same folder with --calibration-data"
        ) from None
    if not val:
        raise MedlensError(f"{splits_csv} assigns no image to val; give --calibration-data")
    return CheckImages(val, f"validation split of run {run_dir.name} ({splits_csv})")
