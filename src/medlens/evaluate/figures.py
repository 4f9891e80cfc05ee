"""The one table of classification figures: what each is called, how it is computed, how it is
shown. The intervals (:mod:`.intervals`), the point metrics (:mod:`.metrics`), the report's
names and the CLI's columns all read :data:`FIGURES`, so adding a metric is one row here.

Every figure is computed from one :class:`Basis` (the confusion matrix of the argmax and the
per-class ranking figures), by one function, for the point estimate and for every bootstrap
replicate alike. Ranking figures use vectorised NumPy forms of scikit-learn's definitions
(rank-sum ROC-AUC with ties counting one half, step-wise average precision): scikit-learn's
per-call validation would make 1,000 replicates take minutes; the tests check these forms equal
scikit-learn's. A figure undefined on the data (a class absent, a zero denominator) is NaN.

A *proportion* (``counts`` set: successes over trials, such as sensitivity) gets an exact
one-sided Clopper–Pearson bound when every case is right or every case is wrong, where a
bootstrap interval would collapse to a point (:func:`medlens.evaluate.intervals.pack`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

Value = float | np.ndarray


def _ratio(a: np.ndarray | float, b: np.ndarray | float) -> Value:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)
    return float(r) if r.ndim == 0 else r


def fast_ranking(
    y_bin: np.ndarray, score: np.ndarray, target_spec: float
) -> tuple[float, float, float]:
    """ROC-AUC, average precision and sensitivity at specificity, as scikit-learn defines them."""
    from scipy.stats import rankdata

    y_bin = np.asarray(y_bin, dtype=bool)
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


class Basis:
    """What every figure is computed from: labels, probabilities and the argmax confusion matrix
    (rows true, columns predicted). ``quadratic`` selects quadratic-weighted kappa (ordered
    stages); ``target_spec`` is the specificity at which sensitivity is read."""

    def __init__(
        self, y: np.ndarray, probs: np.ndarray, k: int, quadratic: bool, target_spec: float
    ) -> None:
        self.y = np.asarray(y, dtype=int)
        self.p = np.asarray(probs, dtype=np.float64)
        self.k, self.quadratic, self.target_spec = k, quadratic, target_spec
        pred = self.p.argmax(1) if len(self.y) else np.zeros(0, dtype=int)
        cm = np.bincount(self.y * k + pred, minlength=k * k).reshape(k, k)
        self.confusion = cm
        self.cm = cm.astype(np.float64)
        self.n = float(cm.sum())
        self.tp = np.diag(self.cm)
        self.fp = self.cm.sum(0) - self.tp
        self.fn = self.cm.sum(1) - self.tp
        self.tn = self.n - self.tp - self.fp - self.fn

    @cached_property
    def ranking(self) -> dict[str, np.ndarray]:
        out = {key: np.full(self.k, np.nan) for key in ("roc_auc", "pr_auc", "sens_at_spec")}
        for i in range(self.k):
            yb = self.y == i
            if 0 < yb.sum() < len(yb):
                r = fast_ranking(yb, self.p[:, i], self.target_spec)
                out["roc_auc"][i], out["pr_auc"][i], out["sens_at_spec"][i] = r
        return out

    @cached_property
    def f1(self) -> np.ndarray:
        d = 2 * self.tp + self.fp + self.fn  # a class never true nor predicted: 0, as sklearn
        return np.where(d > 0, 2 * self.tp / np.where(d > 0, d, 1.0), 0.0)


def _mcc(b: Basis) -> float:
    """Multi-class Matthews correlation in its closed form (as scikit-learn computes it)."""
    t_sum, p_sum = b.cm.sum(1), b.cm.sum(0)
    cov_ytyp = np.trace(b.cm) * b.n - t_sum @ p_sum
    cov_ypyp = b.n**2 - p_sum @ p_sum
    cov_ytyt = b.n**2 - t_sum @ t_sum
    return float(cov_ytyp / math.sqrt(cov_ytyt * cov_ypyp)) if cov_ytyt * cov_ypyp > 0 else 0.0


def _kappa(b: Basis) -> float:
    """Cohen's kappa, unweighted or quadratic-weighted (as scikit-learn computes it)."""
    idx = np.arange(b.k)
    w = (
        ((idx[:, None] - idx[None, :]) ** 2).astype(float)
        if b.quadratic
        else (idx[:, None] != idx[None, :]).astype(float)
    )
    expected = np.outer(b.cm.sum(1), b.cm.sum(0)) / b.n if b.n else np.zeros_like(b.cm)
    denom = (w * expected).sum()
    return 1.0 - float((w * b.cm).sum() / denom) if denom else float("nan")


def _macro(values: np.ndarray) -> float:
    finite = np.isfinite(values)
    return float(values[finite].mean()) if finite.any() else float("nan")


def _balanced_accuracy(b: Basis) -> float:
    present = (b.tp + b.fn) > 0
    return float(np.mean(b.tp[present] / (b.tp + b.fn)[present])) if present.any() else math.nan


Counts = Callable[[Basis], tuple[Any, Any]]


