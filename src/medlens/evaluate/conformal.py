"""Split-conformal, class-conditional (Mondrian) prediction sets on calibrated probabilities.

A prediction set is the list of classes a model cannot rule out at a chosen coverage: for a new
case whose true class is ``k``, the set contains ``k`` with probability at least ``coverage``
(say 90 %), *for every class separately* — a guarantee that holds whatever the model, as long as
the new cases are exchangeable with the calibration (validation) cases. A set of one class is an
answer; a set of several means "uncertain — human review".

Class-conditional, not marginal: with a marginal threshold the 90 % can be met by covering the
common class 97 % of the time and a rare, dangerous one 60 % of the time. Each class ``k`` gets its
own threshold ``q_k``: the ``ceil((n_k + 1) * coverage)``-th smallest non-conformity score of the
``n_k`` validation cases of class ``k`` (the finite-sample-valid split-conformal quantile). A class
with too few calibration cases for that rank to exist (``n_k < coverage / (1 - coverage)``,
9 cases at 90 %) — or absent from validation — gets the conservative threshold ``+inf`` (it is in
every set), and :attr:`ConformalSets.too_few` records it, so the report can say so.

Scores: ``"lac"`` (``1 - p_k``, the smallest sets on average) and ``"aps"`` (the probability mass
of classes at least as likely as ``k``, non-randomised: sets adapt to how spread the
probabilities are). ``lac`` is the default: non-randomised ``aps`` ties at 1.0 whenever the true
class is the least likely one, so with few classes it over-covers (96 % for a 90 % target on
three classes in the tests) — valid but wider. Randomised ``aps`` would fix that at the cost of
sets that change between two runs on the same image, which a clinical tool should not do.

Written by hand rather than with MAPIE or TorchCP: both wrap an estimator (MAPIE an sklearn
``predict_proba`` model, TorchCP a torch model; TorchCP also pulls transformers and
torch-geometric) and MAPIE 1.x has no class-conditional mode, while medlens calibrates on stored
probabilities; the whole method is the quantile below. crepes' Mondrian ``ConformalClassifier``
gives the same sets (checked in ``tests/test_conformal.py`` when it is installed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medlens.common import json_safe

SCORES = ("lac", "aps")

__all__ = ["SCORES", "ConformalSets", "coverage_report", "nonconformity", "set_labels"]


def _probs(probs: Any) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be an (n_cases, n_classes ≥ 2) array, got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probabilities contain NaN or inf: calibrate on finite model outputs")
    return p


def nonconformity(probs: Any, score: str = "lac") -> np.ndarray:
    """``(n, K)`` non-conformity of every candidate class: large means "unlike this class".

    ``lac``: ``1 - p_k``. ``aps``: sum of the probabilities of all classes with ``p_j ≥ p_k``
    (ties counted together, so the score is deterministic and a set never depends on class order).
    """
    p = _probs(probs)
    if score == "lac":
        return 1.0 - p
    if score == "aps":
        # s[i, k] = sum_j p[i, j] * [p[i, j] >= p[i, k]]
        return np.einsum("ij,ijk->ik", p, p[:, :, None] >= p[:, None, :])
    raise ValueError(f"conformal score must be one of {SCORES}, got {score!r}")


@dataclass
class ConformalSets:
    """Per-class conformal thresholds; :meth:`fit` on validation, :meth:`predict_sets` anywhere."""

    thresholds: np.ndarray  # (K,), +inf where a class had too few calibration cases
    coverage: float
    score: str = "lac"
    counts: list[int] = field(default_factory=list)  # calibration cases per class
    too_few: list[int] = field(default_factory=list)  # classes given the conservative threshold

    @classmethod
    def fit(
        cls,
        probs_val: Any,
        y_val: Any,
        coverage: float = 0.9,
        score: str = "lac",
        n_classes: int | None = None,
    ) -> ConformalSets:
        """Thresholds from the validation split's calibrated probabilities and true labels.

        ``n_classes`` defaults to the probability columns; a class without validation cases is
        not an error: it gets ``+inf`` and is listed in ``too_few``.
        """
        if not 0.0 < coverage < 1.0:
            raise ValueError(f"coverage must lie strictly between 0 and 1, got {coverage}")
        p = _probs(probs_val)
        y = np.asarray(y_val).astype(np.int64).ravel()
        k = int(n_classes or p.shape[1])
        if len(y) != len(p):
            raise ValueError(f"{len(p)} probability rows but {len(y)} labels")
        if len(y) and (y.min() < 0 or y.max() >= k):
            raise ValueError(f"labels must be class indices 0..{k - 1}")
        s = nonconformity(p, score)
        thresholds = np.full(k, np.inf)
        counts, too_few = [], []
        for c in range(k):
            sc = np.sort(s[y == c, c])
            n = len(sc)
            counts.append(n)
            rank = math.ceil((n + 1) * coverage - 1e-9)  # 1-based; epsilon: float rounding
            if n == 0 or rank > n:
                too_few.append(c)
                continue
            thresholds[c] = sc[rank - 1]
        return cls(thresholds, float(coverage), score, counts, too_few)

    @property
    def min_cases_per_class(self) -> int:
        """Smallest calibration count per class that gives a finite threshold at this coverage."""
        return max(1, math.ceil(self.coverage / (1.0 - self.coverage) - 1e-9))

    def predict_mask(self, probs: Any) -> np.ndarray:
        """``(n, K)`` boolean membership; a row that would be empty gets its most probable class.

        An empty set would mean "none of the known classes" — a claim conformal sets cannot make
        (that is the input gate's job) — so it falls back to the top class rather than showing
        nothing.
        """
        p = _probs(probs)
        if p.shape[1] != len(self.thresholds):
            raise ValueError(
                f"probabilities have {p.shape[1]} classes, the sets were fitted on "
                f"{len(self.thresholds)}"
            )
        mask = nonconformity(p, self.score) <= self.thresholds[None, :]
        empty = ~mask.any(axis=1)
        if empty.any():
            mask[np.flatnonzero(empty), p[empty].argmax(axis=1)] = True
        return mask

    def predict_sets(self, probs: Any) -> list[list[int]]:
        """Class indices of each case's set, never empty (see :meth:`predict_mask`)."""
        return [np.flatnonzero(row).tolist() for row in self.predict_mask(probs)]

    def to_dict(self) -> dict[str, Any]:
        """JSON for the bundle (``+inf`` thresholds are written as ``null``)."""
        return json_safe(
            {
                "method": "split conformal, class-conditional",
                "score": self.score,
                "coverage": self.coverage,
                "thresholds": self.thresholds,
                "counts": self.counts,
                "too_few": self.too_few,
                "min_cases_per_class": self.min_cases_per_class,
            }
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConformalSets:
        try:
            th = np.array([np.inf if t is None else float(t) for t in d["thresholds"]])
            return cls(
                th,
                float(d["coverage"]),
                str(d.get("score", "lac")),
                [int(c) for c in d.get("counts", [])],
                [int(c) for c in d.get("too_few", [])],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"conformal section of the bundle is malformed ({exc!r})") from exc


def set_labels(sets: Sequence[Sequence[int]], classes: Sequence[str]) -> list[list[str]]:
    """Class names of each set, in the recipe's clinical order."""
    return [[classes[i] for i in sorted(s)] for s in sets]


def _mask(sets: Sequence[Sequence[int]] | np.ndarray, n_classes: int) -> np.ndarray:
    if isinstance(sets, np.ndarray) and sets.dtype == bool:
        return sets
    m = np.zeros((len(sets), n_classes), dtype=bool)
    for i, s in enumerate(sets):
        m[i, list(s)] = True
    return m


def coverage_report(
    sets: Sequence[Sequence[int]] | np.ndarray,
    y: Any,
    classes: Sequence[str],
    n_bootstrap: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    *,
    predicted: Any = None,
    target: float | None = None,
) -> dict[str, Any]:
    """What the sets did on held-out (test) cases, each figure with a ``1 - alpha`` interval.

    Marginal and per-class coverage (share of cases whose set holds the true class), mean set
    size, share of single-class sets, and accuracy on single-class sets beside accuracy on all
    cases (``predicted``: the point predictions shown today, e.g. argmax; omitted → not
    reported): what abstaining on multi-class sets buys. Intervals follow
    :func:`medlens.evaluate.intervals.pack` (percentile bootstrap over cases, exact one-sided
    bound when every case is covered). A class with no test cases has coverage ``None``.
    """
    from medlens.evaluate.intervals import pack

    k = len(classes)
    m = _mask(sets, k)
    yy = np.asarray(y).astype(np.int64).ravel()
    n = len(yy)
    if len(m) != n:
        raise ValueError(f"{len(m)} sets but {n} labels")
    covered = m[np.arange(n), yy] if n else np.zeros(0, bool)
    size = m.sum(axis=1).astype(np.float64)
    single = size == 1
    single_right = single & covered
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (n_bootstrap, n)) if n >= 2 and n_bootstrap > 0 else None

    def prop(v: np.ndarray, sel: np.ndarray | None = None) -> dict[str, Any]:
        # share of True in v (optionally among rows where sel is True), with its interval
        sel = np.ones(len(v), bool) if sel is None else sel
        if sel.sum() == 0:
            return pack(float("nan"), None, alpha)
        reps = None
        if idx is not None:
            num, den = v[idx].astype(float) * sel[idx], sel[idx].sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                reps = num.sum(axis=1) / np.where(den > 0, den, np.nan)
        x = int((v & sel).sum())
        return pack(x / int(sel.sum()), reps, alpha, counts=(x, int(sel.sum())))

    per_class: dict[str, Any] = {}
    for c, name in enumerate(classes):
        v = covered[yy == c]
        if len(v) == 0:
            per_class[name] = {"n": 0, **pack(float("nan"), None, alpha), "note": "no test cases"}
            continue
        # resampled within the class, as the metrics' stratified bootstrap does
        reps = None
        if len(v) >= 2 and n_bootstrap > 0:
            reps = v[rng.integers(0, len(v), (n_bootstrap, len(v)))].mean(axis=1)
        x = int(v.sum())
        per_class[name] = {"n": len(v), **pack(x / len(v), reps, alpha, counts=(x, len(v)))}
    mean_size = pack(
        float(size.mean()) if n else float("nan"),
        size[idx].mean(axis=1) if idx is not None else None,
        alpha,
    )
    pred = None if predicted is None else np.asarray(predicted).astype(np.int64).ravel()
    out = {
        "n": n,
        "target": target,
        "marginal_coverage": prop(covered),
        "per_class_coverage": per_class,
        "mean_set_size": mean_size,
        "single_class_share": prop(single),
        "accuracy_single_class": prop(single_right, single),
        "accuracy_all": prop(pred == yy) if pred is not None and n else None,
        "set_size_counts": {str(s): int((size == s).sum()) for s in range(1, k + 1)},
    }
    if target is not None:
        low_classes = [
            name
            for name, e in per_class.items()
            if e.get("ci_high") is not None
            and math.isfinite(e["ci_high"])
            and e["ci_high"] < target
        ]
        out["classes_below_target"] = low_classes
    return json_safe(out)
