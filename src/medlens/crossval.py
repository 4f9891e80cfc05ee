"""k-fold cross-validation for small data sets: ``medlens train RECIPE --folds K``.

Folds are drawn like the run's own split (:mod:`medlens.data.splits`): stratified by class, and
every patient's images and every copy group (exact/near copies, look-alikes when the recipe asks
or the data have no patient ids) inside one fold, by ``StratifiedGroupKFold`` over
:func:`~medlens.data.splits.split_groups`. Fold ``i`` is the test split of run ``i``; a
validation part is carved out of the other folds the same grouped way. Each fold is a full
:func:`medlens.workflow.run_recipe` on its own ``splits.csv`` (what ``train --splits`` does), so
its figures are as honest as a single run's: calibration, thresholds, gate and conformal sets are
fitted on that fold's validation part only.

**Pooled out-of-fold estimate**: every image is tested exactly once, by the model that did not
see it; the calibrated probabilities of all folds are pooled and every figure recomputed with a
stratified bootstrap interval. The interval covers the sampling of cases, not the variation
between the K models (the per-fold table shows that).

**One bundle — the best fold chosen on validation.** A refit on all the data would leave no
images the weights did not train on to fit the temperature, the policy thresholds, the input
gate and the conformal sets — every one of them must be fitted on held-out cases — and no test
split to state its own figures. The fold whose checkpoint scored best on *its validation part*
(the recipe's monitor; the test folds play no part in the choice) is copied to
``<out>/<name>_cv/bundle``, with ``crossval.json`` (the per-fold and pooled figures) added to it.
"""

from __future__ import annotations

import html
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medlens.common import json_safe
from medlens.data.manifest import Manifest
from medlens.data.splits import Splits, split_copies, split_groups, write_splits
from medlens.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["CrossvalResult", "fold_splits", "run_crossval"]


@dataclass
class CrossvalResult:
    out_dir: Path
    bundle_dir: Path
    summary: dict[str, Any]
    report: Path


