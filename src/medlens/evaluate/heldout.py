"""Everything medlens reports about a model, from validation and test scores, in one place.

Validation chooses (temperature, thresholds); test only measures. The functions here take the
two sets of logits separately so that nothing fitted can see a test label: ``fit_on_validation``
never receives test data at all.

``json_safe`` is re-exported from :mod:`medlens.common` (its one home) for older imports.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medlens.common import json_safe
from medlens.evaluate.calibration import (
    TemperatureScaling,
    calibration_errors,
    reliability_curve,
    softmax,
)
from medlens.evaluate.caveats import model_warnings
from medlens.evaluate.intervals import metrics_with_intervals
from medlens.evaluate.metrics import classification_metrics
from medlens.evaluate.policy import DecisionPolicy, compare_argmax_policy, fit_policy

__all__ = ["Fitted", "Scores", "evaluate_test", "fit_on_validation", "json_safe", "threshold_sweep"]


@dataclass
class Scores:
    """Logits of a split with their true labels and sources (paths or sample ids)."""

    sources: list[str]
    y: np.ndarray
    logits: np.ndarray

    def write_csv(self, path: Path, classes: Sequence[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["source", "true", *[f"logit_{c}" for c in classes]])
            for s, t, z in zip(self.sources, self.y, self.logits, strict=True):
                w.writerow([s, classes[int(t)], *[repr(float(v)) for v in z]])

    @classmethod
    def read_csv(cls, path: Path, classes: Sequence[str]) -> Scores:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        idx = {c: i for i, c in enumerate(classes)}
        return cls(
            [r["source"] for r in rows],
            np.array([idx[r["true"]] for r in rows], dtype=int),
            np.array(
                [[float(r[f"logit_{c}"]) for c in classes] for r in rows], dtype=np.float64
            ).reshape(len(rows), len(classes)),
        )


@dataclass
class Fitted:
    temperature: float
    calibration: dict[str, Any]
    policy: DecisionPolicy | None


def fit_on_validation(
    val: Scores,
    classes: Sequence[str],
    priority: Sequence[str],
    targets: dict[str, float],
    calibration: str = "temperature",
    n_bins: int = 15,
) -> Fitted:
    """Temperature and decision thresholds, from validation scores only."""
    t = 1.0
    if calibration == "temperature":
        t = TemperatureScaling().fit(val.logits, val.y).temperature
    before = calibration_errors(val.y, softmax(val.logits), n_bins)
    after = calibration_errors(val.y, softmax(val.logits, t), n_bins)
    cal = {
        "method": calibration,
        "temperature": t,
        "fitted_on": "validation",
        "n_validation": len(val.y),
        "validation_ece_before": before["ece"],
        "validation_ece_after": after["ece"],
    }
    policy = None
    if priority:
        policy = fit_policy(val.y, softmax(val.logits, t), classes, priority, targets)
    return Fitted(t, cal, policy)


def threshold_sweep(
    y: np.ndarray, probs: np.ndarray, class_index: int, n: int = 101
) -> dict[str, list[float]]:
    """One-vs-rest sensitivity and specificity of ``p >= t`` for t on a grid (for the report)."""
    ts = np.linspace(0, 1, n)
    pos = y == class_index
    sens, spec = [], []
    for t in ts:
        hit = probs[:, class_index] >= t
        sens.append(float((hit & pos).sum() / pos.sum()) if pos.any() else float("nan"))
        spec.append(float((~hit & ~pos).sum() / (~pos).sum()) if (~pos).any() else float("nan"))
    return {"threshold": ts.tolist(), "sensitivity": sens, "specificity": spec}


def _patient_groups(
    sources: Sequence[str], patients: Mapping[str, str | None] | None
) -> tuple[list[str] | None, dict[str, Any] | None]:
    """Bootstrap groups (a test image without an id is its own patient) and the summary the
    report and its warnings read: ``{"ids", "n_images", "n_patients"}``; ``(None, None)`` when
    no mapping was given."""
    if patients is None:
        return None, None
    ids = [patients.get(s) or None for s in sources]
    if not any(ids):
        return None, {"ids": False, "n_images": len(ids), "n_patients": None}
    groups = [f"patient:{p}" if p else f"image:{s}" for p, s in zip(ids, sources, strict=True)]
    return groups, {"ids": True, "n_images": len(ids), "n_patients": len(set(groups))}


def evaluate_test(
    test: Scores,
    fitted: Fitted,
    classes: Sequence[str],
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    ordinal: bool = False,
    target_specificity: float = 0.9,
    n_bins: int = 15,
    patients: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """All held-out figures: core metrics (calibrated), intervals, calibration, argmax vs policy,
    and ``warnings`` (:func:`~medlens.evaluate.caveats.model_warnings`) a reader must see first.

    ``patients`` maps each test source to its patient id (None: none known). With ids, the
    bootstrap resamples patients, not images; ``test_patients`` records how many there were, or
    that the data had none (then the warnings say the figures may be optimistic). Without the
    mapping nothing is claimed either way.
    """
    p_raw = softmax(test.logits)
    p_cal = softmax(test.logits, fitted.temperature)
    out = classification_metrics(test.y, p_cal, classes)
    out["split"] = "test"
    groups, out["test_patients"] = _patient_groups(test.sources, patients)
    out["intervals"] = metrics_with_intervals(
        test.y,
        p_cal,
        classes,
        n_bootstrap=n_bootstrap,
        seed=seed,
        alpha=1 - confidence,
        ordinal=ordinal,
        target_specificity=target_specificity,
        groups=groups,
    )
    out["calibration"] = {
        **fitted.calibration,
        "test_before": calibration_errors(test.y, p_raw, n_bins),
        "test_after": calibration_errors(test.y, p_cal, n_bins),
        "reliability_before": reliability_curve(test.y, p_raw, n_bins),
        "reliability_after": reliability_curve(test.y, p_cal, n_bins),
    }
    if fitted.policy is not None:
        out["policy"] = {
            **fitted.policy.to_dict(),
            "test": compare_argmax_policy(test.y, p_cal, fitted.policy),
        }
    out = json_safe(out)
    out["warnings"] = model_warnings(out)
    return out
