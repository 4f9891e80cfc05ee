"""Held-out figures for the other outputs of a model: extra heads and segmentation masks.

A multi-task model's stage head is scored like the class head (every figure with a stratified
bootstrap interval, quadratic kappa for ordered stages); a regression head (a risk score) by its
mean absolute error and Pearson correlation; a segmenter by per-image Dice and IoU
(:mod:`.segmentation`). Intervals are percentile bootstraps over images, seeded, like every
other figure medlens prints.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medlens.evaluate.intervals import bootstrap_statistic, metrics_with_intervals
from medlens.evaluate.segmentation import dice_iou as mask_scores
from medlens.evaluate.segmentation import segmentation_metrics

# Segmentation figures live in :mod:`medlens.evaluate.segmentation`; the names stay importable
# from here for callers written before the move.
__all__ = [
    "bootstrap_statistic",
    "head_metrics",
    "mask_scores",
    "regression_metrics",
    "segmentation_metrics",
]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def regression_metrics(
    y: np.ndarray, pred: np.ndarray, n_bootstrap: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, Any]:
    """MAE and Pearson r (with intervals) over the cases whose target is known."""
    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    known = np.isfinite(y)
    y, pred = y[known], pred[known]
    return {
        "n": int(known.sum()),
        "mae": bootstrap_statistic(
            [y, pred], lambda a, b: float(np.abs(a - b).mean()), n_bootstrap, seed, alpha
        ),
        "pearson_r": bootstrap_statistic([y, pred], _pearson, n_bootstrap, seed, alpha),
    }


def head_metrics(
    heads: dict[str, dict[str, Any]],
    outputs: dict[str, np.ndarray],
    targets: dict[str, np.ndarray],
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Figures for each extra head: ``outputs[h]`` are probabilities (N x k) or values (N)."""
    out: dict[str, Any] = {}
    for name, spec in heads.items():
        if name not in outputs or name not in targets:
            continue
        t = np.asarray(targets[name])
        o = np.asarray(outputs[name], dtype=np.float64)
        if spec.get("type") == "regression":
            out[name] = {"type": "regression", **regression_metrics(t, o, n_bootstrap, seed, alpha)}
            continue
        known = t >= 0
        k = int(spec.get("num_classes") or o.shape[1])
        names = list(spec.get("classes") or [str(i) for i in range(k)])
        present = sorted(set(t[known].astype(int).tolist()))
        if len(present) < 2:
            out[name] = {"type": "classification", "n": int(known.sum()), "skipped": "one class"}
            continue
        m = metrics_with_intervals(
            t[known].astype(int),
            o[known],
            names,
            n_bootstrap=n_bootstrap,
            seed=seed,
            alpha=alpha,
            ordinal=bool(spec.get("ordinal", False)),
        )
        out[name] = {"type": "classification", **m}
    return out