def _first_fold(y: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedGroupKFold

    n = int(min(max(2, round(1.0 / fraction)), np.bincount(y).min(), len(np.unique(groups))))
    if n < 2:
        raise DataError("too few images per class (or patients) to carve out a validation part")
    sgkf = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
    return next(iter(sgkf.split(np.zeros(len(y)), y, groups)))[1]


def fold_splits(
    manifest: Manifest, k: int, cfg: Any, copies: dict[str, int] | None
) -> list[Splits]:
    """K splits whose test parts partition the data, grouped by patient and copy."""
    from sklearn.model_selection import StratifiedGroupKFold

    if k < 2:
        raise DataError(f"--folds {k}: give at least 2 folds")
    y = np.array(manifest.labels())
    groups = np.array(split_groups(manifest, getattr(cfg, "group_by_patient", True), copies))
    n_groups = len(np.unique(groups))
    smallest = int(np.bincount(y, minlength=len(manifest.classes)).min())
    if k > min(n_groups, smallest):
        raise DataError(
            f"--folds {k}: the data have {n_groups} patient/copy groups and {smallest} images in "
            "the smallest class; use fewer folds"
        )
    seed = int(getattr(cfg, "seed", 0))
    uids = [manifest.key(s) for s in manifest.samples]
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    val_share = min(0.5, float(getattr(cfg, "val", 0.15)) / (1.0 - 1.0 / k))
    out = []
    for i, (rest, test) in enumerate(sgkf.split(np.zeros(len(y)), y, groups)):
        val = rest[_first_fold(y[rest], groups[rest], val_share, seed + 1 + i)]
        assignment = {u: "train" for u in uids}
        for j in test:
            assignment[uids[j]] = "test"
        for j in val:
            assignment[uids[j]] = "val"
        out.append(Splits(assignment))
    return out


def _pooled(folds: list[dict[str, Any]], classes: list[str], ev: Any) -> dict[str, Any]:
    from medlens.evaluate.calibration import softmax
    from medlens.evaluate.heldout import Scores
    from medlens.evaluate.intervals import metrics_with_intervals

    ys, ps = [], []
    for f in folds:
        s = Scores.read_csv(Path(f["run_dir"]) / "test_scores.csv", classes)
        ys.append(s.y)
        ps.append(softmax(s.logits, f["temperature"]))
    y, p = np.concatenate(ys), np.concatenate(ps)
    iv = metrics_with_intervals(
        y,
        p,
        classes,
        n_bootstrap=ev.n_bootstrap,
        seed=ev.bootstrap_seed,
        alpha=1 - ev.confidence,
        ordinal=ev.ordinal,
        target_specificity=ev.target_specificity,
    )
    return iv


def run_crossval(
    recipe: Any,
    out_dir: str | Path,
    k: int,
    data: str | Path | None = None,
    progress: bool = True,
    fresh: bool = False,
    track: bool = True,
) -> CrossvalResult:
    """Train ``k`` folds of ``recipe`` into ``out_dir/<name>_fold<i>``, pool them and keep one
    bundle (see the module docstring) in ``out_dir/<name>_cv``."""
    from medlens.bundle import add_file, load_bundle
    from medlens.data.sources import recipe_manifest
    from medlens.workflow import run_recipe

    out = Path(out_dir).expanduser().resolve()
    manifest = recipe_manifest(recipe, data, out)
    copies = split_copies(manifest, recipe.split, progress=progress)
    splits = fold_splits(manifest, k, recipe.split, copies)
    classes = list(recipe.task.classes)
    folds: list[dict[str, Any]] = []
    for i, sp in enumerate(splits, start=1):
        r = recipe.model_copy(deep=True)
        r.name = f"{recipe.name}_fold{i}"
        run_dir = out / r.name
        target = run_dir / "splits.csv"
        if fresh and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_splits(sp, manifest, target)
        log.info("fold %d of %d: %s", i, k, sp.counts())
        res = run_recipe(r, out, data=data, progress=progress, fresh=fresh, track=track)
        cal = res.metrics.get("calibration", {})
        folds.append(
            {
                "fold": i,
                "run_dir": str(res.run_dir),
                "bundle": str(res.bundle_dir),
                "n_test": res.metrics["n"],
                "split_counts": res.split_counts,
                "val_score": load_bundle(res.bundle_dir)
                .meta["training"]
                .get("best_checkpoint_score"),
                "temperature": float(cal.get("temperature", 1.0)),
                "overall": res.metrics["intervals"]["overall"],
            }
        )
    scored = [f for f in folds if f["val_score"] is not None]
    mode = getattr(recipe.train, "monitor_mode", None) or (
        "min" if "loss" in str(recipe.train.monitor) else "max"
    )
    pick = (min if mode == "min" else max)(scored or folds, key=lambda f: f["val_score"] or 0.0)
    pooled = _pooled(folds, classes, recipe.evaluate)
    cv_dir = out / f"{recipe.name}_cv"
    cv_dir.mkdir(parents=True, exist_ok=True)
    bundle_dir = cv_dir / "bundle"
    if bundle_dir.exists():
        shutil.rmtree(bundle_dir)
    shutil.copytree(pick["bundle"], bundle_dir)
    summary = json_safe(
        {
            "k": k,
            "folds": folds,
            "pooled": pooled,
            "chosen_fold": pick["fold"],
            "bundle": str(bundle_dir),
            "bundle_choice": (
                f"fold {pick['fold']}: best validation {recipe.train.monitor} "
                f"({pick['val_score']}); its own test figures are in the per-fold table"
            ),
            "monitor": recipe.train.monitor,
            "grouping": "stratified; patients and copy groups kept within one fold",
        }
    )
    add_file(bundle_dir, "crossval.json", json.dumps(summary, indent=2))
    load_bundle(bundle_dir)
    report = _write_report(cv_dir, recipe.name, summary)
    summary["report"] = str(report)
    (cv_dir / "crossval.json").write_text(json.dumps(summary, indent=2))
    return CrossvalResult(cv_dir, bundle_dir, summary, report)


def _write_report(cv_dir: Path, name: str, cv: dict[str, Any]) -> Path:
    """``crossval.html``: the per-fold table, the pooled estimate and the bundle kept."""
    from medlens.evaluate import figures as F
    from medlens.evaluate.intervals import fmt_ci
    from medlens.evaluate.report import CSS, DISCLAIMER
    from medlens.evaluate.report_sections import table

    keys = [f.key for f in F.overall() if f.key in cv["pooled"]["overall"]]
    rows = [
        [
            f"fold {f['fold']}"
            + (" <strong>(bundle)</strong>" if f["fold"] == cv["chosen_fold"] else ""),
            str(f["n_test"]),
            "n/a" if f["val_score"] is None else f"{f['val_score']:.4f}",
            *[fmt_ci(f["overall"].get(k)) for k in keys],
        ]
        for f in cv["folds"]
    ]
    rows.append(
        [
            "<strong>pooled out-of-fold</strong>",
            str(cv["pooled"]["n"]),
            "",
            *[fmt_ci(cv["pooled"]["overall"][k]) for k in keys],
        ]
    )
    body = (
        f"<h1>medlens {cv['k']}-fold cross-validation — {html.escape(name)}</h1>"
        f"<p class='warn'><strong>{html.escape(DISCLAIMER)}</strong></p>"
        f"<p>Folds: {html.escape(cv['grouping'])}. Each fold is a full run (its own report in "
        "its run folder). The pooled estimate pools every image's out-of-fold calibrated "
        "probabilities; its interval is a stratified bootstrap over cases and does not include "
        "the variation between folds' models.</p>"
        + table(
            ["", "n test", f"validation {cv['monitor']}", *[F.display_name(k) for k in keys]], rows
        )
        + f"<p>Bundle kept: {html.escape(cv['bundle_choice'])} — {html.escape(cv['bundle'])}."
        " A refit on all data would leave no held-out images to calibrate it, choose its "
        "thresholds or fit its input gate and conformal sets.</p>"
    )
    doc = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>medlens "
        f"cross-validation — {html.escape(name)}</title><style>{CSS}</style></head><body><main>"
        f"{body}</main></body></html>"
    )
    path = cv_dir / "crossval.html"
    path.write_text(doc, encoding="utf-8")
    return path