@dataclass(frozen=True)
class Figure:
    """One figure. ``name`` may hold ``{weighting}`` and ``{spec}`` (filled by
    :func:`display_name` from a run's settings); ``short`` is the CLI column header.
    ``counts`` (successes, trials) marks a proportion: its value is their ratio. ``chance``:
    the value a model that guesses gets (a test interval reaching it earns a warning).
    ``headline``: in the CLI summary; ``leaderboard``: a column of ``medlens compare``."""

    key: str
    name: str
    per_class: bool = False
    compute: Callable[[Basis], Value] | None = None
    counts: Counts | None = None
    short: str = ""
    higher_is_better: bool = True
    digits: int = 3
    chance: float | None = None
    headline: bool = False
    leaderboard: bool = False

    @property
    def proportion(self) -> bool:
        return self.counts is not None

    def value(self, b: Basis) -> Value:
        if self.counts is not None:
            return _ratio(*self.counts(b))
        assert self.compute is not None, f"figure {self.key!r} has neither compute nor counts"
        return self.compute(b)


FIGURES: tuple[Figure, ...] = (
    # Overall, one value per test set.
    Figure("accuracy", "accuracy", counts=lambda b: (b.tp.sum(), b.n), headline=True),
    Figure(
        "balanced_accuracy",
        "balanced accuracy",
        compute=_balanced_accuracy,
        short="balanced acc.",
        headline=True,
        leaderboard=True,
    ),
    Figure(
        "macro_f1",
        "macro-F1",
        compute=lambda b: float(b.f1.mean()),
        headline=True,
        leaderboard=True,
    ),
    Figure("mcc", "MCC", compute=_mcc, headline=True),
    Figure("kappa", "Cohen's kappa ({weighting})", compute=_kappa, short="kappa", headline=True),
    Figure(
        "macro_roc_auc",
        "macro ROC-AUC",
        compute=lambda b: _macro(b.ranking["roc_auc"]),
        short="macro AUC",
        chance=0.5,
        headline=True,
        leaderboard=True,
    ),
    Figure("macro_pr_auc", "macro PR-AUC", compute=lambda b: _macro(b.ranking["pr_auc"])),
    # Per class, one-vs-rest: one value per class.
    Figure("sensitivity", "sensitivity", True, counts=lambda b: (b.tp, b.tp + b.fn), headline=True),
    Figure("specificity", "specificity", True, counts=lambda b: (b.tn, b.tn + b.fp), headline=True),
    Figure(
        "ppv", "PPV", True, counts=lambda b: (b.tp, b.tp + b.fp), short="precision", headline=True
    ),
    Figure("npv", "NPV", True, counts=lambda b: (b.tn, b.tn + b.fn)),
    Figure("f1", "F1", True, compute=lambda b: b.f1, headline=True),
    Figure(
        "roc_auc",
        "ROC-AUC",
        True,
        compute=lambda b: b.ranking["roc_auc"],
        chance=0.5,
        headline=True,
    ),
    Figure("pr_auc", "PR-AUC", True, compute=lambda b: b.ranking["pr_auc"]),
    Figure(
        "sens_at_spec",
        "sens. @ spec. {spec}",
        True,
        compute=lambda b: b.ranking["sens_at_spec"],
    ),
)


def table() -> tuple[Figure, ...]:
    """Every figure, in the order reports show them."""
    return FIGURES


def overall() -> tuple[Figure, ...]:
    return tuple(f for f in FIGURES if not f.per_class)


def per_class() -> tuple[Figure, ...]:
    return tuple(f for f in FIGURES if f.per_class)


def headline(per_class_figures: bool = False) -> tuple[Figure, ...]:
    """The figures the CLI summary prints: overall ones, or per-class ones when asked."""
    return tuple(f for f in FIGURES if f.headline and f.per_class == per_class_figures)


def leaderboard() -> tuple[Figure, ...]:
    """The columns of ``medlens compare``."""
    return tuple(f for f in FIGURES if f.leaderboard)


def get(key: str) -> Figure:
    for f in FIGURES:
        if f.key == key:
            return f
    raise KeyError(f"no figure {key!r}; known: {', '.join(f.key for f in FIGURES)}")


def weighting_label(weighting: str | None) -> str:
    """``"unweighted"`` / ``"quadratic-weighted"`` (older runs stored ``"none"``)."""
    return (
        "unweighted" if weighting in (None, "", "none", "unweighted") else f"{weighting}-weighted"
    )


def display_name(fig: Figure | str, settings: Mapping[str, Any] | None = None) -> str:
    """The figure's name for people, filled from an intervals dict (``kappa_weighting``,
    ``target_specificity``) or any mapping holding those keys."""
    f = get(fig) if isinstance(fig, str) else fig
    s = settings or {}
    spec = s.get("target_specificity")
    return f.name.format(
        weighting=weighting_label(s.get("kappa_weighting")),
        spec="?" if spec is None else f"{float(spec):.2f}",
    )


def column_name(fig: Figure | str, settings: Mapping[str, Any] | None = None) -> str:
    """The short header a CLI table uses (the display name when no short one is set)."""
    f = get(fig) if isinstance(fig, str) else fig
    return f.short or display_name(f, settings)


def compute(basis: Basis, figures: tuple[Figure, ...] | None = None) -> dict[str, Value]:
    """Every figure's value on one basis (per-class figures as arrays in class order)."""
    return {f.key: f.value(basis) for f in (FIGURES if figures is None else figures)}
