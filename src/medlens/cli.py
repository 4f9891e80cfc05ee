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
    allow_leakage: Annotated[
        bool, typer.Option(help="train even if copies or patients cross splits (reported)")
    ] = False,
    progress: Annotated[bool | None, typer.Option(help="show progress bars")] = None,
) -> None:
    """Train a recipe, evaluate it on its held-out test split and write a verified bundle."""
    from medlens.recipes import load_recipe
    from medlens.workflow import run_recipe

    r = load_recipe(recipe)
    if epochs is not None:
        r.train.epochs = epochs
    if allow_leakage:
        r.split.allow_leakage = True
    result = run_recipe(
        r, out, data=data, progress=_progress_enabled(progress), fresh=fresh, track=track
    )
    _print_run(result)


@app.command()
def compare(
    recipe: Annotated[str, typer.Argument(help="recipe YAML file or built-in name")],
    data: Annotated[
        Path | None, typer.Option(help="data folder, CSV or .npz (overrides the recipe)")
    ] = None,
    out: Annotated[Path, typer.Option(help="runs folder")] = Path("runs"),
    epochs: Annotated[int | None, typer.Option(help="override train.epochs for all")] = None,
    only: Annotated[
        list[str] | None, typer.Option(help="train only these candidate labels (repeatable)")
    ] = None,
    track: Annotated[bool, typer.Option(help="log the runs to MLflow (<out>/mlflow.db)")] = True,
    progress: Annotated[bool | None, typer.Option(help="show progress bars")] = None,
) -> None:
    """Train the recipe's model and its candidates on one split; print a leaderboard."""
    from medlens.evaluate.intervals import fmt_ci
    from medlens.recipes import load_recipe
    from medlens.workflow import compare_recipe

    r = load_recipe(recipe)
    if epochs is not None:
        r.train.epochs = epochs
    rows = compare_recipe(
        r, out, data=data, progress=_progress_enabled(progress), track=track, only=only
    )
    table = Table(title=f"{r.name}: held-out test split (95 % bootstrap intervals)")
    for col in ("candidate", "model", "macro-F1", "balanced acc.", "macro AUC", "ECE", "time"):
        table.add_column(col)
    for row in rows:
        ece = row["ece_calibrated"]
        table.add_row(
            row["label"],
            row["model"],
            fmt_ci(row["macro_f1"]),
            fmt_ci(row["balanced_accuracy"]),
            fmt_ci(row["macro_roc_auc"]),
            "n/a" if ece is None else f"{ece:.3f}",
            f"{row['seconds']:.0f} s",
        )
    console.print(table)
    console.print(
        f"n = {rows[0]['n_test'] if rows else 0} test images, the same for every candidate. "
        "Overlapping intervals: the test set cannot separate those models."
    )


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


