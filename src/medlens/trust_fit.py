"""Fitting a run's input gate and conformal sets, and measuring them on the test split.

Both are fitted after the bundle is written and calibrated, through the bundle's own
:class:`~medlens.inference.Predictor` (:meth:`Predictor.embed`: the same loading, gradability
check, preprocessing and single forward pass that serving uses), so what the gate learnt is what
it will see:

- the **gate** summarises the training images' features and acquisition properties and takes its
  thresholds on validation so that at least 99 % of validation images pass;
- the **conformal sets** are fitted on the validation split's calibrated probabilities at the
  recipe's ``evaluate.coverage``.

The test split only measures: coverage with intervals, set sizes, accuracy on single-class sets,
and the gate's outcomes (share flagged, accuracy on the images that pass).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from medlens.common import json_safe
from medlens.evaluate.conformal import ConformalSets, coverage_report
from medlens.evaluate.gate import InputGate
from medlens.inference import Prediction, Predictor

log = logging.getLogger(__name__)
MAX_TRAIN = 4000  # training images summarised by the gate (a seeded sample beyond this)
VAL_PASS = 0.99

__all__ = ["MAX_TRAIN", "fit_gate", "fit_sets", "test_outcomes"]


def fit_gate(
    predictor: Predictor,
    train: Sequence[Any],
    val: Sequence[Any],
    classes: Sequence[str],
    *,
    min_size: int = 16,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> InputGate | None:
    """The input gate of a trained bundle, or None when too few images could be embedded.

    ``train``/``val``: manifest samples (with ``label``). Training images beyond
    :data:`MAX_TRAIN` are sampled (seeded): the class means and covariance are stable long before.
    """
    train = list(train)
    if len(train) > MAX_TRAIN:
        pick = np.sort(np.random.default_rng(seed).choice(len(train), MAX_TRAIN, replace=False))
        train = [train[i] for i in pick]
    log.info("fitting the input gate on %d training, %d validation images", len(train), len(val))
    train_in, train_labels = _with_modalities_withheld(predictor, train)
    val_in, _ = _with_modalities_withheld(predictor, list(val))
    kt, ft, _, at = predictor.embed(train_in, batch_size, progress)
    kv, fv, _, av = predictor.embed(val_in, batch_size, progress)
    if len(kt) < 2 or len(kv) < 1:
        log.warning("input gate not fitted: too few gradable training/validation images")
        return None
    idx = {c: i for i, c in enumerate(classes)}
    labels = np.array([idx.get(train_labels[i], 0) for i in kt])
    return InputGate.fit(ft, at, fv, av, VAL_PASS, train_labels=labels, min_size=min_size)


def _with_modalities_withheld(
    predictor: Predictor, samples: Sequence[Any]
) -> tuple[list[Any], list[str | None]]:
    """The gate's reference inputs and their labels. A fusion model is meant to predict with a
    modality missing (its learned placeholder stands in), so its gate must know what such cases
    look like: each case also enters once with each non-main modality withheld. Without this,
    every prediction with a missing modality would be refused as out of distribution."""
    labels: list[str | None] = [getattr(s, "label", None) for s in samples]
    if not predictor.modalities:
        return list(samples), labels
    names = list(predictor.modalities)
    out: list[Any] = list(samples)
    out_labels = list(labels)
    for s, label in zip(samples, labels, strict=True):
        given = predictor._given(s)
        for m in names[1:]:
            if given.get(m) is None:
                continue
            variant = {k: v for k, v in given.items() if k != m and v is not None}
            if variant:
                out.append(variant)
                out_labels.append(label)
    return out, out_labels


def fit_sets(
    predictor: Predictor, val_logits: np.ndarray, val_y: np.ndarray, coverage: float
) -> ConformalSets | None:
    """Class-conditional conformal sets on the validation split's calibrated probabilities."""
    if len(val_y) == 0:
        return None
    return ConformalSets.fit(
        predictor.probabilities(val_logits), val_y, coverage, n_classes=len(predictor.classes)
    )


def test_outcomes(
    predictor: Predictor,
    preds: Sequence[Prediction],
    y: np.ndarray,
    logits: np.ndarray,
    unreadable: dict[str, str],
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """What the gate and the sets did on the test split (``metrics["trust"]``).

    ``preds``/``y``/``logits``: the test images that were read and graded (aligned);
    ``unreadable``: the rest, by source (ungradable ones are listed there with their reason).
    Coverage is measured on every graded test image (the sets' guarantee is about exchangeable
    cases, which the gate does not select); gate outcomes count how many were flagged and the
    accuracy (most probable class) on those that pass beside all.
    """
    classes = list(predictor.classes)
    out: dict[str, Any] = {
        "input_check": predictor.trust.gate_status,
        "prediction_sets": predictor.trust.sets_status,
    }
    probs = predictor.probabilities(logits) if len(logits) else np.zeros((0, len(classes)))
    arg = probs.argmax(axis=1) if len(probs) else np.zeros(0, int)
    if predictor.sets is not None and len(y):
        sets = predictor.sets.predict_sets(probs)
        out["conformal"] = {
            "fitted": predictor.sets.to_dict(),
            "test": coverage_report(
                sets,
                y,
                classes,
                n_bootstrap,
                seed,
                alpha,
                predicted=arg,
                target=predictor.sets.coverage,
            ),
        }
    ungradable = {k: v for k, v in unreadable.items() if v.startswith("ungradable:")}
    status = Counter(p.status for p in preds)
    status["ungradable"] += len(ungradable)
    n_all = len(preds) + len(ungradable)
    passed = np.array([p.status == "ok" for p in preds], dtype=bool)
    gate: dict[str, Any] = {
        "n": n_all,
        "status_counts": dict(status),
        "share_flagged": (n_all - int(passed.sum())) / n_all if n_all else None,
        "accuracy_all": float(np.mean(arg == y)) if len(y) else None,
        "accuracy_passed": float(np.mean(arg[passed] == y[passed])) if passed.any() else None,
        "flagged": {
            **{p.source: f"{p.status}: {p.reason}" for p in preds if p.status != "ok"},
            **ungradable,
        },
    }
    if predictor.gate is not None:
        g = predictor.gate
        gate["fitted"] = {
            "method": g.method,
            "n_train": g.n_train,
            "n_val": g.n_val,
            "val_pass_target": g.val_pass,
            "val_pass_achieved": g.val_pass_achieved,
            "feature_threshold": g.feature_threshold,
            "acquisition_threshold": g.acq_threshold,
            "min_size": g.min_size,
        }
    out["gate"] = gate
    return json_safe(out)
