"""Commands that run a bundle on images: ``predict``, ``explain`` and ``evaluate``.

``predict`` shows what every other channel shows: the decision policy's answer first, the
threshold that fired, then the most probable class and its calibrated probability. A probability
below 1 is never printed as 100 %.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from medlens.cli._app import app, console, err_console, progress_enabled
from medlens.errors import MedlensError

ProgressOpt = Annotated[bool | None, typer.Option(help="show progress bars")]
ROWS_SHOWN = 20  # more inputs than this: a summary instead of one row per file
OPTIONAL = ("status", "reason", "prediction_set")  # fields later features add to a Prediction


def collect_files(paths: Sequence[Path]) -> list[Path]:
    """Files as given, and every supported image under each folder (sorted, recursive)."""
    from medlens.data.io import is_supported

    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and is_supported(f))
        else:
            files.append(p)
    if not files:
        raise MedlensError(
            "no image files given (supported: PNG, JPEG, BMP, TIFF, DICOM, NIfTI) in "
            + ", ".join(map(str, paths))
        )
    return files


def pct(p: float | None) -> str:
    """A probability as a percentage, never "100 %" below 1 (nor "0 %" above 0)."""
    from medlens.serve.formatting import pct as fmt

    return fmt(p, 1)


def _threshold(r: Any) -> str:
    if r.decision_rule != "policy":
        return "argmax (no policy)"
    return "argmax" if r.decision_threshold is None else f"{r.decision_threshold:.3f}"


def _optional(results: Sequence[Any]) -> list[str]:
    """The later-feature columns some prediction actually carries."""
    preds = [r for r in results if not isinstance(r, Exception)]
    return [a for a in OPTIONAL if any(getattr(r, a, None) is not None for r in preds)]


def _cell(v: Any) -> str:
    if v is None:
        return ""
    return "{" + ", ".join(map(str, v)) + "}" if isinstance(v, list | tuple | set) else str(v)


def prediction_table(
    predictor: Any,
    files: Sequence[str | Path],
    results: Sequence[Any],
    title: str | None = None,
    truth: Sequence[str] | None = None,
) -> Any:
    """One row per input: decision, threshold, most probable class and its calibrated
    probability (every class's probability is in the CSV)."""
    from rich.table import Table

    from medlens.inference import DISCLAIMER

    optional = _optional(results)
    t = Table(title=title or f"Predictions — {predictor.model_name}", caption=DISCLAIMER)
    t.add_column("image", overflow="fold")
    if truth is not None:
        t.add_column("true")
    for col in ("decision", "threshold fired", "most probable", "probability"):
        t.add_column(col, justify="left" if col != "probability" else "right")
    for col in optional:
        t.add_column(col.replace("_", " "), overflow="fold")
    for i, (f, r) in enumerate(zip(files, results, strict=True)):
        lead = [str(f)] + ([truth[i]] if truth is not None else [])
        if isinstance(r, Exception):
            blanks = [""] * (3 + len(optional))
            t.add_row(*lead, "[red]unreadable[/]", *blanks)
            continue
        t.add_row(
            *lead,
            f"[bold]{r.decision or r.label}[/]",
            _threshold(r),
            r.label,
            pct(r.confidence),
            *[_cell(getattr(r, a, None)) for a in optional],
        )
    return t


def _summary_table(predictor: Any, results: Sequence[Any], n_err: int) -> Any:
    from rich.table import Table

    from medlens.inference import DISCLAIMER

    t = Table(
        title=f"{len(results)} images — {predictor.model_name} (decisions of the policy)",
        caption=DISCLAIMER,
    )
    t.add_column("decision")
    t.add_column("images", justify="right")
    decisions = Counter(r.decision or r.label for r in results if not isinstance(r, Exception))
    for c in predictor.classes:
        t.add_row(c, str(decisions.get(c, 0)))
    for a in ("status",):
        for value, n in Counter(
            str(getattr(r, a)) for r in results if getattr(r, a, None) is not None
        ).items():
            t.add_row(f"{a}: {value}", str(n))
    if n_err:
        t.add_row("[red]unreadable[/]", str(n_err))
    return t


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    paths: Annotated[list[Path], typer.Argument(help="image files or folders")],
    out: Annotated[Path | None, typer.Option(help="write predictions CSV here")] = None,
    skip_unreadable: Annotated[
        bool, typer.Option(help="exit 0 even when some inputs could not be read")
    ] = False,
    progress: ProgressOpt = None,
) -> None:
    """Predict images (files or folders): the policy's decision, the threshold that fired, the
    most probable class and calibrated probabilities; optionally a CSV.

    Exits 1 when an input could not be read (unless --skip-unreadable), 2 when none could.
    """
    from medlens.inference import Predictor, write_predictions_csv

    predictor = Predictor.from_bundle(bundle)
    files = collect_files(paths)
    results = predictor.predict_many(files, progress=progress_enabled(progress))
    errors = [(f, r) for f, r in zip(files, results, strict=True) if isinstance(r, Exception)]
    if len(files) <= ROWS_SHOWN:
        console.print(prediction_table(predictor, files, results))
    else:
        console.print(_summary_table(predictor, results, len(errors)))
        if out is None:
            console.print(f"{len(files)} images: add --out FILE.csv for one row per image")
    for f, r in errors[:ROWS_SHOWN]:
        err_console.print(f"[red]unreadable[/] {f}: {r}", highlight=False)
    if len(errors) > ROWS_SHOWN:
        more = f"in {out}" if out is not None else "(add --out FILE.csv to list them)"
        err_console.print(f"… and {len(errors) - ROWS_SHOWN} more unreadable {more}")
    if out is not None:
        write_predictions_csv(results, files, predictor.classes, out)
        console.print(f"predictions written to {out}")
    if errors:
        skipped = (
            " (skipped: --skip-unreadable)"
            if skip_unreadable
            else "; exit status 1 (--skip-unreadable accepts that)"
        )
        err_console.print(
            f"[bold]{len(errors)} of {len(files)} input(s) could not be read[/]{skipped}",
            highlight=False,
        )
        if len(errors) == len(files):
            raise typer.Exit(2)
        if not skip_unreadable:
            raise typer.Exit(1)