def _data_manifest(data: Path, recipe: str | None):  # type: ignore[no-untyped-def]
    from medlens.data.manifest import from_folder, load_manifest
    from medlens.recipes import load_recipe

    path = data.expanduser().resolve()
    if recipe is None:
        if path.is_dir() and not (path / "manifest.csv").is_file():
            return from_folder(path), None
        from medlens.data.manifest import from_csv

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
        Path | None, typer.Option(help="another folder (e.g. a test set) to check for leakage")
    ] = None,
    splits: Annotated[Path | None, typer.Option(help="a splits.csv to check for leakage")] = None,
    out: Annotated[Path, typer.Option(help="report folder")] = Path("audit"),
    near_threshold: Annotated[
        int, typer.Option(help="perceptual-hash distance for near copies")
    ] = 12,
    probe: Annotated[bool, typer.Option(help="run the shortcut probe")] = True,
    progress: Annotated[bool | None, typer.Option(help="show progress bars")] = None,
) -> None:
    """Find unreadable files, duplicates, leakage and shortcuts; write an HTML + JSON report."""
    from medlens.data.audit import audit as run_audit
    from medlens.data.audit import write_audit
    from medlens.data.manifest import from_folder
    from medlens.data.splits import read_splits

    if against is not None and splits is not None:
        raise MedlensError("give either --against or --splits, not both")
    manifest, _ = _data_manifest(data, recipe)
    other = from_folder(against, manifest.classes) if against is not None else None
    sp = read_splits(splits, manifest) if splits is not None else None
    rep = run_audit(
        manifest,
        splits=sp,
        against=other,
        near_threshold=near_threshold,
        probe=probe,
        progress=_progress_enabled(progress),
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
        str | None, typer.Option(help="recipe giving classes and split settings")
    ] = None,
    out: Annotated[Path, typer.Option(help="where to write the splits CSV")] = Path("splits.csv"),
    progress: Annotated[bool | None, typer.Option(help="show progress bars")] = None,
) -> None:
    """Stratified, patient-grouped train/val/test split that keeps every copy with its original."""
    from medlens.data.audit import duplicate_groups
    from medlens.data.splits import make_splits, write_splits
    from medlens.recipes import SplitConfig

    manifest, r = _data_manifest(data, recipe)
    cfg = r.split if r is not None else SplitConfig()
    copies = (
        duplicate_groups(
            manifest, near_threshold=cfg.copy_threshold, progress=_progress_enabled(progress)
        )
        if cfg.group_copies
        else {}
    )
    s = make_splits(manifest, cfg.val, cfg.test, cfg.seed, cfg.group_by_patient, copies=copies)
    write_splits(s, manifest, out)
    c = s.counts()
    console.print(
        f"train {c['train']}, val {c['val']}, test {c['test']}; "
        f"{len(set(copies.values()))} copy group(s) kept together; written to {out}"
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
def explain(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    images: Annotated[list[Path], typer.Argument(help="image files")],
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
    """Heatmaps over the original images, with localisation scores when masks are given."""
    from medlens.explain import explain_images
    from medlens.inference import DISCLAIMER, Predictor

    if mask and len(mask) != len(images):
        raise MedlensError(f"give one --mask per image ({len(images)} images, {len(mask)} masks)")
    predictor = Predictor.from_bundle(bundle)
    records = explain_images(predictor, images, method, out, mask)
    t = Table(title=f"{method} — {predictor.model_name}", caption=DISCLAIMER)
    for col in ("image", "explained class", "overlay", "pointing game", "energy in mask"):
        t.add_column(col)
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


@app.command()
def serve(
    bundle: Annotated[list[Path], typer.Option(help="bundle folder (repeat for several models)")],
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    workspace: Annotated[Path, typer.Option(help="database, uploads and results")] = Path(
        "medlens-workspace"
    ),
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="DATABASE_URL", help="SQLAlchemy URL (default: SQLite in the workspace)"
        ),
    ] = None,
    max_upload_mb: Annotated[int, typer.Option(help="largest upload accepted")] = 20,
    signup_closed: Annotated[bool, typer.Option(help="start with sign-up closed")] = False,
) -> None:
    """Start the clinician web service (FastAPI + SQLite/PostgreSQL) on the given bundles."""
    try:
        from medlens.serve import run
    except ImportError as exc:
        raise MedlensError(
            f"the web service needs its extras: pip install 'medlens[serve]' ({exc})"
        ) from None
    run(
        bundle,
        host=host,
        port=port,
        database_url=database_url,
        workspace=workspace,
        max_upload_mb=max_upload_mb,
        signup_open=not signup_closed,
    )


@app.command("serve-admin")
def serve_admin(
    username: Annotated[str, typer.Argument(help="account name")],
    workspace: Annotated[Path, typer.Option(help="the service's workspace")] = Path(
        "medlens-workspace"
    ),
    database_url: Annotated[str | None, typer.Option(envvar="DATABASE_URL")] = None,
    role: Annotated[str, typer.Option(help="admin or clinician")] = "admin",
) -> None:
    """Create an account for the web service (password asked for, never echoed)."""
    from medlens.serve import create_account

    password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    create_account(username, password, role=role, workspace=workspace, database_url=database_url)
    console.print(f"account {username!r} ({role}) created")


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
    _print_other_outputs(m)
    console.print(f"bundle: {result.bundle_dir}  ({result.seconds:.0f} s)")
    if result.report is not None:
        console.print(f"report: {result.report}")


def _print_other_outputs(m: dict) -> None:
    """Ensemble members, extra heads and segmentation: held-out figures with intervals."""
    from medlens.evaluate.intervals import fmt_ci

    if "members" in m:
        t = Table(title="Ensemble members (test; each trained on the same split)")
        for col in ("member", "weight", "macro-F1", "macro AUC"):
            t.add_column(col)
        for label, r in m["members"].items():
            t.add_row(
                label, f"{r['weight']:.3f}", fmt_ci(r["macro_f1"]), fmt_ci(r["macro_roc_auc"])
            )
        ov = m["intervals"]["overall"]
        t.add_row("ensemble", "1", fmt_ci(ov["macro_f1"]), fmt_ci(ov["macro_roc_auc"]))
        console.print(t)
    for name, h in (m.get("heads") or {}).items():
        if h.get("type") == "regression":
            console.print(
                f"head {name} (test, n={h['n']}): MAE {fmt_ci(h['mae'])}, Pearson r "
                f"{fmt_ci(h['pearson_r'])}"
            )
        elif "overall" in h:
            o = h["overall"]
            console.print(
                f"head {name} (test, n={h['n']}): accuracy {fmt_ci(o['accuracy'])}, macro-F1 "
                f"{fmt_ci(o['macro_f1'])}, kappa ({h['kappa_weighting']}) {fmt_ci(o['kappa'])}"
            )
    if "segmentation" in m:
        sm = m["segmentation"]
        console.print(
            f"segmentation (test, n={sm['n']}): Dice {fmt_ci(sm['dice'])}, IoU {fmt_ci(sm['iou'])}"
        )


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
