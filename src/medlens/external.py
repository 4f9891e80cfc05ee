"""External validation: a bundle on a new site's labelled images, reported like a training run.

``medlens evaluate BUNDLE DATA --out DIR`` calls :func:`evaluate_external`, which writes into
``DIR`` the report a run writes (bootstrap intervals on every figure, calibration of the bundle's
own temperature, policy vs argmax with each sensitivity target met or missed, conformal coverage
and gate outcomes when the bundle has them, worklists; HTML + JSON), plus:

- **internal vs external** (:func:`compare_internal`): each headline figure of the bundle's own
  test split beside the new one. A figure *falls below* when the difference internal − external
  is positive with 95 % confidence: its lower bound by the MOVER method (Zou & Donner 2008: the
  two independent intervals' half-widths combined in quadrature, each taken on the side that
  faces the other) lies above zero. This is a proper two-sample statement — stricter than "the
  external interval lies below the internal point" (which ignores that the internal figure is an
  estimate too), looser than "the intervals do not overlap" (which needs a gap about 1.4 times as
  large). Any headline figure below gives the verdict "does not transfer to these data as they
  are".
- **shift** (:mod:`medlens.evaluate.shift`): acquisition properties, formats and sizes against
  training; the input gate's outcome when the bundle has one.
- **local recalibration** (``recalibrate=FRACTION`` or ``recalibrate_on=FOLDER``): temperature,
  policy thresholds and conformal sets refitted on a stratified, patient-grouped part of the new
  data (or on a separate labelled set), figures on the rest, and a new verified bundle in
  ``DIR/bundle`` whose ``recalibration.json`` records where its calibration came from.
- **subgroups** (``by=COLUMN``, :mod:`medlens.evaluate.subgroups`).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from medlens.common import json_safe
from medlens.data.manifest import Manifest, Sample, load_manifest
from medlens.errors import DataError, MedlensError
from medlens.evaluate import figures as F
from medlens.evaluate.heldout import Fitted, Scores, evaluate_test, fit_on_validation

log = logging.getLogger(__name__)

VERDICT_BELOW = "does not transfer to these data as they are"
Z95 = 1.959963984540054

__all__ = [
    "VERDICT_BELOW",
    "ExternalResult",
    "compare_internal",
    "evaluate_external",
    "load_data",
    "subgroups_for_run",
]


@dataclass
class ExternalResult:
    out_dir: Path
    metrics: dict[str, Any]
    report: Path
    bundle_dir: Path | None  # the recalibrated bundle, when one was written
    errors: dict[str, str]


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def load_data(
    recipe: Any,
    data: Path,
    classes: list[str],
    column: str | None = None,
    npz_keys: list[tuple[str, str]] | None = None,
) -> tuple[Manifest, bool]:
    """The new site's manifest, read as the bundle's recipe reads data, with ``column`` carried
    when it is a manifest column. Returns ``(manifest, derive)``: ``derive`` is true when
    ``column`` is not in the manifest and must come from the decoded images
    (:data:`medlens.evaluate.subgroups.DERIVED`)."""
    from medlens.evaluate.subgroups import DERIVED

    cfg = recipe.data
    if npz_keys:
        cfg = cfg.model_copy(update={"npz_keys": [list(k) for k in npz_keys]})
    if data.suffix == ".npz" and cfg.label_map is None:
        raise DataError(f"{data}: the bundle's recipe has no data.label_map to read an .npz")
    extra, paths = recipe.extra_columns(), recipe.path_columns()
    if column in (None, "patient_id"):
        return load_manifest(cfg, data, classes, extra, paths), False
    try:
        return load_manifest(cfg, data, classes, [*extra, column], paths), False
    except DataError as exc:
        if column not in DERIVED:
            raise DataError(
                f"--by {column}: {exc}. Name a manifest column, or one of {', '.join(DERIVED)} "
                "(read from the images)"
            ) from None
    return load_manifest(cfg, data, classes, extra, paths), True


# --------------------------------------------------------------------------------------------
# Internal vs external
# --------------------------------------------------------------------------------------------


def _finite(*v: Any) -> bool:
    return all(isinstance(x, int | float) and math.isfinite(x) for x in v)


def _difference(internal: dict[str, Any], external: dict[str, Any]) -> dict[str, Any]:
    """internal − external with a MOVER interval (None when either figure has no interval)."""
    i, e = internal.get("value"), external.get("value")
    if not _finite(i, e):
        return {"value": None, "ci_low": None, "ci_high": None}
    d = float(i) - float(e)
    il, ih = internal.get("ci_low"), internal.get("ci_high")
    el, eh = external.get("ci_low"), external.get("ci_high")
    if not _finite(il, ih, el, eh):
        return {"value": d, "ci_low": None, "ci_high": None}
    i, e = float(i), float(e)  # type: ignore[arg-type]
    low = d - math.sqrt((i - il) ** 2 + (eh - e) ** 2)  # type: ignore[operator]
    high = d + math.sqrt((ih - i) ** 2 + (e - el) ** 2)  # type: ignore[operator]
    return {"value": d, "ci_low": low, "ci_high": high}


def compare_internal(
    internal_iv: dict[str, Any] | None, external_iv: dict[str, Any]
) -> dict[str, Any]:
    """Headline figures of the bundle's test beside the new data's, with the verdict.

    ``below``/``above``: the MOVER interval of internal − external excludes 0 (see the module
    docstring). ``verdict``: :data:`VERDICT_BELOW` when any figure is below; else a sentence
    saying the data cannot tell the two apart (or that the new data score higher).
    """
    if not internal_iv or "overall" not in internal_iv:
        return {
            "rows": [],
            "verdict": "the bundle holds no internal test figures to compare with",
            "transfers": None,
        }
    rows = []
    for f in F.headline():
        a, b = internal_iv["overall"].get(f.key), external_iv["overall"].get(f.key)
        if not isinstance(a, dict) or not isinstance(b, dict):
            continue
        diff = _difference(a, b)
        lo, hi = diff["ci_low"], diff["ci_high"]
        status = "not comparable (no interval)"
        if _finite(lo, hi):
            status = "below" if lo > 0 else ("above" if hi < 0 else "indistinguishable")
        rows.append(
            {
                "figure": f.key,
                "name": F.display_name(f, external_iv),
                "internal": a,
                "external": b,
                "difference": diff,
                "status": status,
            }
        )
    below = [r["name"] for r in rows if r["status"] == "below"]
    if below:
        verdict = (
            f"The model {VERDICT_BELOW}: {', '.join(below)} fall(s) below the bundle's own test "
            "figures (95 % interval of the difference excludes zero). Recalibrate locally "
            "(--recalibrate) and re-check, or retrain with data from this site."
        )
    elif any(r["status"] == "above" for r in rows):
        verdict = "No headline figure falls below the internal test figures; some are higher."
    else:
        verdict = (
            "No headline figure falls below the internal test figures: on these data the "
            "difference cannot be told from sampling noise."
        )
    return {
        "method": (
            "internal − external with a MOVER 95 % interval (Zou & Donner 2008); below: the "
            "interval lies above 0"
        ),
        "rows": rows,
        "below": below,
        "transfers": not below,
        "verdict": verdict,
    }


# --------------------------------------------------------------------------------------------
# Recalibration
# --------------------------------------------------------------------------------------------


def split_for_recalibration(
    manifest: Manifest, fraction: float, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """``(calibration part, rest)``: about ``fraction`` of the new data, stratified by class and
    keeping each patient's images together (a patient's images in both parts would calibrate
    and test on one patient)."""
    from sklearn.model_selection import StratifiedGroupKFold

    from medlens.data.splits import split_groups

    if not 0.05 <= fraction <= 0.8:
        raise MedlensError(f"--recalibrate {fraction}: give a fraction between 0.05 and 0.8")
    y = np.array(manifest.labels())
    groups = np.array(split_groups(manifest, True, None))
    take = fraction if fraction <= 0.5 else 1.0 - fraction
    n_splits = max(2, round(1.0 / take))
    n_splits = int(min(n_splits, np.bincount(y).min(), len(np.unique(groups))))
    if n_splits < 2:
        raise MedlensError("too few images per class to set a part aside for recalibration")
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, held = next(iter(sgkf.split(np.zeros(len(y)), y, groups)))
    mask = np.zeros(len(y), dtype=bool)
    mask[held] = True
    if fraction > 0.5:
        mask = ~mask
    cal = [s for s, m in zip(manifest.samples, mask, strict=True) if m]
    rest = [s for s, m in zip(manifest.samples, mask, strict=True) if not m]
    return cal, rest


def _bundle_conformal(predictor: Any) -> tuple[Any, str | None]:
    """The bundle's conformal sets (``predictor.sets``) and the file that holds them."""
    from medlens.evaluate.conformal import ConformalSets

    sets = getattr(predictor, "sets", None)
    name = "conformal.json"
    if sets is None and (predictor.bundle.path / name).is_file():
        sets = ConformalSets.from_dict(predictor.bundle.read_json(name))
    return (sets if isinstance(sets, ConformalSets) else None), name