@app.command()
def explain(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    images: Annotated[list[Path], typer.Argument(help="image files or folders")],
    method: Annotated[
        str,
        typer.Option(
            help="gradcam, gradcam++, hirescam, eigencam, layercam, scorecam, smoothgradcam++"
        ),
    ] = "gradcam++",
    mask: Annotated[
        list[Path] | None, typer.Option(help="lesion mask per image (repeat, same order)")
    ] = None,
    out: Annotated[Path, typer.Option(help="folder for overlay PNGs")] = Path("explanations"),
) -> None:
    """Heatmaps over the original images (at their own resolution), with localisation scores
    when masks are given."""
    from rich.table import Table

    from medlens.explain import explain_images
    from medlens.inference import DISCLAIMER, Predictor

    files = collect_files(images)
    if mask and len(mask) != len(files):
        raise MedlensError(f"give one --mask per image ({len(files)} images, {len(mask)} masks)")
    predictor = Predictor.from_bundle(bundle)
    records = explain_images(predictor, files, method, out, mask, at_original=True)
    t = Table(title=f"{method} — {predictor.model_name}", caption=DISCLAIMER)
    for col in ("image", "explained class", "overlay", "pointing game", "energy in mask"):
        t.add_column(col, overflow="fold")
    for r in records:
        if r.error:
            t.add_row(r.path, "[red]unreadable[/]", r.error, "", "")
            continue
        sc = r.scores or {}
        t.add_row(
            r.path,
            r.explained_class or "",
            r.png or "",
            *[
                ("" if sc.get(k) is None else f"{float(sc[k]):.3f}")
                for k in ("pointing_game", "energy_in_mask")
            ],
        )
    console.print(t)
    n_err = sum(1 for r in records if r.error)
    console.print(f"{len(records) - n_err} overlay(s) in {out}")
    if n_err:
        err_console.print(f"[bold]{n_err} of {len(records)} image(s) could not be read[/]")
        raise typer.Exit(2 if n_err == len(records) else 1)


@app.command()
def evaluate(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    data: Annotated[Path, typer.Argument(help="labelled data: class folders, CSV or .npz")],
    out: Annotated[Path | None, typer.Option(help="write metrics JSON here")] = None,
    progress: ProgressOpt = None,
) -> None:
    """Evaluate a bundle on a labelled data set (all of it is treated as held-out test data)."""
    import yaml

    from medlens.cli.summaries import print_metrics
    from medlens.data.manifest import load_manifest
    from medlens.inference import Predictor
    from medlens.recipes import parse_recipe
    from medlens.workflow import evaluate_samples

    predictor = Predictor.from_bundle(bundle)
    recipe_path = predictor.bundle.path / "recipe.yaml"
    recipe = parse_recipe(yaml.safe_load(recipe_path.read_text()), str(recipe_path))
    manifest = load_manifest(
        recipe.data,
        data.expanduser().resolve(),
        predictor.classes,
        recipe.extra_columns(),
        recipe.path_columns(),
    )
    metrics, _, errors = evaluate_samples(
        predictor,
        manifest.samples,
        predictor.classes,
        recipe.evaluate.batch_size,
        progress_enabled(progress),
    )
    metrics["unreadable"] = errors
    print_metrics(metrics, f"{predictor.model_name} on {data}")
    for path, reason in list(errors.items())[:ROWS_SHOWN]:
        err_console.print(f"[yellow]skipped[/] {path}: {reason}", highlight=False)
    if len(errors) > ROWS_SHOWN:
        err_console.print(f"… {len(errors)} unreadable in all (see 'unreadable' in the JSON)")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2))
        console.print(f"metrics written to {out}")
