"""The ``medlens`` command.

Every command reports a problem with the user's input as one message (no traceback) and exits
with status 2; an interrupted training run is resumed by running the same command again.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from medlens.errors import MedlensError

app = typer.Typer(
    name="medlens",
    help="From a folder of labelled scans to a calibrated, explainable, verified screening model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def _setup_env() -> None:
    # Offline by default: hub downloads fail fast instead of hanging; telemetry off.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _progress_enabled(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


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


@app.command()
def train(
    recipe: Annotated[str, typer.Argument(help="recipe YAML file or built-in name")],
    data: Annotated[
        Path | None, typer.Option(help="data folder, CSV or .npz (overrides the recipe)")
    ] = None,
    out: Annotated[Path, typer.Option(help="runs folder")] = Path("runs"),
    epochs: Annotated[int | None, typer.Option(help="override train.epochs")] = None,
    fresh: Annotated[bool, typer.Option(help="ignore earlier checkpoints and train again")] = False,
    track: Annotated[bool, typer.Option(help="log the run to MLflow (<out>/mlflow.db)")] = True,
    progress: Annotated[bool | None, typer.Option(help="show progress bars")] = None,
) -> None:
    """Train a recipe, evaluate it on its held-out test split and write a verified bundle."""
    from medlens.recipes import load_recipe
    from medlens.workflow import run_recipe

    r = load_recipe(recipe)
    if epochs is not None:
        r.train.epochs = epochs
    result = run_recipe(
        r, out, data=data, progress=_progress_enabled(progress), fresh=fresh, track=track
    )
    _print_run(result)


@app.command()
def evaluate(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    data: Annotated[Path, typer.Argument(help="labelled data: class folders, CSV or .npz")],
    out: Annotated[Path | None, typer.Option(help="write metrics JSON here")] = None,
    progress: Annotated[bool | None, typer.Option(help="show progress bars")] = None,
) -> None:
    """Evaluate a bundle on a labelled data set (all of it is treated as held-out test data)."""
    from medlens.data.manifest import load_manifest
    from medlens.evaluate.metrics import confusion_table, metrics_table
    from medlens.inference import Predictor
    from medlens.recipes import parse_recipe
    from medlens.workflow import evaluate_samples

    predictor = Predictor.from_bundle(bundle)
    import yaml

    recipe = parse_recipe(
        yaml.safe_load((predictor.bundle.path / "recipe.yaml").read_text()),
        str(predictor.bundle.path / "recipe.yaml"),
    )
    manifest = load_manifest(recipe.data, data.expanduser().resolve(), predictor.classes)
    metrics, _, errors = evaluate_samples(
        predictor,
        manifest.samples,
        predictor.classes,
        recipe.evaluate.batch_size,
        _progress_enabled(progress),
    )
    metrics["unreadable"] = errors
    console.print(metrics_table(metrics, f"{predictor.model_name} on {data}"))
    console.print(confusion_table(metrics))
    for path, reason in errors.items():
        err_console.print(f"[yellow]skipped[/] {path}: {reason}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2))
        console.print(f"metrics written to {out}")


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    paths: Annotated[list[Path], typer.Argument(help="image files or folders")],
    out: Annotated[Path | None, typer.Option(help="write predictions CSV here")] = None,
    progress: Annotated[bool | None, typer.Option(help="show progress bars")] = None,
) -> None:
    """Predict images (files or folders); prints a table, optionally writes CSV."""
    from medlens.data.io import is_supported
    from medlens.inference import DISCLAIMER, Prediction, Predictor, write_predictions_csv

    predictor = Predictor.from_bundle(bundle)
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and is_supported(f))
        else:
            files.append(p)
    if not files:
        raise MedlensError("no image files given (supported: PNG, JPEG, BMP, TIFF, DICOM, NIfTI)")
    results = predictor.predict_many(files, progress=_progress_enabled(progress))
    table = Table(title=f"Predictions — {predictor.model_name}", caption=DISCLAIMER)
    table.add_column("image")
    table.add_column("label")
    table.add_column("confidence", justify="right")
    for c in predictor.classes:
        table.add_column(f"p({c})", justify="right")
    n_err = 0
    for f, r in zip(files, results, strict=True):
        if isinstance(r, Prediction):
            table.add_row(
                str(f),
                r.label,
                f"{r.confidence:.3f}",
                *[f"{r.probabilities[c]:.3f}" for c in predictor.classes],
            )
        else:
            n_err += 1
            table.add_row(str(f), "[red]unreadable[/]", "", *[""] * len(predictor.classes))
            err_console.print(f"[red]error[/] {r}")
    console.print(table)
    if out is not None:
        write_predictions_csv(results, files, predictor.classes, out)
        console.print(f"predictions written to {out}")
    if n_err == len(files):
        raise typer.Exit(2)


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


@app.command()
def models(
    pattern: Annotated[str | None, typer.Argument(help="wildcard, e.g. 'resnet*'")] = None,
) -> None:
    """List model names the registry can build (medlens's own, then timm's)."""
    from medlens.models import list_models

    for name in list_models(pattern):
        console.print(name)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/demo"),
    n: Annotated[int, typer.Option(help="number of phantom images")] = 600,
    size: Annotated[int, typer.Option(help="phantom size in pixels")] = 128,
    epochs: Annotated[int | None, typer.Option(help="override the recipe's epochs")] = None,
    fresh: Annotated[bool, typer.Option(help="train again even if a finished run exists")] = False,
    progress: Annotated[bool | None, typer.Option(help="show progress bars")] = None,
) -> None:
    """The whole pipeline on chest X-ray phantoms: generate, train, evaluate, bundle, predict."""
    import time

    from medlens.inference import DISCLAIMER, Predictor
    from medlens.recipes import load_recipe
    from medlens.workflow import run_recipe

    t0 = time.perf_counter()
    recipe = load_recipe("chest_xray")
    recipe.data.source = "phantoms"
    recipe.data.phantoms.n, recipe.data.phantoms.size = n, size
    if epochs is not None:
        recipe.train.epochs = epochs
    console.rule("[bold]medlens demo[/]: chest X-ray screening on phantoms")
    result = run_recipe(recipe, out, progress=_progress_enabled(progress), fresh=fresh)
    if result.mlflow_run_id:
        console.print(f"tracked in MLflow as run {result.mlflow_run_id} ({out}/mlflow.db)")
    _print_run(result)

    predictor = Predictor.from_bundle(result.bundle_dir)
    rows = list(csvrows(result.run_dir / "test_predictions.csv"))
    picks = []
    for cls in recipe.task.classes:  # one test image per class
        picks += [r for r in rows if r["true"] == cls][:1]
    table = Table(
        title="Three test images through a fresh Predictor loaded from the bundle",
        caption=DISCLAIMER,
    )
    for col in ("image", "true", "most probable", "probability", "decision (policy)", "threshold"):
        table.add_column(col)
    for r in picks:
        p = predictor.predict(r["source"])
        thr = "—" if p.decision_threshold is None else f"{p.decision_threshold:.3f}"
        table.add_row(
            Path(r["source"]).name,
            r["true"],
            p.label,
            f"{p.confidence:.3f}",
            p.decision or p.label,
            thr,
        )
    console.print(table)
    console.print(
        f"[bold green]done[/] in {time.perf_counter() - t0:.0f} s — test macro-F1 "
        f"[bold]{result.metrics['macro_f1']:.3f}[/] on {result.metrics['n']} held-out images; "
        f"bundle: {result.bundle_dir}"
    )


def csvrows(path: Path):
    import csv

    with path.open(newline="", encoding="utf-8") as fh:
        yield from csv.DictReader(fh)


def _print_run(result) -> None:  # type: ignore[no-untyped-def]
    from medlens.evaluate.intervals import fmt_ci
    from medlens.evaluate.metrics import confusion_table, metrics_table

    c = result.split_counts
    console.print(
        f"splits: train {c['train']}, val {c['val']}, test {c['test']}"
        f"{' (reused ' + str(result.run_dir / 'splits.csv') + ')' if result.splits_reused else ''}"
    )
    if result.resumed:
        console.print("training reused/resumed from an earlier run's checkpoint")
    for path, reason in result.excluded.items():
        err_console.print(f"[yellow]excluded[/] {path}: {reason}")
    m = result.metrics
    console.print(metrics_table(m, "Held-out test metrics (calibrated, argmax)"))
    console.print(confusion_table(m))
    iv = m.get("intervals")
    if iv:

        def ci(d: dict) -> str:
            return fmt_ci(
                {k: float("nan") if d[k] is None else d[k] for k in ("value", "ci_low", "ci_high")}
            )

        t = Table(
            title=f"{int(iv['confidence_level'] * 100)} % bootstrap intervals (test, "
            f"{iv['n_bootstrap']} replicates)"
        )
        t.add_column("figure")
        t.add_column("value [CI]", justify="right")
        for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_roc_auc", "mcc", "kappa"):
            t.add_row(k, ci(iv["overall"][k]))
        for cls, pc in iv["per_class"].items():
            t.add_row(f"sensitivity {cls}", ci(pc["sensitivity"]))
        console.print(t)
    cal = m.get("calibration")
    if cal:
        console.print(
            f"calibration: temperature {cal['temperature']:.3f} (fitted on validation); test ECE "
            f"{cal['test_before']['ece']:.3f} → {cal['test_after']['ece']:.3f}, MCE "
            f"{cal['test_before']['mce']:.3f} → {cal['test_after']['mce']:.3f}"
        )
    pol = m.get("policy")
    if pol:
        t = Table(title="Argmax vs risk-prioritised policy (thresholds from validation; test)")
        for col in (
            "class",
            "threshold",
            "target",
            "sens. argmax",
            "sens. policy",
            "spec. argmax",
            "spec. policy",
        ):
            t.add_column(col, justify="right" if col != "class" else "left")
        for cls, r in pol["test"]["per_class"].items():
            thr = pol["thresholds"].get(cls)
            tgt = pol["targets"].get(cls)
            thr_s = "—" if thr is None else ("argmax" if thr >= 1.0 else f"{thr:.3f}")
            t.add_row(
                cls,
                thr_s,
                "—" if tgt is None else f"{tgt:.2f}",
                f"{r['argmax']['sensitivity']:.3f}",
                f"{r['policy']['sensitivity']:.3f}",
                f"{r['argmax']['specificity']:.3f}",
                f"{r['policy']['specificity']:.3f}",
            )
        console.print(t)
        mp = pol["test"]["missed_priority_positives"]
        change = "n/a" if mp["change_percent"] is None else f"{mp['change_percent']:+.0f} %"
        console.print(
            f"missed priority positives: argmax {mp['argmax']} → policy {mp['policy']} ({change})"
        )
        for rep in pol["validation"].values():
            if not rep.get("met", True):
                err_console.print(f"[yellow]warning[/] {rep.get('note')}")
    console.print(f"bundle: {result.bundle_dir}  ({result.seconds:.0f} s)")
    if result.report is not None:
        console.print(f"report: {result.report}")


def main() -> None:
    _setup_env()
    try:
        app(standalone_mode=False)
    except MedlensError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print(
            "interrupted — run the same command again to resume from the last checkpoint"
        )
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors arrive as ClickException
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
