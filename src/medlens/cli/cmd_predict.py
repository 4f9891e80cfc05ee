"""Commands that run a bundle on images: ``predict``, ``explain`` and ``evaluate``.

``predict`` shows what every other channel shows: the decision policy's answer first, the
threshold that fired, then the most probable class and its calibrated probability. A probability
below 1 is never printed as 100 %.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from medlens.cli._app import app, console, err_console, progress_enabled
from medlens.errors import MedlensError

ProgressOpt = Annotated[bool | None, typer.Option(help="show progress bars")]
EngineOpt = Annotated[
    str | None,
    typer.Option(help="auto (the bundle's checked ONNX graph if any), onnx, onnx-int8 or torch"),
]
PredictEngineOpt = Annotated[
    str | None,
    typer.Option(
        help="auto, onnx, onnx-int8, torch, or ray (the auto engine as Ray Data actors; "
        "needs medlens[ray])"
    ),
]
ROWS_SHOWN = 20  # more inputs than this: a summary instead of one row per file


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
    from medlens.common import pct as fmt

    return fmt(p, 1)


def _threshold(r: Any) -> str:
    if r.decision_rule != "policy":
        return "argmax (no policy)"
    return "argmax" if r.decision_threshold is None else f"{r.decision_threshold:.3f}"


def _cell(v: Any) -> str:
    if v is None:
        return ""
    return "{" + ", ".join(map(str, v)) + "}" if isinstance(v, list | tuple | set) else str(v)


def _status(r: Any) -> str:
    """``ok``, ``not assessed: <reason>`` (ungradable / out of distribution)."""
    status = getattr(r, "status", "ok")
    if status == "ok":
        return "ok"
    return f"[yellow]not assessed[/] ({status.replace('_', ' ')}): {getattr(r, 'reason', '')}"


def prediction_table(
    predictor: Any,
    files: Sequence[str | Path],
    results: Sequence[Any],
    title: str | None = None,
    truth: Sequence[str] | None = None,
) -> Any:
    """One row per input: whether it was assessed (and why not), decision, threshold, most
    probable class and its calibrated probability, and the conformal prediction set (every
    class's probability is in the CSV). A not-assessed image shows no class at all."""
    from rich.table import Table

    from medlens.inference import DISCLAIMER

    has_sets = getattr(predictor, "sets", None) is not None
    t = Table(title=title or f"Predictions — {predictor.model_name}", caption=DISCLAIMER)
    t.add_column("image", overflow="fold")
    if truth is not None:
        t.add_column("true")
    t.add_column("status", overflow="fold")
    for col in ("decision", "threshold fired", "most probable", "probability"):
        t.add_column(col, justify="left" if col != "probability" else "right")
    if has_sets:
        t.add_column("prediction set", overflow="fold")
    for i, (f, r) in enumerate(zip(files, results, strict=True)):
        lead = [str(f)] + ([truth[i]] if truth is not None else [])
        if isinstance(r, Exception):
            t.add_row(*lead, "[red]unreadable[/]", *[""] * (4 + has_sets))
            continue
        if getattr(r, "status", "ok") != "ok":
            t.add_row(*lead, _status(r), "—", "", "", "", *[""] * has_sets)
            continue
        ps = _cell(getattr(r, "prediction_set", None))
        if getattr(r, "uncertain", False):
            ps = f"[yellow]{ps} uncertain — human review[/]"
        t.add_row(
            *lead,
            "ok",
            f"[bold]{r.decision or r.label}[/]",
            _threshold(r),
            r.label,
            pct(r.confidence),
            *([ps] if has_sets else []),
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
    preds = [r for r in results if not isinstance(r, Exception)]
    assessed = [r for r in preds if getattr(r, "status", "ok") == "ok"]
    decisions = Counter(r.decision or r.label for r in assessed)
    for c in predictor.classes:
        t.add_row(c, str(decisions.get(c, 0)))
    for status, n in sorted(Counter(r.status for r in preds if r.status != "ok").items()):
        t.add_row(f"[yellow]not assessed[/]: {status.replace('_', ' ')}", str(n))
    if n_err:
        t.add_row("[red]unreadable[/]", str(n_err))
    return t


def _trust_notes(predictor: Any, results: Sequence[Any]) -> list[str]:
    """Lines said after every prediction run: what was not assessed, what is uncertain, and
    what the bundle could not check."""
    preds = [r for r in results if not isinstance(r, Exception)]
    out = [str(n) for n in getattr(getattr(predictor, "trust", None), "notes", [])]
    n_not = sum(1 for r in preds if r.status != "ok")
    if n_not:
        out.append(
            f"{n_not} of {len(preds)} image(s) not assessed (ungradable or unlike the training "
            "images): no class is given for them; a person reads them"
        )
    n_unc = sum(1 for r in preds if r.status == "ok" and r.uncertain)
    if n_unc:
        out.append(f"{n_unc} image(s) uncertain (prediction set of more than one class): review")
    return out


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    paths: Annotated[list[Path], typer.Argument(help="image files or folders")],
    out: Annotated[Path | None, typer.Option(help="write predictions CSV here")] = None,
    skip_unreadable: Annotated[
        bool, typer.Option(help="exit 0 even when some inputs could not be read")
    ] = False,
    progress: ProgressOpt = None,
    engine: PredictEngineOpt = None,
    batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 32,
    workers: Annotated[
        int, typer.Option(help="threads decoding images ahead (--engine ray: Ray actors)")
    ] = 2,
    ray_address: Annotated[
        str | None, typer.Option(help="--engine ray: a Ray cluster (default: a local Ray)")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="skip files already in the --out CSV (--no-resume: start over)")
    ] = True,
    dicom_out: Annotated[
        Path | None,
        typer.Option(help="also write a DICOM Structured Report per image here (UNVERIFIED)"),
    ] = None,
) -> None:
    """Predict images (files or folders): whether each was assessed (the input check refuses
    ungradable images and images unlike the training data, with the reason), the policy's
    decision, the threshold that fired, the most probable class, calibrated probabilities and
    the prediction set; optionally a CSV, written as it goes.

    Exits 1 when an input could not be read (unless --skip-unreadable), 2 when none could; an
    image that was read but not assessed is a result (exit 0), not an error.
    """
    from medlens.batch_predict import predict_files
    from medlens.inference import Predictor

    on_ray = (engine or "").strip().lower() == "ray"
    predictor = Predictor.from_bundle(bundle, engine=None if on_ray else engine)
    run = predict_files
    if on_ray:
        from medlens.ray_predict import predict_files_ray

        run = partial(predict_files_ray, address=ray_address)  # type: ignore[assignment]
    files, results = run(
        predictor,
        collect_files(paths),
        out,
        batch_size=batch_size,
        workers=workers,
        resume=resume,
        progress=progress_enabled(progress),
    )
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
    for line in _trust_notes(predictor, results):
        console.print(line, highlight=False)
    if out is not None:
        console.print(f"predictions written to {out}")
    if dicom_out is not None:
        from medlens.serve.dicom_out import write_predictions

        written = write_predictions(dicom_out, files, results)
        console.print(f"{len(written)} DICOM Structured Report(s) written to {dicom_out}")
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
    console.print(predictor.trust.evidence_line(method), highlight=False)
    n_err = sum(1 for r in records if r.error)
    console.print(f"{len(records) - n_err} overlay(s) in {out}")
    if n_err:
        err_console.print(f"[bold]{n_err} of {len(records)} image(s) could not be read[/]")
        raise typer.Exit(2 if n_err == len(records) else 1)


