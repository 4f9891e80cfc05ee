"""A whole run: recipe → manifest → split → fit → bundle → test evaluation through the bundle.

The test split is evaluated by a :class:`~medlens.inference.Predictor` loaded from the bundle just
written, so the figures stored in the bundle are those of the exact code path serving will use.
"""

from __future__ import annotations

import html
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medlens.bundle import add_file, save_bundle
from medlens.common import json_safe
from medlens.data.manifest import Manifest, Sample
from medlens.data.sources import ensure_phantoms, recipe_manifest  # noqa: F401  (re-exported)
from medlens.data.splits import Splits, load_or_make_splits
from medlens.errors import DataError
from medlens.evaluate.heldout import Scores, evaluate_test, fit_on_validation
from medlens.evaluate.metrics import classification_metrics
from medlens.evaluate.report import render_report
from medlens.inference import Prediction, Predictor
from medlens.models import model_info
from medlens.recipes import Recipe
from medlens.trust_fit import fit_gate, fit_sets, test_outcomes
from medlens.trust_state import write_trust

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    bundle_dir: Path
    metrics: dict[str, Any]
    split_counts: dict[str, int]
    splits_reused: bool
    resumed: bool
    excluded: dict[str, str]
    seconds: float
    model: Any = None  # the trained network (best validation weights), for callers in-process
    report: Path | None = None
    mlflow_run_id: str | None = None


