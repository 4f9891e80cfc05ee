"""``medlens export``: add a checked ONNX graph (and optionally INT8) to a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medlens.cli._app import app, console


@app.command()
def export(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    int8: Annotated[
        bool, typer.Option("--int8", help="also a static INT8 graph (refused beyond the F1 drop)")
    ] = False,
    calibration_data: Annotated[
        Path | None,
        typer.Option(
            help="labelled images to check on (default: the run's validation split, found from "
            "the run folder's splits.csv and the bundle's recipe)"
        ),
    ] = None,
    max_f1_drop: Annotated[
        float, typer.Option(help="largest validation macro-F1 drop allowed for INT8, in points")
    ] = 1.0,
    tolerance: Annotated[
        float, typer.Option(help="largest probability difference allowed for the FP32 graph")
    ] = 1e-4,
) -> None:
    """Export the bundle's network to ONNX (dynamic batch), check it against the eager model on
    validation images and add it to the bundle under its checksums.

    Exits 2 when the model cannot be exported or a graph fails its check (nothing unchecked is
    added; an INT8 refusal is recorded in export.json with its figures).
    """
    from medlens.export import export_bundle

    rec = export_bundle(
        bundle,
        int8=int8,
        data=calibration_data,
        tolerance=tolerance,
        max_f1_drop=max_f1_drop,
    )
    g = rec["graphs"]["fp32"]
    par = g["parity"]
    console.print(
        f"[bold green]model.onnx[/] added: {par['n_images']} images of {rec['check_images']}; "
        f"largest probability difference {par['max_probability_difference']:.1e} "
        f"(≤ {tolerance:.0e}), argmax identical on every image",
        highlight=False,
    )
    q = rec["graphs"].get("int8")
    if int8 and q and q.get("passed"):
        console.print(
            f"[bold green]model.int8.onnx[/] added: macro-F1 {q['macro_f1_int8']:.4f} vs FP32 "
            f"{q['macro_f1_fp32']:.4f} ({q['macro_f1_drop_points']:+.2f} points drop; "
            f"{q['decisions_changed']} of {q['n_images']} argmax changed); "
            f"serve it with --engine onnx-int8",
            highlight=False,
        )
    console.print(f"bundle re-sealed: {bundle} (export.json records the checks)")
