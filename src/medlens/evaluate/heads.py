"""Held-out figures for the other outputs of a model: extra heads and segmentation masks.

A multi-task model's stage head is scored like the class head (every figure with a stratified
bootstrap interval, quadratic kappa for ordered stages); a regression head (a risk score) by its
mean absolute error and Pearson correlation; a segmenter by per-image Dice and IoU. Intervals are
percentile bootstraps over images, seeded, like every other figure medlens prints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from medlens.evaluate.intervals import metrics_with_intervals


def bootstrap_statistic(
    values: Sequence[np.ndarray],
    statistic: Callable[..., float],
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float]:
    """``statistic(*values)`` with a percentile interval from resampling rows together."""
    arrays = [np.asarray(v, dtype=np.float64) for v in values]
    n = len(arrays[0])
    point = float(statistic(*arrays)) if n else float("nan")
    lo = hi = float("nan")
    if n >= 2 and n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        reps = np.array(
            [statistic(*(a[idx] for a in arrays)) for idx in rng.integers(0, n, (n_bootstrap, n))]
        )
        reps = reps[np.isfinite(reps)]
        if len(reps) >= max(10, n_bootstrap // 2):
            lo, hi = (float(q) for q in np.quantile(reps, [alpha / 2, 1 - alpha / 2]))
    return {"value": point, "ci_low": lo, "ci_high": hi}


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


def mask_scores(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU of boolean masks (N x H x W); two empty masks score 1."""
    p = np.asarray(pred, dtype=bool).reshape(len(pred), -1)
    t = np.asarray(truth, dtype=bool).reshape(len(truth), -1)
    inter = (p & t).sum(1).astype(np.float64)
    ps, ts = p.sum(1).astype(np.float64), t.sum(1).astype(np.float64)
    union = ps + ts - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        dice = np.where(ps + ts > 0, 2 * inter / (ps + ts), 1.0)
        iou = np.where(union > 0, inter / union, 1.0)
    return dice, iou


def segmentation_metrics(
    pred: np.ndarray, truth: np.ndarray, n_bootstrap: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, Any]:
    """Mean Dice and IoU over images, with bootstrap intervals."""
    dice, iou = mask_scores(pred, truth)
    return {
        "n": len(dice),
        "dice": bootstrap_statistic([dice], lambda a: float(a.mean()), n_bootstrap, seed, alpha),
        "iou": bootstrap_statistic([iou], lambda a: float(a.mean()), n_bootstrap, seed, alpha),
    }
