"""Data commands: ``phantoms``, ``audit``, ``split`` and ``slices``."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from medlens.cli._app import app, console, progress_enabled
from medlens.errors import MedlensError

ProgressOpt = Annotated[bool | None, typer.Option(help="show progress bars")]


@app.command()
def phantoms(
    kind: Annotated[str, typer.Argument(help="phantom kind, e.g. chest_xray")],
    out: Annotated[Path, typer.Argument(help="output folder")],
    n: Annotated[int, typer.Option(help="number of images")] = 600,
    size: Annotated[int, typer.Option(help="image size in pixels")] = 128,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
) -> None:
    """Generate a deterministic synthetic data set with lesion masks and a manifest CSV."""
    from medlens.data.phantoms import generate_phantoms

    manifest = generate_phantoms(kind, out, n=n, size=size, seed=seed)
    console.print(f"wrote {n} {kind} phantoms; manifest: [bold]{manifest}[/]")


def _data_manifest(data: Path, recipe: str | None):  # type: ignore[no-untyped-def]
    """The data as the audit sees it: every class folder (or label), or the recipe's classes."""
    from medlens.data.manifest import from_csv, from_folder, load_manifest
    from medlens.recipes import load_recipe

    path = data.expanduser().resolve()
    if recipe is None:
        if path.is_dir() and not (path / "manifest.csv").is_file():
            return from_folder(path), None
        return from_csv(path / "manifest.csv" if path.is_dir() else path), None
    r = load_recipe(recipe)
    return load_manifest(r.data, path, r.task.classes), r


@app.command()
def audit(
    data: Annotated[Path, typer.Argument(help="class folders, a CSV or .npz")],
    recipe: Annotated[
        str | None, typer.Option(help="recipe giving classes and data columns")
    ] = None,
    against: Annotated[
        Path | None,
        typer.Option(
            help="another data set to check for leakage: class folders, a CSV manifest or a "
            "phantom folder (with manifest.csv)"
        ),
    ] = None,
    splits: Annotated[Path | None, typer.Option(help="a splits.csv to check for leakage")] = None,
    out: Annotated[Path, typer.Option(help="report folder")] = Path("audit"),
    near_threshold: Annotated[
        int, typer.Option(help="perceptual-hash distance for near copies")
    ] = 12,
    probe: Annotated[bool, typer.Option(help="run the shortcut probe")] = True,
    progress: ProgressOpt = None,
) -> None:
    """Find unreadable files, duplicates, leakage and shortcuts; write an HTML + JSON report."""
    from medlens.data.audit import audit as run_audit
    from medlens.data.audit import load_against, write_audit
    from medlens.data.splits import read_splits

    if against is not None and splits is not None:
        raise MedlensError("give either --against or --splits, not both")
    manifest, _ = _data_manifest(data, recipe)
    other = load_against(against, manifest.classes) if against is not None else None
    sp = read_splits(splits, manifest) if splits is not None else None
    rep = run_audit(
        manifest,
        splits=sp,
        against=other,
        near_threshold=near_threshold,
        probe=probe,
        progress=progress_enabled(progress),
    )
    html_path, json_path = write_audit(rep, out)
    colours = {"ok": "green", "warning": "yellow", "critical": "bold red"}
    for f in rep.verdict:
        console.print(
            f"[{colours.get(f.severity, 'white')}]{f.severity}[/]: {f.message}", highlight=False
        )
    console.print(f"report: {html_path}  ({json_path})")
    if rep.severity == "critical":
        raise typer.Exit(1)