@app.command()
def evaluate(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    data: Annotated[Path, typer.Argument(help="labelled data: class folders, CSV or .npz")],
    out: Annotated[
        Path | None,
        typer.Option(help="report folder (HTML + JSON); a path ending in .json: metrics JSON"),
    ] = None,
    recalibrate: Annotated[
        float | None,
        typer.Option(help="refit calibration on this fraction of DATA, report on the rest"),
    ] = None,
    recalibrate_on: Annotated[
        Path | None, typer.Option(help="refit calibration on this separate labelled data")
    ] = None,
    by: Annotated[
        str | None,
        typer.Option(help="subgroup column (manifest column, or source_format / image_size)"),
    ] = None,
    reference: Annotated[
        Path | None, typer.Option(help="training images to measure shift against")
    ] = None,
    npz_key: Annotated[
        list[str] | None,
        typer.Option(help="IMAGES:LABELS keys to read from an .npz (repeatable)"),
    ] = None,
    progress: ProgressOpt = None,
    engine: EngineOpt = None,
) -> None:
    """Validate a bundle on a new site's labelled data (none of it was used to fit anything):
    the training report with intervals, the bundle's own test figures beside the new ones with a
    verdict, the shift of the new images, and optionally local recalibration and subgroups."""
    from medlens.cli.summaries import print_external
    from medlens.engines import set_default_engine
    from medlens.external import evaluate_external

    set_default_engine(engine)  # the predictors evaluate_external builds use it

    keys = None
    if npz_key:
        try:
            keys = [tuple(k.split(":", 1)) for k in npz_key]
            if any(len(k) != 2 for k in keys):
                raise ValueError
        except ValueError:
            raise MedlensError(
                "--npz-key takes IMAGES:LABELS, e.g. val_images:val_labels"
            ) from None
    json_out = out is not None and out.suffix == ".json"
    folder = (out.with_suffix("") if json_out else out) if out is not None else None
    if folder is None:
        folder = Path("evaluations") / f"{bundle.resolve().name}_on_{data.stem}"
    result = evaluate_external(
        bundle,
        data,
        folder,
        recalibrate=recalibrate,
        recalibrate_on=recalibrate_on,
        by=by,
        reference=reference,
        npz_keys=keys,  # type: ignore[arg-type]
        progress=progress_enabled(progress),
    )
    print_external(result.metrics, f"{bundle} on {data}")
    errors = result.errors
    for path, reason in list(errors.items())[:ROWS_SHOWN]:
        err_console.print(f"[yellow]skipped[/] {path}: {reason}", highlight=False)
    if len(errors) > ROWS_SHOWN:
        err_console.print(f"… {len(errors)} unreadable in all (see 'unreadable' in the JSON)")
    if json_out:
        assert out is not None
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.metrics, indent=2))
        console.print(f"metrics written to {out}")
    console.print(f"report: {result.report}")
    if result.bundle_dir is not None:
        console.print(f"recalibrated bundle (verified): {result.bundle_dir}")