def collect_scores(
    predictor: Predictor,
    samples: list[Sample],
    classes: list[str],
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[Scores, list[Prediction], dict[str, str]]:
    """Logits of every readable, gradable sample through the predictor; unreadable and
    ungradable ones (``"ungradable: <why>"``) are reported. Images the input gate finds out of
    distribution keep their logits: the figures cover every gradable image, and the gate's
    outcomes are reported beside them (:func:`medlens.trust_fit.test_outcomes`)."""
    if list(predictor.classes) != list(classes):
        raise DataError(f"the data's classes {classes} differ from the model's {predictor.classes}")
    results = predictor.predict_many(samples, batch_size, progress)
    preds: list[Prediction] = []
    y: list[int] = []
    errors: dict[str, str] = {}
    idx = {c: i for i, c in enumerate(classes)}
    for s, r in zip(samples, results, strict=True):
        if isinstance(r, Prediction) and r.status == "ungradable":
            errors[s.uid] = f"ungradable: {r.reason}"
        elif isinstance(r, Prediction):
            r.source = s.uid
            preds.append(r)
            y.append(idx[s.label])  # type: ignore[index]
        else:
            errors[s.uid] = str(r)
    if not preds:
        raise DataError("no readable images to evaluate")
    scores = Scores(
        [p.source or "" for p in preds],
        np.array(y, dtype=int),
        np.array([p.logits for p in preds], dtype=np.float64),
    )
    return scores, preds, errors


def evaluate_samples(
    predictor: Predictor,
    samples: list[Sample],
    classes: list[str],
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[dict[str, Any], list[Prediction], dict[str, str]]:
    """Core metrics of a bundle (with its calibration) on labelled samples."""
    scores, preds, errors = collect_scores(predictor, samples, classes, batch_size, progress)
    probs = predictor.probabilities(scores.logits)
    return classification_metrics(scores.y, probs, classes), preds, errors


def leakage_checked_splits(
    recipe: Recipe, manifest: Manifest, run_dir: Path, progress: bool = False
) -> tuple[Splits, bool, dict[str, Any]]:
    """Draw (or reuse) the split with copies kept together, then refuse one that leaks.

    A reused ``splits.csv`` may come from elsewhere: it is checked for copies and patients that
    cross train/val/test, and training stops with the counts and example paths unless the recipe
    sets ``split.allow_leakage`` — then the run's report records the override.
    """
    from medlens.data.audit import split_leakage
    from medlens.data.splits import split_grouping

    cfg = recipe.split
    grouping = split_grouping(manifest, cfg, progress=progress)  # the audit's tiers, one rule
    groups, copies = (grouping.groups, grouping.copies) if grouping else (None, {})
    splits, reused = load_or_make_splits(manifest, cfg, run_dir / "splits.csv", copies=groups)
    leak = split_leakage(manifest, splits, copies=copies, near_threshold=cfg.copy_threshold)
    info: dict[str, Any] = {
        "checked": True,
        "ok": leak.ok,
        "copy_groups": len(set(copies.values())),
        "grouping": grouping.info if grouping else None,
    }
    if not leak.ok:
        if not cfg.allow_leakage:
            leak.raise_if_leaking()
        log.warning("split leaks, trained anyway (split.allow_leakage): %s", leak.message)
        info.update({"override": True, "message": leak.message})
    return splits, reused, info


def _no_explanations(run_dir: Path, why: str) -> None:
    out = run_dir / "explanations"
    out.mkdir(exist_ok=True)
    (out / "section.html").write_text(
        f"<section><h2>Explanations</h2><p>{html.escape(why)}</p></section>"
    )


def explain_section(
    predictor: Predictor, test: list[Sample], recipe: Recipe, run_dir: Path
) -> None:
    """CAMs on test images with non-empty lesion masks: scores vs baselines, and overlays.

    Writes ``explanations/section.html`` (embedded by the report) and ``explanations.json``.
    """
    from medlens.data.io import read_mask
    from medlens.errors import MedlensError
    from medlens.explain import evaluate_explanations, explain_images, explanation_section_html

    info = model_info(predictor.model)
    if info.cam == "modalities":
        _explain_modalities(predictor, test, recipe, run_dir)
        return
    if info.inputs != "image":
        _no_explanations(run_dir, f"Not computed: no heatmap rule for a {info.kind} model.")
        return
    if not info.explainable:
        what = "a HOG + classical model" if info.kind == "classical" else f"a {info.kind} model"
        _no_explanations(run_dir, f"Not applicable: {what} has no layers a CAM can read.")
        return
    cfg = recipe.explain
    with_masks = []
    for s in test:
        if s.mask_path:
            try:
                if read_mask(s.mask_path).any():
                    with_masks.append(s)
            except MedlensError:
                continue
        if len(with_masks) >= cfg.max_images:
            break
    out = run_dir / "explanations"
    if not with_masks:
        _no_explanations(run_dir, "No test images with lesion masks: localisation was not scored.")
        return
    paths = [s.path for s in with_masks]
    masks = [s.mask_path for s in with_masks]
    log.info("explaining %d test images with lesion masks (%s)", len(paths), ", ".join(cfg.methods))
    summary = evaluate_explanations(
        predictor,
        paths,
        masks,
        cfg.methods,
        faithfulness=cfg.faithfulness_images > 0,
        faithfulness_images=cfg.faithfulness_images,
        n_bootstrap=cfg.n_bootstrap,
    )
    records = explain_images(predictor, paths, cfg.methods[-1], out / "overlays", masks)
    (out / "section.html").write_text(explanation_section_html(records, summary))
    (run_dir / "explanations.json").write_text(
        json.dumps(json_safe(summary), indent=2, default=str)
    )


def _explain_modalities(
    predictor: Predictor, test: list[Sample], recipe: Recipe, run_dir: Path
) -> None:
    """A fusion model: per test case one heatmap per modality for the fused decision and each
    modality's contribution; localisation per modality on cases with lesion masks (preferred
    when the split has them)."""
    from medlens.explain.modality_report import explain_fusion_cases, fusion_section_html

    cfg = recipe.explain
    masked = [s for s in test if s.mask_path]
    cases = (masked or test)[: cfg.max_images]
    out = run_dir / "explanations"
    if not cases:
        _no_explanations(run_dir, "No test cases: nothing to explain.")
        return
    log.info("explaining %d fusion test cases per modality (%s)", len(cases), cfg.methods[-1])
    summary = explain_fusion_cases(
        predictor, cases, cfg.methods[-1], out / "overlays", n_bootstrap=cfg.n_bootstrap
    )
    out.mkdir(exist_ok=True)
    (out / "section.html").write_text(fusion_section_html(summary))
    (run_dir / "explanations.json").write_text(
        json.dumps(json_safe(summary), indent=2, default=str)
    )


def train_model(
    recipe: Recipe,
    manifest: Manifest,
    splits: Splits,
    run_dir: Path,
    progress: bool = True,
    fresh: bool = False,
) -> Any:
    """Train whatever the recipe names by the fitter of its registry kind
    (:data:`medlens.train.fitters.FITTERS`): a network, a classical model, an ensemble, a ROI pair.
    """
    from medlens.train.fitters import FitRequest, fit_model

    return fit_model(FitRequest(recipe, manifest, splits, run_dir, progress, fresh))


def _preprocessed(
    predictor: Predictor, samples: list[Sample]
) -> tuple[list[Sample], np.ndarray, list[dict[str, Any]]]:
    """Readable samples, their preprocessed array (N x C x H x W) and preprocessing infos."""
    from medlens.errors import MedlensError

    keep, arrays, infos = [], [], []
    for s in samples:
        try:
            pre = predictor.preprocess(s)
        except MedlensError:
            continue
        if isinstance(pre, dict):
            return [], np.zeros((0,)), []  # fusion: handled through predictions only
        keep.append(s)
        arrays.append(pre.image)
        infos.append(pre.info)
    return keep, (np.stack(arrays) if arrays else np.zeros((0,))), infos


def _aligned_mask(path: str, predictor: Predictor, info: dict[str, Any]) -> np.ndarray:
    """A mask file in the model's view: read at the image's size, then cropped/resized alike."""
    from medlens.data.io import read_mask
    from medlens.preprocess import align_mask

    rows, cols = (int(v) for v in info["original_shape"][:2])
    return align_mask(read_mask(path, shape=(rows, cols)), predictor.pipeline, info)


def other_outputs(
    predictor: Predictor,
    recipe: Recipe,
    test: list[Sample],
    preds: list[Prediction],
    n_bootstrap: int,
    seed: int,
    confidence: float,
) -> dict[str, Any]:
    """Held-out figures beyond the class head: extra heads, ensemble members, segmentation."""
    import torch

    from medlens.evaluate.heads import head_metrics
    from medlens.evaluate.intervals import metrics_with_intervals
    from medlens.evaluate.segmentation import segmentation_metrics
    from medlens.train.request import head_targets

    alpha = 1 - confidence
    out: dict[str, Any] = {}
    by_uid = {s.uid: s for s in test}
    if recipe.task.heads and preds:
        samples = [by_uid[p.source or ""] for p in preds]
        targets = head_targets(recipe, samples)
        # Like the class head, the figures cover every gradable image: an image the gate held
        # back keeps its raw head outputs in ``details``.
        heads = [p.heads or (p.details or {}).get("heads") or {} for p in preds]
        outputs: dict[str, np.ndarray] = {}
        specs = {h: c.model_dump(mode="json") for h, c in recipe.task.heads.items()}
        for h, c in recipe.task.heads.items():
            if c.type == "regression":
                outputs[h] = np.array([ph[h]["value"] for ph in heads])
            else:
                names = c.classes or [str(i) for i in range(c.num_classes or 0)]
                outputs[h] = np.array([[ph[h]["probabilities"][n] for n in names] for ph in heads])
        out["heads"] = head_metrics(specs, outputs, targets, n_bootstrap, seed, alpha)
    model = predictor.model
    kind = model_info(model).kind
    if kind in ("ensemble", "roi"):  # per-member figures; the segmenter's masks
        keep, x, infos = _preprocessed(predictor, test)
        if len(keep):
            idx = {c: i for i, c in enumerate(recipe.task.classes)}
            y = np.array([idx[s.label] for s in keep])  # type: ignore[index]
            xt = torch.from_numpy(x.astype(np.float32))
            if kind == "ensemble":
                with torch.inference_mode():
                    mp = model.member_probabilities(xt).float().numpy()
                out["members"] = {
                    label: {
                        "weight": float(w),
                        **metrics_with_intervals(
                            y,
                            mp[j],
                            recipe.task.classes,
                            n_bootstrap,
                            seed,
                            alpha,
                            recipe.evaluate.ordinal,
                            recipe.evaluate.target_specificity,
                        )["overall"],
                    }
                    for j, (label, w) in enumerate(zip(model.labels, model.weights, strict=True))
                }
            if kind == "roi" and recipe.segmentation is not None:
                col = recipe.segmentation.mask_column
                rows = [i for i, s in enumerate(keep) if s.get(col)]
                if rows:
                    log.info("scoring the predicted regions of %d test images", len(rows))
                    with torch.inference_mode():
                        pm = model.segment(xt[rows]).float().numpy()[:, 0] >= 0.5
                    truth = np.stack(
                        [_aligned_mask(keep[i].get(col), predictor, infos[i]) for i in rows]
                    )
                    out["segmentation"] = {
                        "mask_column": col,
                        **segmentation_metrics(pm, truth, n_bootstrap, seed, alpha),
                    }
    return out


def run_recipe(
    recipe: Recipe,
    out_dir: str | Path,
    data: str | Path | None = None,
    progress: bool = True,
    fresh: bool = False,
    track: bool = True,
    export_onnx: bool = True,
) -> RunResult:
    """Train, bundle and evaluate a recipe into ``out_dir/<recipe name>``; ``export_onnx``
    adds the FP32 ONNX graph checked on the validation split (or a record of why not)."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir).expanduser().resolve()
    run_dir = out_dir / recipe.name
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = recipe_manifest(recipe, data, out_dir)
    splits, reused, leakage = leakage_checked_splits(recipe, manifest, run_dir, progress)
    staged = train_model(recipe, manifest, splits, run_dir, progress=progress, fresh=fresh)
    result = staged.result

    bundle_dir = run_dir / "bundle"
    model_spec = {
        "name": recipe.model.name,
        "num_classes": len(recipe.task.classes),
        "in_chans": recipe.in_chans(),
        "kwargs": staged.model_kwargs,
    }
    train_samples = splits.samples(manifest, "train") + splits.samples(manifest, "val")
    save_bundle(
        bundle_dir,
        result.model,
        name=recipe.name,
        model_spec=model_spec,
        classes=list(recipe.task.classes),
        task=recipe.task.model_dump(mode="json"),
        preprocess=recipe.pipeline().to_config(),
        recipe_yaml=recipe.to_yaml(),
        data_fingerprint=Manifest(train_samples, manifest.classes, manifest.root).fingerprint(),
        intended_use=recipe.intended_use,
        extra={
            "training": {
                "best_checkpoint_score": result.best_score,
                "monitor": recipe.train.monitor,
                "epochs_run": result.epochs_run,
                "split_counts": splits.counts(),
                **staged.info,
            },
            "modalities": recipe.data.modalities,
        },
    )
    # Validation chooses the temperature and the thresholds; the test split only measures.
    ev = recipe.evaluate
    classes = list(recipe.task.classes)
    val = splits.samples(manifest, "val")
    log.info("calibrating and choosing thresholds on %d validation images", len(val))
    val_scores, _, val_errors = collect_scores(
        Predictor.from_bundle(bundle_dir), val, classes, ev.batch_size, progress
    )
    fitted = fit_on_validation(
        val_scores,
        classes,
        recipe.task.priority,
        recipe.policy.targets,
        ev.calibration,
        ev.calibration_bins,
    )
    add_file(bundle_dir, "calibration.json", json.dumps(fitted.calibration, indent=2))
    if fitted.policy is not None:
        add_file(
            bundle_dir, "policy.json", json.dumps(json_safe(fitted.policy.to_dict()), indent=2)
        )
    predictor = Predictor.from_bundle(bundle_dir)
    gate = fit_gate(
        predictor,
        splits.samples(manifest, "train"),
        val,
        classes,
        min_size=ev.gate_min_size,
        batch_size=ev.batch_size,
        seed=recipe.split.seed,
        progress=progress,
    )
    sets = fit_sets(predictor, val_scores.logits, val_scores.y, ev.coverage)
    write_trust(bundle_dir, gate, sets)
    predictor = Predictor.from_bundle(bundle_dir)
    test = splits.samples(manifest, "test")
    log.info("testing on %d held-out images (%d bootstrap replicates)", len(test), ev.n_bootstrap)
    test_scores, preds, errors = collect_scores(predictor, test, classes, ev.batch_size, progress)
    metrics = evaluate_test(
        test_scores,
        fitted,
        classes,
        n_bootstrap=ev.n_bootstrap,
        seed=ev.bootstrap_seed,
        confidence=ev.confidence,
        ordinal=ev.ordinal,
        target_specificity=ev.target_specificity,
        n_bins=ev.calibration_bins,
        patients={s.uid: s.patient_id for s in test},
    )
    metrics.update(
        other_outputs(
            predictor, recipe, test, preds, ev.n_bootstrap, ev.bootstrap_seed, ev.confidence
        )
    )
    metrics["trust"] = test_outcomes(
        predictor,
        preds,
        test_scores.y,
        test_scores.logits,
        errors,
        ev.n_bootstrap,
        ev.bootstrap_seed,
        1 - ev.confidence,
    )
    metrics["unreadable"] = {**val_errors, **errors}
    metrics["leakage"] = leakage
    metrics["settings"] = ev.model_dump(mode="json")
    if ev.shortcut_check:  # probe before/after preprocessing, cue-randomised test
        from medlens.shortcuts import shortcut_section

        metrics["shortcuts"] = shortcut_section(predictor, manifest, splits, recipe)
    add_file(bundle_dir, "metrics.json", json.dumps(metrics, indent=2))
    if export_onnx:  # the bundle is complete: its checked ONNX graph, or why there is none
        from medlens.export import CheckImages, export_after_training

        export_after_training(bundle_dir, CheckImages(val, f"validation split of {run_dir.name}"))
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    val_scores.write_csv(run_dir / "val_scores.csv", classes)
    test_scores.write_csv(run_dir / "test_scores.csv", classes)
    _write_test_predictions(run_dir / "test_predictions.csv", preds, classes, test)
    if recipe.explain.enabled:
        explain_section(predictor, test, recipe, run_dir)
        if (run_dir / "explanations.json").is_file():  # heatmap evidence travels with the bundle
            write_trust(
                bundle_dir, explanations=json.loads((run_dir / "explanations.json").read_text())
            )
    log.info("writing the report")
    report = render_report(run_dir)
    run_id = None
    if track:
        from medlens.bundle import load_bundle
        from medlens.track import log_run

        run_id = log_run(
            out_dir,
            recipe,
            run_dir,
            bundle_dir,
            metrics,
            result.best_score,
            load_bundle(bundle_dir).sha256,
        )
    return RunResult(
        run_dir,
        bundle_dir,
        metrics,
        splits.counts(),
        reused,
        result.resumed,
        {**result.excluded, **errors},
        time.perf_counter() - t0,
        result.model,
        report,
        run_id,
    )


def _write_test_predictions(
    path: Path, preds: list[Prediction], classes: list[str], samples: list[Sample]
) -> None:
    """One row per graded test image: truth, what was shown (nothing for a not-assessed image),
    the input gate's status and reason, the conformal set; probabilities as the network gave
    them (for a not-assessed image: kept for audit, never shown as a diagnosis)."""
    import csv

    truth = {s.uid: s.label for s in samples}
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "source",
                "true",
                "predicted",
                "decision",
                "status",
                "reason",
                "prediction_set",
                *[f"p_{c}" for c in classes],
            ]
        )
        for p in preds:
            probs = p.probabilities or (p.details or {}).get("probabilities") or {}
            most = p.label or (p.details or {}).get("most_probable", "")
            w.writerow(
                [
                    p.source,
                    truth.get(p.source or ""),
                    most,
                    p.shown_decision or "",
                    p.status,
                    p.reason or "",
                    "" if p.prediction_set is None else " ".join(p.prediction_set),
                    *[f"{probs.get(c, float('nan')):.6f}" for c in classes],
                ]
            )