def _bundle_fitted(predictor: Any) -> Fitted:
    cal = predictor.bundle.read_json("calibration.json") or {
        "method": "none",
        "temperature": 1.0,
        "fitted_on": "nothing (the bundle has no calibration)",
    }
    return Fitted(float(predictor.temperature), dict(cal), predictor.policy)


def write_recalibrated_bundle(
    source: Path,
    target: Path,
    fitted: Fitted,
    conformal: Any,
    conformal_name: str | None,
    provenance: dict[str, Any],
    metrics: dict[str, Any],
) -> Path:
    """A copy of ``source`` whose calibration, policy (and conformal sets) are replaced, with
    ``recalibration.json`` recording where they came from; re-sealed and verified."""
    from medlens.bundle import add_file, load_bundle, verify_bundle

    verify_bundle(source)
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(source, tmp)
    add_file(tmp, "calibration.json", json.dumps(json_safe(fitted.calibration), indent=2))
    if fitted.policy is not None:
        add_file(tmp, "policy.json", json.dumps(json_safe(fitted.policy.to_dict()), indent=2))
    if conformal is not None:
        add_file(tmp, conformal_name or "conformal.json", json.dumps(conformal.to_dict(), indent=2))
    add_file(tmp, "recalibration.json", json.dumps(json_safe(provenance), indent=2))
    add_file(tmp, "metrics.json", json.dumps(json_safe(metrics), indent=2))
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    load_bundle(target)  # verify once more, as a user would load it
    return target