@app.command()
def split(
    data: Annotated[Path, typer.Argument(help="class folders, a CSV or .npz")],
    recipe: Annotated[
        str | None,
        typer.Option(help="recipe giving classes and split settings (default: the generic one)"),
    ] = None,
    out: Annotated[Path, typer.Option(help="where to write the splits CSV")] = Path("splits.csv"),
    progress: ProgressOpt = None,
) -> None:
    """Stratified, patient-grouped train/val/test split that keeps every copy with its original.

    It is drawn by the function `medlens train` uses, with the same copy grouping, so the same
    data, recipe and seed give the same split; `medlens train --splits FILE` trains on it.
    """
    from medlens.cli._recipes import resolve_recipe
    from medlens.workflow import leakage_checked_splits, recipe_manifest

    r = resolve_recipe(recipe, data)
    with tempfile.TemporaryDirectory(prefix="medlens-split-") as tmp:
        manifest = recipe_manifest(r, data, Path(tmp))
        splits, _, info = leakage_checked_splits(r, manifest, Path(tmp), progress_enabled(progress))
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp) / "splits.csv", out)
    c = splits.counts()
    console.print(
        f"train {c['train']}, val {c['val']}, test {c['test']}; "
        f"{info.get('copy_groups', 0)} copy group(s) kept together; written to {out}"
    )


def _pairs(values: list[str] | None, option: str) -> list[tuple[str, str]]:
    out = []
    for v in values or []:
        name, sep, rest = v.partition("=")
        if not sep or not name or not rest:
            raise typer.BadParameter(f"{v!r}: write NAME=VALUE", param_hint=option)
        out.append((name, rest))
    return out


@app.command()
def slices(
    volumes: Annotated[list[Path], typer.Argument(help="NIfTI volumes, or folders of them")],
    out: Annotated[Path, typer.Argument(help="output folder (PNGs + manifest.csv)")],
    mask: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME=PATH",
            help="a mask volume or folder of them in mask set NAME (repeat; several files of "
            "one subject in a set need --combine)",
        ),
    ] = None,
    combine: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME=RULE",
            help="merge a set's files per subject: union, majority, intersection",
        ),
    ] = None,
    label_from: Annotated[
        str | None, typer.Option(metavar="NAME", help="label slices from this mask set")
    ] = None,
    positive: Annotated[str, typer.Option(help="label of a slice with mask pixels")] = "inflamed",
    negative: Annotated[str, typer.Option(help="label of a slice without")] = "none",
    min_pixels: Annotated[int, typer.Option(help="mask pixels that make a slice positive")] = 1,
    unlabelled: Annotated[str, typer.Option(help="label without --label-from")] = "unlabelled",
    allow_missing_masks: Annotated[
        bool, typer.Option(help="a subject may lack a mask set")
    ] = False,
    id_pattern: Annotated[
        str | None, typer.Option(help="regex on file names; group 1 is the subject id")
    ] = None,
    percentiles: Annotated[
        tuple[float, float], typer.Option(help="intensity range per volume (low, high)")
    ] = (1.0, 99.5),
    bit_depth: Annotated[int, typer.Option(help="PNG bits per pixel: 8 or 16")] = 8,
    overwrite: Annotated[bool, typer.Option(help="replace an existing manifest.csv")] = False,
) -> None:
    """Cut NIfTI volumes (and mask volumes) into per-slice PNGs and a manifest.csv.

    One intensity scale per volume; masks aligned slice by slice; subject id = patient_id.

    Example: medlens slices sij/images slices --mask inflammation=sij/R11 --label-from inflammation
    """
    from medlens.data.volumes import DEFAULT_ID_PATTERN, volumes_to_slices

    if bit_depth not in (8, 16):
        raise typer.BadParameter("8 or 16", param_hint="--bit-depth")
    masks: dict[str, list[str]] = {}
    for name, path in _pairs(mask, "--mask"):
        masks.setdefault(name, []).append(path)
    try:
        export = volumes_to_slices(
            volumes,
            out,
            masks,
            label_from=label_from,
            positive_label=positive,
            negative_label=negative,
            min_pixels=min_pixels,
            unlabelled=unlabelled,
            combine=dict(_pairs(combine, "--combine")),  # type: ignore[arg-type]  # checked there
            allow_missing_masks=allow_missing_masks,
            id_pattern=id_pattern or DEFAULT_ID_PATTERN,
            percentiles=percentiles,
            bit_depth=bit_depth,  # type: ignore[arg-type]
            overwrite=overwrite,
        )
    except ValueError as exc:  # a bad --min-pixels or label, named by the function
        raise MedlensError(str(exc)) from None
    console.print(export.summary(), highlight=False)
