"""Figures with 95 % intervals, computed on held-out predictions.

Every figure of :data:`medlens.evaluate.figures.FIGURES` is computed by its one function on the
test set and on bootstrap replicates that resample cases *within each true class* (stratified,
so every replicate keeps the class mix) with a seeded generator; the interval is the percentile
interval of the replicates.

When the cases carry patient ids (``groups``), a replicate resamples *patients*, each with all
its images, within strata of the patients' majority class: slices of one patient are not
independent evidence, and resampling them as if they were gives intervals far too narrow (the
SIJ MRI example: 25 slices of one subject, ROC-AUC 1.000 [1.000–1.000], while three other
subjects scored 0.456). With one image per patient the replicates are the image bootstrap's,
draw for draw (same seed, same intervals).

An interval never collapses silently (:func:`pack`). When every case is right (or every case is
wrong) a proportion's replicates are all equal, so instead of ``1.000 [1.000–1.000]`` it gets an
exact one-sided Clopper–Pearson bound and says how many cases it rests on. Any other figure whose
replicates are all equal is marked "interval not estimable". A figure undefined on the data (a
class absent, a zero denominator) is NaN with a warning — never a crash, never a made-up value.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from medlens.evaluate import figures as F

PER_CLASS = tuple(f.key for f in F.per_class())
OVERALL = tuple(f.key for f in F.overall())
EXACT = "exact one-sided"
NOT_ESTIMABLE = "not estimable"


def sensitivity_at_specificity(y_bin: np.ndarray, score: np.ndarray, specificity: float) -> float:
    """Highest sensitivity whose ROC point has specificity ≥ the target (NaN if undefined)."""
    y = np.asarray(y_bin).astype(bool)
    return F.fast_ranking(y, np.asarray(score, dtype=np.float64), specificity)[2]


def percentile_interval(
    samples: np.ndarray, alpha: float, min_finite: int | None = None
) -> tuple[float, float, float]:
    """``(low, high, share)`` of the finite replicates, ``share`` being the fraction of them
    equal to ``low`` when the interval has zero width (else 0); NaN when too few are finite.

    Mostly undefined replicates (fewer finite than ``min_finite``, default half and at least
    10) give no honest interval.
    """
    v = np.asarray(samples, dtype=np.float64)
    finite = v[np.isfinite(v)]
    need = max(10, 0.5 * len(v)) if min_finite is None else min_finite
    if len(finite) == 0 or len(finite) < need:
        return float("nan"), float("nan"), 0.0
    lo, hi = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    share = float(np.mean(finite == lo)) if lo == hi else 0.0
    return float(lo), float(hi), share


def exact_bound(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """One-sided Clopper–Pearson bound at level ``1 - alpha`` for all-or-nothing counts:
    ``(lower, 1)`` when every trial succeeded, ``(0, upper)`` when none did."""
    from scipy.stats import binomtest

    side = "greater" if successes == trials else "less"
    ci = binomtest(int(successes), int(trials), alternative=side).proportion_ci(
        confidence_level=1 - alpha, method="exact"
    )
    return float(ci.low), float(ci.high)


def pack(
    value: float,
    samples: np.ndarray | None,
    alpha: float,
    counts: tuple[float, float] | None = None,
    min_finite: int | None = None,
) -> dict[str, Any]:
    """``{"value", "ci_low", "ci_high"}`` and, when the bootstrap cannot give an interval, why.

    ``counts`` (successes, trials) marks a proportion: all or none right gives an exact
    one-sided bound (``interval: "exact one-sided"``, ``method``, ``successes``, ``trials``,
    ``level``). Any other figure whose percentile interval has zero width (all, or nearly all,
    replicates equal) gets no interval (``interval: "not estimable"`` and a ``note``): a
    ``1.000 [1.000–1.000]`` would claim a certainty the test set does not give.
    """
    value = float(value)
    out: dict[str, Any] = {"value": value, "ci_low": float("nan"), "ci_high": float("nan")}
    if not math.isfinite(value):
        return out
    if counts is not None:
        x, n = (round(float(c)) for c in counts)
        if n > 0 and x in (0, n):
            lo, hi = exact_bound(x, n, alpha)
            out.update(
                ci_low=lo,
                ci_high=hi,
                interval=EXACT,
                method="Clopper-Pearson",
                successes=x,
                trials=n,
                level=1 - alpha,
            )
            return out
    if samples is None or len(samples) == 0:
        return out
    lo, hi, share = percentile_interval(samples, alpha, min_finite)
    if share >= 1.0:
        out.update(interval=NOT_ESTIMABLE, note="all resamples equal")
    elif share > 0.0:
        out.update(interval=NOT_ESTIMABLE, note=f"{100 * share:.1f} % of resamples equal {lo:.3f}")
    else:
        out.update(ci_low=lo, ci_high=hi)
    return out


def bootstrap_statistic(
    values: Sequence[np.ndarray],
    statistic: Callable[..., float],
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups: Sequence[object] | None = None,
) -> dict[str, Any]:
    """``statistic(*values)`` with a percentile interval from resampling rows together.

    For figures that are not counts (a mean Dice, a mean absolute error): replicates that are
    all equal give "interval not estimable", not a zero-width interval. ``groups`` (one patient
    id per row) resamples patients with all their rows instead of single rows.
    """
    arrays = [np.asarray(v, dtype=np.float64) for v in values]
    n = len(arrays[0])
    point = float(statistic(*arrays)) if n else float("nan")
    units = None if groups is None else _group_units(groups, n)
    if units is not None and len(units) == n:
        units = None  # one row per patient: the row bootstrap, draw for draw
    reps = None
    if n >= 2 and n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        reps = np.array(
            [
                statistic(*(a[idx] for a in arrays))
                for idx in (_resample(rng, n, units) for _ in range(n_bootstrap))
            ],
            dtype=np.float64,
        )
    return pack(point, reps, alpha, min_finite=max(10, n_bootstrap // 2))


def _group_units(groups: Sequence[object], n: int) -> list[np.ndarray]:
    """Indices of each group's cases, groups ordered by their first case."""
    if len(groups) != n:
        raise ValueError(f"groups must give one id per case: {len(groups)} for {n} cases")
    members: dict[object, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    return [np.array(ix, dtype=np.int64) for ix in members.values()]


def _resampling_units(
    y: np.ndarray, k: int, groups: Sequence[object] | None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(units, strata)``: the index arrays a replicate draws whole (one case each, or one
    patient's cases each) and, per class, which units belong to that stratum (a patient goes
    to its majority class, the lowest on a tie)."""
    if groups is None:  # each case its own unit: draws are case indices
        return [], [np.flatnonzero(y == c) for c in range(k)]
    units = _group_units(groups, len(y))
    major = np.array([int(np.bincount(y[u], minlength=k).argmax()) for u in units])
    return units, [np.flatnonzero(major == c) for c in range(k)]


def _resample(rng: np.random.Generator, n: int, units: list[np.ndarray] | None) -> np.ndarray:
    if units is None:
        return rng.integers(0, n, n)
    pick = rng.integers(0, len(units), len(units))
    return np.concatenate([units[j] for j in pick])


def metrics_with_intervals(
    y_true: Sequence[int],
    probs: np.ndarray,
    classes: Sequence[str],
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    ordinal: bool = False,
    target_specificity: float = 0.9,
    groups: Sequence[object] | None = None,
) -> dict[str, Any]:
    """Every figure of the table as :func:`pack` gives it, plus the confusion matrix.

    ``ordinal`` uses quadratic-weighted kappa (ordered stages such as F0–F4); otherwise Cohen's
    unweighted kappa. Sensitivity is also reported at a fixed ``target_specificity`` per class.
    ``groups`` (one patient id per case) makes the bootstrap resample patients, not images.
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
    basis = F.Basis(y, p, k, ordinal, target_specificity)
    point = F.compute(basis)
    rng = np.random.default_rng(seed)
    units, strata = _resampling_units(y, k, groups)
    reps: dict[str, list] = {f.key: [] for f in F.FIGURES}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n_bootstrap):
            draws = np.concatenate(
                [rng.choice(st, size=len(st), replace=True) for st in strata if len(st)]
            )
            idx = draws if groups is None else np.concatenate([units[j] for j in draws])
            rep = F.compute(F.Basis(y[idx], p[idx], k, ordinal, target_specificity))
            for key in reps:
                reps[key].append(rep[key])

    def counts(f: F.Figure, i: int | None) -> tuple[float, float] | None:
        if f.counts is None:
            return None
        x, n = f.counts(basis)
        return (x, n) if i is None else (x[i], n[i])

    overall = {
        f.key: pack(point[f.key], np.array(reps[f.key], dtype=float), alpha, counts(f, None))
        for f in F.overall()
    }
    per_class: dict[str, dict[str, Any]] = {}
    for i, c in enumerate(classes):
        per_class[c] = {
            f.key: pack(
                point[f.key][i],
                np.array([r[i] for r in reps[f.key]], dtype=float),
                alpha,
                counts(f, i),
            )
            for f in F.per_class()
        }
        per_class[c]["support"] = int((y == i).sum())
    return {
        "n": len(y),
        "n_patients": None if groups is None else len(units),  # units: one per patient
        "classes": list(classes),
        "confidence_level": 1 - alpha,
        "n_bootstrap": n_bootstrap,
        "bootstrap": "stratified by true class"
        if groups is None
        else "patients (all images of each), stratified by the patient's majority class",
        "seed": seed,
        "target_specificity": target_specificity,
        "kappa_weighting": "quadratic" if ordinal else "unweighted",
        "overall": overall,
        "per_class": per_class,
        "confusion_matrix": basis.confusion.tolist(),
    }


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def fmt_ci(m: dict[str, Any] | None, digits: int = 3) -> str:
    """``0.912 [0.871–0.948]``; an all-or-nothing proportion with its exact one-sided bound;
    a figure without an interval says why; ``n/a`` when undefined. Accepts JSON (None) too."""
    if not m:
        return "n/a"
    v, lo, hi = _num(m.get("value")), _num(m.get("ci_low")), _num(m.get("ci_high"))
    if not math.isfinite(v):
        return "n/a"
    d = digits
    if m.get("interval") == EXACT:
        n, level = int(m["trials"]), round(100 * float(m.get("level", 0.95)))
        method = "Clopper–Pearson" if m.get("method") == "Clopper-Pearson" else m.get("method")
        if int(m["successes"]) == n:
            return (
                f"{v:.{d}f} (all {n} of {n}; one-sided {level} % lower bound {lo:.{d}f}, {method})"
            )
        return f"{v:.{d}f} (none of {n}; one-sided {level} % upper bound {hi:.{d}f}, {method})"
    if m.get("interval") == NOT_ESTIMABLE:
        return f"{v:.{d}f}, interval not estimable ({m.get('note', 'all resamples equal')})"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{v:.{d}f}"
    if hi - lo < 1e-6:  # stored by a run before zero-width intervals were marked
        return f"{v:.{d}f}, interval not estimable (zero width)"
    bd = d
    while f"{lo:.{bd}f}" == f"{hi:.{bd}f}":  # never print [1.000–1.000]: show the digits
        bd += 1
    if bd != d:
        return f"{v:.{d}f} [{lo:.{bd}f}–{hi:.{bd}f}]"
    return f"{v:.{d}f} [{lo:.{d}f}–{hi:.{d}f}]"