# --------------------------------------------------------------------------------------------
# The whole external evaluation
# --------------------------------------------------------------------------------------------


def _subset(scores: Scores, keep: set[str]) -> Scores:
    rows = [i for i, s in enumerate(scores.sources) if s in keep]
    return Scores([scores.sources[i] for i in rows], scores.y[rows], scores.logits[rows])


def _conformal_section(
    conformal: Any, scores: Scores, temperature: float, classes: list[str], ev: Any
) -> dict[str, Any]:
    """Coverage of ``conformal`` on ``scores`` (as ``metrics["trust"]["conformal"]``)."""
    from medlens.evaluate.calibration import softmax
    from medlens.evaluate.conformal import coverage_report

    p = softmax(scores.logits, temperature)
    test = coverage_report(
        conformal.predict_mask(p),
        scores.y,
        classes,
        ev.n_bootstrap,
        ev.bootstrap_seed,
        1 - ev.confidence,
        predicted=p.argmax(axis=1),
        target=conformal.coverage,
    )
    return {"fitted": conformal.to_dict(), "test": test}


def _trust(
    predictor: Any, preds: list[Any], scores: Scores, errors: dict[str, str], ev: Any
) -> dict[str, Any]:
    """Gate outcomes and conformal coverage on the new data, as a run reports them on its test
    split (``metrics["trust"]``); {} before bundles carried them."""
    try:
        from medlens.trust_fit import test_outcomes
    except ImportError:  # a medlens without the input gate
        return {}
    return test_outcomes(
        predictor, preds, scores.y, scores.logits, errors, ev.n_bootstrap, ev.bootstrap_seed,
        1 - ev.confidence,
    )  # fmt: skip


def _reference(
    predictor: Any, recipe: Any, reference: Path | None, classes: list[str], limit: int
) -> Any:
    """Training images (``--reference``, else the recipe's data when it is reachable) or, when
    there are none, the input gate's summary; None when neither exists."""
    from medlens.evaluate.shift import ShiftReference, measure_images

    path = reference
    if path is None and recipe.data.path is not None:
        p = Path(recipe.data.path).expanduser()
        path = p if p.is_absolute() and p.exists() else None
    if path is not None:
        ref = load_manifest(
            recipe.data, path.expanduser().resolve(), classes, recipe.extra_columns(),
            recipe.path_columns(),
        )  # fmt: skip
        samples = ref.samples
        if len(samples) > limit:
            pick = np.random.default_rng(0).choice(len(samples), limit, replace=False)
            samples = [samples[i] for i in sorted(pick)]
        measured = measure_images(samples, predictor.preprocess)
        return ShiftReference.from_samples(
            measured, f"{len(measured.uids)} reference images from {path}"
        )
    gate = getattr(predictor, "gate", None)
    if gate is not None and "acq_median" in (getattr(gate, "arrays", None) or {}):
        return ShiftReference.from_gate(gate)
    return None


