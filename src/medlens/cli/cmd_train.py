"""Training commands: ``train``, ``compare``, ``demo``, ``report``, ``leaderboard``, ``promote``."""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path
from typing import Annotated

import typer

from medlens.cli._app import app, console, progress_enabled
from medlens.errors import MedlensError

ProgressOpt = Annotated[bool | None, typer.Option(help="show progress bars")]
DataOpt = Annotated[
    Path | None, typer.Option(help="data folder, CSV or .npz (overrides the recipe)")
]


def _use_splits(given: Path, run_dir: Path, fresh: bool) -> None:
    """Put a given splits CSV where the run reads it (the run checks it covers the data).

    A run folder already holding another split was trained (or started) on that one: replacing it
    quietly would test on images the checkpoint trained on, so that needs ``--fresh``.
    """
    if not given.is_file():
        raise MedlensError(f"splits file not found: {given}")
    target = run_dir / "splits.csv"
    if target.is_file() and not filecmp.cmp(given, target, shallow=False) and not fresh:
        raise MedlensError(
            f"{run_dir} already holds another split ({target}); add --fresh to train again on "
            f"{given}, or choose another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    if not target.is_file() or not filecmp.cmp(given, target, shallow=False):
        shutil.copyfile(given, target)


@app.command()
def train(
    recipe: Annotated[
        str | None,
        typer.Argument(help="recipe YAML file or built-in name (none: a generic one for --data)"),
    ] = None,
    data: DataOpt = None,
    out: Annotated[Path, typer.Option(help="runs folder")] = Path("runs"),
    epochs: Annotated[int | None, typer.Option(help="override train.epochs")] = None,
    splits: Annotated[
        Path | None, typer.Option(help="train on this split (a CSV from `medlens split`)")
    ] = None,
    fresh: Annotated[bool, typer.Option(help="ignore earlier checkpoints and train again")] = False,
    track: Annotated[bool, typer.Option(help="log the run to MLflow (<out>/mlflow.db)")] = True,
    allow_leakage: Annotated[
        bool, typer.Option(help="train even if copies or patients cross splits (reported)")
    ] = False,
    folds: Annotated[
        int | None,
        typer.Option(help="k-fold cross-validation: K runs, a pooled estimate, one bundle"),
    ] = None,
    by: Annotated[
        str | None,
        typer.Option(help="test figures per subgroup of this manifest column (or source_format)"),
    ] = None,
    progress: ProgressOpt = None,
    export: Annotated[
        bool, typer.Option(help="add the checked FP32 ONNX graph to the bundle (--no-export)")
    ] = True,
) -> None:
    """Train a recipe, evaluate it on its held-out test split and write a verified bundle.

    Without a recipe, `--data FOLDER` trains a generic small CNN whose classes are the folder's
    class sub-folders. `--folds K` trains K group-aware folds instead and keeps the bundle of
    the fold best on validation; `--by COLUMN` adds per-subgroup test figures to the report.
    """
    from medlens.cli._recipes import resolve_recipe
    from medlens.cli.summaries import print_run, print_subgroups
    from medlens.workflow import run_recipe

    r = resolve_recipe(recipe, data)
    if recipe is None:
        console.print(
            f"no recipe given: generic recipe [bold]{r.name}[/] (small CNN), classes "
            f"{r.task.classes} from {data}",
            highlight=False,
        )
    if epochs is not None:
        r.train.epochs = epochs
    if allow_leakage:
        r.split.allow_leakage = True
    if folds is not None:
        if splits is not None:
            raise MedlensError("--folds draws its own splits: give --folds or --splits, not both")
        from medlens.cli.summaries import print_crossval
        from medlens.crossval import run_crossval

        cv = run_crossval(
            r, out, folds, data=data, progress=progress_enabled(progress), fresh=fresh, track=track
        )
        print_crossval(cv.summary)
        return
    if splits is not None:
        _use_splits(splits, out.expanduser().resolve() / r.name, fresh)
    result = run_recipe(
        r,
        out,
        data=data,
        progress=progress_enabled(progress),
        fresh=fresh,
        track=track,
        export_onnx=export,
    )
    if result.mlflow_run_id:
        console.print(f"tracked in MLflow as run {result.mlflow_run_id} ({out}/mlflow.db)")
    if by is not None:
        from medlens.external import subgroups_for_run

        result.metrics["subgroups"] = subgroups_for_run(result.run_dir, r, data, by)
    print_run(result)
    print_subgroups(result.metrics.get("subgroups"))


@app.command()
def compare(
    recipe: Annotated[str, typer.Argument(help="recipe YAML file or built-in name")],
    data: DataOpt = None,
    out: Annotated[Path, typer.Option(help="runs folder")] = Path("runs"),
    epochs: Annotated[int | None, typer.Option(help="override train.epochs for all")] = None,
    only: Annotated[
        list[str] | None, typer.Option(help="train only these candidate labels (repeatable)")
    ] = None,
    track: Annotated[bool, typer.Option(help="log the runs to MLflow (<out>/mlflow.db)")] = True,
    progress: ProgressOpt = None,
) -> None:
    """Train the recipe's model and its candidates on one split; print a leaderboard."""
    from rich.table import Table

    from medlens.compare import compare_recipe
    from medlens.evaluate import figures as F
    from medlens.evaluate.intervals import fmt_ci
    from medlens.recipes import load_recipe

    r = load_recipe(recipe)
    if epochs is not None:
        r.train.epochs = epochs
    rows = compare_recipe(
        r, out, data=data, progress=progress_enabled(progress), track=track, only=only
    )
    figs = [f for f in F.leaderboard() if rows and f.key in rows[0]]
    table = Table(title=f"{r.name}: held-out test split (95 % bootstrap intervals)")
    for col in ("candidate", "model", *(F.column_name(f) for f in figs), "ECE", "time"):
        table.add_column(col)
    for row in rows:
        ece = row["ece_calibrated"]
        table.add_row(
            row["label"],
            row["model"],
            *(fmt_ci(row[f.key]) for f in figs),
            "n/a" if ece is None else f"{ece:.3f}",
            f"{row['seconds']:.0f} s",
        )
    console.print(table)
    console.print(
        f"n = {rows[0]['n_test'] if rows else 0} test images, the same for every candidate. "
        "Overlapping intervals: the test set cannot separate those models."
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/demo"),
    n: Annotated[int, typer.Option(help="number of phantom images")] = 600,
    size: Annotated[int, typer.Option(help="phantom size in pixels")] = 128,
    epochs: Annotated[int | None, typer.Option(help="override the recipe's epochs")] = None,
    fresh: Annotated[bool, typer.Option(help="train again even if a finished run exists")] = False,
    progress: ProgressOpt = None,
) -> None:
    """The whole pipeline on chest X-ray phantoms: generate, train, evaluate, bundle, predict."""
    import csv
    import time

    from medlens.cli.cmd_predict import prediction_table
    from medlens.cli.summaries import print_run
    from medlens.inference import Predictor
    from medlens.recipes import load_recipe
    from medlens.workflow import run_recipe

    t0 = time.perf_counter()
    recipe = load_recipe("chest_xray")
    recipe.data.source = "phantoms"
    recipe.data.phantoms.n, recipe.data.phantoms.size = n, size
    if epochs is not None:
        recipe.train.epochs = epochs
    console.rule("[bold]medlens demo[/]: chest X-ray screening on phantoms")
    result = run_recipe(recipe, out, progress=progress_enabled(progress), fresh=fresh)
    if result.mlflow_run_id:
        console.print(f"tracked in MLflow as run {result.mlflow_run_id} ({out}/mlflow.db)")
    print_run(result)

    predictor = Predictor.from_bundle(result.bundle_dir)
    with (result.run_dir / "test_predictions.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    picks = []
    for cls in recipe.task.classes:  # one test image per class
        picks += [r for r in rows if r["true"] == cls][:1]
    sources = [r["source"] for r in picks]
    table = prediction_table(
        predictor,
        [Path(src).name for src in sources],
        predictor.predict_many(sources),
        title="Test images through a fresh Predictor loaded from the bundle",
        truth=[r["true"] for r in picks],
    )
    console.print(table)
    console.print(
        f"[bold green]done[/] in {time.perf_counter() - t0:.0f} s — test macro-F1 "
        f"[bold]{result.metrics['macro_f1']:.3f}[/] on {result.metrics['n']} held-out images; "
        f"bundle: {result.bundle_dir}"
    )


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run folder written by `medlens train`")],
) -> None:
    """Regenerate a run's HTML report (and JSON) from the files the run wrote."""
    from medlens.evaluate.report import render_report

    console.print(f"report: {render_report(run_dir)}")


@app.command()
def leaderboard(
    runs: Annotated[Path, typer.Option(help="runs folder holding mlflow.db")] = Path("runs"),
    metric: Annotated[str, typer.Option(help="validation metric to rank on")] = "val_macro_f1",
    recipe: Annotated[str | None, typer.Option(help="only runs of this recipe")] = None,
) -> None:
    """Rank tracked runs on a validation metric (test figures shown with intervals)."""
    from rich.table import Table

    from medlens.track import leaderboard as board

    rows = board(runs, metric, recipe)
    t = Table(title=f"Leaderboard — ranked on {metric} (validation)")
    for col in ("#", "run id", "recipe", "model", metric, "test macro-F1 [95 % CI]"):
        t.add_column(col)
    for i, r in enumerate(rows, start=1):
        lo, hi = r["test_macro_f1_ci"]
        f1 = "n/a" if r["test_macro_f1"] is None else f"{r['test_macro_f1']:.3f}"
        ci = f" [{lo:.3f}–{hi:.3f}]" if lo is not None and hi is not None else ""
        t.add_row(
            str(i), r["run_id"], r["recipe"] or "", r["model"] or "", f"{r[metric]:.4f}", f1 + ci
        )
    console.print(t if rows else f"no tracked runs with {metric} in {runs}")


@app.command()
def promote(
    run_id: Annotated[str, typer.Argument(help="MLflow run id (see `medlens leaderboard`)")],
    out: Annotated[Path, typer.Option(help="where to write the bundle")] = Path("promoted"),
    runs: Annotated[Path, typer.Option(help="runs folder holding mlflow.db")] = Path("runs"),
) -> None:
    """Export a tracked run's verified bundle."""
    from medlens.track import promote as do_promote

    console.print(f"bundle of run {run_id} written to {do_promote(runs, run_id, out)} (verified)")
