"""Metrics with 95 % bootstrap intervals, computed on held-out predictions.

Point estimates come from scikit-learn. The bootstrap resamples cases *within each true class*
(stratified, so every replicate keeps the class mix) with a seeded generator. Replicates use
vectorised NumPy forms of the same figures (bincount confusion matrix, rank-sum ROC-AUC,
step-wise average precision): scikit-learn's per-call input validation would make 1,000
replicates take minutes; the tests check these forms equal scikit-learn's. A figure that is
undefined on the data (a class absent, a zero denominator) is NaN with a warning — never a crash
and never a made-up value.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np


def _div(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def _from_confusion(cm: np.ndarray, quadratic: bool) -> dict[str, Any]:
    """Count-based figures from a confusion matrix (rows true, columns predicted)."""
    cm = cm.astype(np.float64)
    k = cm.shape[0]
    n = cm.sum()
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    tn = n - tp - fp - fn
    with np.errstate(divide="ignore", invalid="ignore"):
        sens = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        spec = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
        ppv = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        npv = np.where(tn + fn > 0, tn / (tn + fn), np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    present = (tp + fn) > 0
    # MCC and Cohen's kappa in their multi-class closed forms (as scikit-learn computes them).
    t_sum, p_sum = cm.sum(1), cm.sum(0)
    cov_ytyp = np.trace(cm) * n - t_sum @ p_sum
    cov_ypyp = n**2 - p_sum @ p_sum
    cov_ytyt = n**2 - t_sum @ t_sum
    mcc = _div(cov_ytyp, math.sqrt(cov_ytyt * cov_ypyp)) if cov_ytyt * cov_ypyp > 0 else 0.0
    idx = np.arange(k)
    w = (
        ((idx[:, None] - idx[None, :]) ** 2)
        if quadratic
        else (idx[:, None] != idx[None, :]).astype(float)
    )
    expected = np.outer(t_sum, p_sum) / n if n else np.zeros_like(cm)
    denom = (w * expected).sum()
    kappa = 1.0 - _div((w * cm).sum(), denom) if denom else float("nan")
    return {
        "accuracy": _div(tp.sum(), n),
        "balanced_accuracy": float(np.nanmean(sens[present])) if present.any() else float("nan"),
        "macro_f1": float(f1.mean()),
        "mcc": float(mcc),
        "kappa": float(kappa),
        "sensitivity": sens,
        "specificity": spec,
        "ppv": ppv,
        "npv": npv,
        "f1": f1,
    }


def sensitivity_at_specificity(y_bin: np.ndarray, score: np.ndarray, specificity: float) -> float:
    """Highest sensitivity whose ROC point has specificity ≥ the target (NaN if undefined)."""
    from sklearn.metrics import roc_curve

    if y_bin.min() == y_bin.max():
        return float("nan")
    fpr, tpr, _ = roc_curve(y_bin, score)
    ok = (1.0 - fpr) >= specificity - 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def _fast_ranking(
    y_bin: np.ndarray, score: np.ndarray, target_spec: float
) -> tuple[float, float, float]:
    """ROC-AUC, average precision and sensitivity at specificity, as scikit-learn defines them."""
    from scipy.stats import rankdata

    n_pos = int(y_bin.sum())
    n_neg = len(y_bin) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan"), float("nan"), float("nan")
    ranks = rankdata(score)  # average ranks: ties count one half, as in roc_auc_score
    auc = (ranks[y_bin].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    order = np.argsort(-score, kind="mergesort")
    s_sorted = score[order]
    tp = np.cumsum(y_bin[order])
    fp = np.cumsum(~y_bin[order])
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s_sorted) - 1]  # end of each distinct score
    tp, fp = tp[last], fp[last]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    spec = 1.0 - fp / n_neg
    ok = spec >= target_spec - 1e-12
    sas = float(recall[ok].max()) if ok.any() else 0.0
    return float(auc), ap, sas


def _ranking(
    y: np.ndarray, probs: np.ndarray, k: int, target_spec: float, exact: bool
) -> dict[str, np.ndarray]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    auc = np.full(k, np.nan)
    ap = np.full(k, np.nan)
    sas = np.full(k, np.nan)
    for i in range(k):
        yb = y == i
        if not 0 < yb.sum() < len(yb):
            continue
        if exact:
            auc[i] = roc_auc_score(yb, probs[:, i])
            ap[i] = average_precision_score(yb, probs[:, i])
            sas[i] = sensitivity_at_specificity(yb.astype(int), probs[:, i], target_spec)
        else:
            auc[i], ap[i], sas[i] = _fast_ranking(yb, probs[:, i], target_spec)
    return {"roc_auc": auc, "pr_auc": ap, "sens_at_spec": sas}


def _all_figures(
    y: np.ndarray,
    probs: np.ndarray,
    k: int,
    quadratic: bool,
    target_spec: float,
    exact: bool = True,
) -> dict[str, Any]:
    if exact:
        from sklearn.metrics import confusion_matrix

        cm = confusion_matrix(y, probs.argmax(1), labels=list(range(k)))
    else:
        cm = np.bincount(y * k + probs.argmax(1), minlength=k * k).reshape(k, k)
    out = _from_confusion(cm, quadratic)
    out.update(_ranking(y, probs, k, target_spec, exact))
    finite_auc = np.isfinite(out["roc_auc"])
    finite_ap = np.isfinite(out["pr_auc"])
    out["macro_roc_auc"] = (
        float(out["roc_auc"][finite_auc].mean()) if finite_auc.any() else float("nan")
    )
    out["macro_pr_auc"] = (
        float(out["pr_auc"][finite_ap].mean()) if finite_ap.any() else float("nan")
    )
    out["confusion_matrix"] = cm
    return out


PER_CLASS = ("sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc", "pr_auc", "sens_at_spec")
OVERALL = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "mcc",
    "kappa",
    "macro_roc_auc",
    "macro_pr_auc",
)


def _interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if len(v) < max(10, 0.5 * len(values)):  # mostly undefined: no honest interval
        return float("nan"), float("nan")
    lo, hi = np.quantile(v, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def metrics_with_intervals(
    y_true: Sequence[int],
    probs: np.ndarray,
    classes: Sequence[str],
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    ordinal: bool = False,
    target_specificity: float = 0.9,
) -> dict[str, Any]:
    """Every figure as ``{"value", "ci_low", "ci_high"}`` plus the confusion matrix.

    ``ordinal`` uses quadratic-weighted kappa (ordered stages such as F0–F4); otherwise Cohen's
    unweighted kappa. Sensitivity is also reported at a fixed ``target_specificity`` per class.
    """
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    if p.shape != (len(y), k):
        raise ValueError(f"probs must be N x {k}, got {p.shape} for {len(y)} labels")
    for i, c in enumerate(classes):
        if not (y == i).any():
            warnings.warn(
                f"class {c!r} is absent from the labels: its figures are NaN",
                RuntimeWarning,
                stacklevel=2,
            )
    point = _all_figures(y, p, k, ordinal, target_specificity)
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y == i) for i in range(k)]
    reps: dict[str, list] = {m: [] for m in (*OVERALL, *PER_CLASS)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n_bootstrap):
            idx = np.concatenate(
                [rng.choice(ix, size=len(ix), replace=True) for ix in by_class if len(ix)]
            )
            f = _all_figures(y[idx], p[idx], k, ordinal, target_specificity, exact=False)
            for m in reps:
                reps[m].append(f[m])

    def pack(value: float, samples: np.ndarray) -> dict[str, float]:
        lo, hi = _interval(samples, alpha) if n_bootstrap else (float("nan"), float("nan"))
        return {"value": float(value), "ci_low": lo, "ci_high": hi}

    overall = {m: pack(point[m], np.array(reps[m], dtype=float)) for m in OVERALL}
    per_class = {
        c: {m: pack(point[m][i], np.array([r[i] for r in reps[m]], dtype=float)) for m in PER_CLASS}
        for i, c in enumerate(classes)
    }
    for i, c in enumerate(classes):
        per_class[c]["support"] = int((y == i).sum())
    return {
        "n": len(y),
        "classes": list(classes),
        "confidence_level": 1 - alpha,
        "n_bootstrap": n_bootstrap,
        "bootstrap": "stratified by true class",
        "seed": seed,
        "target_specificity": target_specificity,
        "kappa_weighting": "quadratic" if ordinal else "none",
        "overall": overall,
        "per_class": per_class,
        "confusion_matrix": point["confusion_matrix"].tolist(),
    }


def fmt_ci(m: dict[str, float], digits: int = 3) -> str:
    """``0.912 [0.871–0.948]`` (or ``n/a`` when undefined)."""
    v, lo, hi = m["value"], m["ci_low"], m["ci_high"]
    if not math.isfinite(v):
        return "n/a"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} [{lo:.{digits}f}–{hi:.{digits}f}]"