def evaluate_external(
    bundle: str | Path,
    data: str | Path,
    out_dir: str | Path,
    *,
    recalibrate: float | None = None,
    recalibrate_on: str | Path | None = None,
    by: str | None = None,
    reference: str | Path | None = None,
    npz_keys: list[tuple[str, str]] | None = None,
    reference_limit: int = 300,
    progress: bool = False,
) -> ExternalResult:
    """Evaluate ``bundle`` on the labelled ``data`` (all of it new: nothing fitted sees it,
    except the part set aside by ``recalibrate``) and write the report into ``out_dir``."""
    import yaml

    from medlens.evaluate.report import render_report
    from medlens.evaluate.shift import measure_images, shift_report
    from medlens.inference import Predictor
    from medlens.recipes import parse_recipe
    from medlens.workflow import collect_scores

    if recalibrate is not None and recalibrate_on is not None:
        raise MedlensError("give --recalibrate FRACTION or --recalibrate-on FOLDER, not both")
    bundle = Path(bundle).expanduser().resolve()
    data = Path(data).expanduser().resolve()
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor.from_bundle(bundle)
    recipe_path = predictor.bundle.path / "recipe.yaml"
    recipe = parse_recipe(yaml.safe_load(recipe_path.read_text()), str(recipe_path))
    ev = recipe.evaluate
    classes = list(predictor.classes)
    manifest, derive = load_data(recipe, data, classes, by, npz_keys)

    # Which images are reported on, and which (if any) recalibrate.
    cal_samples: list[Sample] = []
    report_samples = manifest.samples
    cal_source: dict[str, Any] | None = None
    if recalibrate is not None:
        cal_samples, report_samples = split_for_recalibration(manifest, recalibrate)
        cal_source = {
            "data": str(data),
            "fraction": recalibrate,
            "how": "stratified by class, each patient's images kept together",
        }
    elif recalibrate_on is not None:
        rpath = Path(recalibrate_on).expanduser().resolve()
        cal_samples = load_data(recipe, rpath, classes, None, npz_keys)[0].samples
        cal_source = {"data": str(rpath), "fraction": None, "how": "a separate labelled set"}

    log.info("predicting %d new images", len(report_samples))
    scores, preds, errors = collect_scores(
        predictor, report_samples, classes, ev.batch_size, progress
    )
    fitted = _bundle_fitted(predictor)
    conformal, conformal_name = _bundle_conformal(predictor)
    settings = ev.model_dump(mode="json")
    kwargs = {
        "n_bootstrap": ev.n_bootstrap,
        "seed": ev.bootstrap_seed,
        "confidence": ev.confidence,
        "ordinal": ev.ordinal,
        "target_specificity": ev.target_specificity,
        "n_bins": ev.calibration_bins,
    }
    patients = {s.uid: s.patient_id for s in manifest.samples}
    kwargs["patients"] = patients
    shipped = evaluate_test(scores, fitted, classes, **kwargs)
    shipped["split"] = "external"
    metrics = shipped
    trust = _trust(predictor, preds, scores, errors, ev)
    new_bundle: Path | None = None
    val_scores: Scores | None = None
    if cal_source is not None:
        cal_scores, _, cal_errors = collect_scores(
            predictor, cal_samples, classes, ev.batch_size, progress
        )
        errors.update(cal_errors)
        refit = fit_on_validation(
            cal_scores,
            classes,
            recipe.task.priority,
            recipe.policy.targets,
            ev.calibration,
            ev.calibration_bins,
        )
        refit.calibration["fitted_on"] = "the new site's data (local recalibration)"
        metrics = evaluate_test(scores, refit, classes, **kwargs)
        metrics["split"] = "external"
        new_conformal = None
        if conformal is not None:
            from medlens.evaluate.calibration import softmax
            from medlens.evaluate.conformal import ConformalSets

            new_conformal = ConformalSets.fit(
                softmax(cal_scores.logits, refit.temperature),
                cal_scores.y,
                conformal.coverage,
                conformal.score,
                len(classes),
            )
        cal_manifest = Manifest(cal_samples, classes, manifest.root)
        provenance = {
            "recalibrated_from": {
                "bundle": str(bundle),
                "bundle_sha256": predictor.bundle.sha256,
            },
            **cal_source,
            "n_calibration": len(cal_scores.y),
            "n_reported": len(scores.y),
            "data_fingerprint": cal_manifest.fingerprint(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "refitted": ["temperature"]
            + (["policy thresholds"] if refit.policy is not None else [])
            + (["conformal sets"] if new_conformal is not None else []),
            "temperature_before": fitted.temperature,
            "temperature_after": refit.temperature,
        }
        metrics["recalibration"] = {
            **provenance,
            "as_shipped": {
                "calibration": {
                    k: shipped["calibration"][k] for k in ("test_before", "test_after")
                },
                "policy": shipped.get("policy"),
            },
        }
        val_scores = cal_scores
        if new_conformal is not None:
            trust["conformal"] = _conformal_section(
                new_conformal, scores, refit.temperature, classes, ev
            )
            metrics["recalibration"]["as_shipped"]["conformal"] = _conformal_section(
                conformal, scores, fitted.temperature, classes, ev
            )["test"]
        metrics["trust"] = trust
        bundle_metrics = {k: v for k, v in metrics.items() if k != "recalibration"}
        new_bundle = write_recalibrated_bundle(
            bundle, out / "bundle", refit, new_conformal, conformal_name, provenance,
            bundle_metrics,
        )  # fmt: skip
    else:
        metrics["trust"] = trust

    internal_iv = (predictor.bundle.metrics or {}).get("intervals")
    metrics["external"] = {
        "data": str(data),
        "n": len(scores.y),
        "bundle": str(bundle),
        "bundle_sha256": predictor.bundle.sha256,
        "internal_n": (predictor.bundle.metrics or {}).get("n"),
        **compare_internal(internal_iv, shipped["intervals"]),
    }
    log.info("measuring acquisition properties of the new images")
    by_uid = {s.uid: s for s in report_samples}
    reported = [by_uid[u] for u in scores.sources]
    measured = measure_images(reported, predictor.preprocess)
    ref = _reference(
        predictor, recipe, Path(reference) if reference else None, classes, reference_limit
    )
    has_gate = getattr(predictor, "gate", None) is not None
    metrics["shift"] = shift_report(measured, ref, trust.get("gate") if has_gate else None)
    if by is not None:
        from medlens.evaluate.calibration import softmax
        from medlens.evaluate.subgroups import subgroup_values, subgroups_with

        temperature = metrics["calibration"]["temperature"]
        metrics["subgroups"] = subgroups_with(
            subgroup_values(reported, by, derive),
            scores.y,
            softmax(scores.logits, temperature),
            classes,
            metrics["intervals"]["overall"],
            by,
            ev,
        )
    metrics["unreadable"] = errors
    metrics["settings"] = settings
    metrics = json_safe(metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    scores.write_csv(out / "test_scores.csv", classes)
    if val_scores is not None:
        val_scores.write_csv(out / "val_scores.csv", classes)
    report = render_report(out, bundle_dir=new_bundle or bundle)
    return ExternalResult(out, metrics, report, new_bundle, errors)


# --------------------------------------------------------------------------------------------
# Subgroups of a training run
# --------------------------------------------------------------------------------------------


def subgroups_for_run(
    run_dir: str | Path, recipe: Any, data: str | Path | None, column: str
) -> dict[str, Any]:
    """Per-subgroup test figures of a finished run (its ``test_scores.csv`` and the manifest
    re-read with ``column``); stored in the run's ``metrics.json`` under ``subgroups`` and the
    report re-rendered."""
    from medlens.data.sources import ensure_phantoms
    from medlens.evaluate.calibration import softmax
    from medlens.evaluate.report import render_report
    from medlens.evaluate.subgroups import subgroup_values, subgroups_with

    run_dir = Path(run_dir)
    classes = list(recipe.task.classes)
    path = recipe.data_path(data)
    if recipe.data.source == "phantoms" and data is None:
        path = ensure_phantoms(recipe, run_dir.parent / "data")
    if path is None:
        raise DataError("data.path is not set: give it in the recipe or with --data PATH")
    manifest, derive = load_data(recipe, path, classes, column)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = Scores.read_csv(run_dir / "test_scores.csv", classes)
    by_uid = {s.uid: s for s in manifest.samples}
    missing = [u for u in test.sources if u not in by_uid]
    if missing:
        raise DataError(
            f"{len(missing)} test image(s) of {run_dir} are not in the data, e.g. {missing[0]}"
        )
    ev = recipe.evaluate
    t = float(metrics.get("calibration", {}).get("temperature", 1.0))
    sub = subgroups_with(
        subgroup_values([by_uid[u] for u in test.sources], column, derive),
        test.y,
        softmax(test.logits, t),
        classes,
        metrics["intervals"]["overall"],
        column,
        ev,
    )
    metrics["subgroups"] = sub
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    render_report(run_dir)
    return sub
