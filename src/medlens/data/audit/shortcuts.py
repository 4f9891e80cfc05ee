"""Shortcuts: properties that carry no anatomy but line up with the class; exposure by modality.

Two complementary checks on properties that carry no anatomy:

* **association**: for each categorical property (file format, colour mode, bit depth, whether
  the name's suffix matches the content, image size), a chi-square test and bias-corrected
  Cramer's V between the property and the class. Flagged when p < 0.001 and V >= 0.3 (warning)
  or V >= 0.5 (critical: the property nearly determines the class). This works on small sets.
* **probe**: a class-balanced random forest (30 trees) trained on format, mode, bit depth,
  width, height, file size, intensity mean/std/percentiles and black-border fraction only;
  stratified 5-fold cross-validated balanced accuracy (on at most 1,500 stratified rows, to bound
  the time). It is compared with chance (1/k) and with the same probe on label-shuffled data
  (5 shuffles). Rule: the result is *significant* when it beats the shuffled runs' 95th
  percentile and is at least 4 standard errors above chance (binomial approximation of the
  balanced accuracy's spread; 4 rather than 3 because cross-validated scores spread ~10-20 % more
  than the binomial and several features are tried); significant and >= chance + 0.25 is
  **critical**, >= chance + 0.15 a **warning**. A probe above the shuffled runs and 3 to 4
  standard errors above chance (the liver sample: 0.425 against chance 0.200, z = 3.6) is a
  **warning** too, whatever its margin: significantly above chance is never shown as "ok". The
  properties that carry it are named two ways: each property family alone (a depth-4 decision
  tree, same folds) and the balanced-accuracy drop when a family is permuted in the held-out fold
  (grouped permutation importance). Intensity, border and file size can reflect image content as
  well as acquisition; the verdict says so when only they carry it.

Exposure: :func:`medlens.preprocess.exposure_check` judges greyscale radiographs by absolute
limits (mean below 0.2 or above 0.8, or 5 % of pixels clipped). Applied to colour microscopy it
calls every bright-background smear "over"; applied to ultrasound's black fan it calls most frames
"under". :func:`apply_exposure_rule` therefore keeps that rule only where it fits, and otherwise
judges each image against the data set's own spread of brightness; the report says which rule
applied and why.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medlens.data.audit.findings import Severity
from medlens.data.audit.records import _Entry, _Record

_PROBE_MAX_ROWS = 1500
_PROBE_SHUFFLES = 5
_PROBE_TREES = 30
_WARN_MARGIN = 0.15
_CRIT_MARGIN = 0.25
_MIN_Z = 4.0
_NOTE_Z = 3.0  # above the shuffled runs and this many standard errors above chance: a warning
_ASSOC_P = 1e-3
_ASSOC_WARN_V = 0.3
_ASSOC_CRIT_V = 0.5
_REL_Z = 3.5  # robust z (median/MAD) of mean brightness beyond which the relative rule flags
_REL_MIN_SPREAD = 0.02  # floor on the MAD scale: a very uniform set does not flag tiny changes
#: probe families that can also carry image content (the verdict says so when only they do)
CONTENT_FAMILIES = ("intensity", "border", "file_size")


def apply_exposure_rule(recs: Sequence[_Record]) -> dict[str, str]:
    """Choose the exposure rule for these images and set each record's ``exposure`` by it.

    Absolute (radiograph) limits when most images are grey and the rule flags at most half of
    them; otherwise relative: "over"/"under" when the image's mean brightness lies more than 3.5
    robust standard deviations (1.4826 x MAD) from the data set's median. A rule that calls most
    of a data set badly exposed describes the modality, not the exposures.
    """
    stats = [r for r in recs if r.ok and r.has_stats]
    if not stats:
        return {"rule": "none", "why": "no readable images"}
    colour = sum(r.colour for r in stats) / len(stats)
    flagged = sum(r.exposure not in ("ok", "") for r in stats) / len(stats)
    if colour <= 0.5 and flagged <= 0.5:
        return {
            "rule": "absolute",
            "why": "greyscale images: radiograph limits (mean outside 0.2-0.8 or >5 % of pixels "
            "clipped)",
        }
    means = np.array([r.mean for r in stats])
    med = float(np.median(means))
    scale = max(_REL_MIN_SPREAD, 1.4826 * float(np.median(np.abs(means - med))))
    for r in stats:
        z = (r.mean - med) / scale
        r.exposure = "over" if z > _REL_Z else "under" if z < -_REL_Z else "ok"
    why = (
        f"{colour:.0%} of the images are colour (microscopy, photographs, Doppler)"
        if colour > 0.5
        else f"the radiograph rule called {flagged:.0%} of these images over- or "
        "under-exposed, so it does not fit this modality"
    )
    return {
        "rule": "relative",
        "why": f"{why}: each image is judged against this data set's own brightness (median "
        f"{med:.2f}; flagged beyond {_REL_Z} robust standard deviations)",
    }


@dataclass
class ProbeResult:
    """Cross-validated shortcut probe on non-anatomical properties (see the module docstring)."""

    balanced_accuracy: float | None
    chance: float
    shuffled: list[float]
    shuffled_p95: float | None
    z: float | None
    level: Severity
    carriers: list[str]
    single_family: dict[str, float]
    importance: dict[str, float]
    features: list[str]
    n_rows: int
    n_folds: int
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "balanced_accuracy": self.balanced_accuracy,
            "chance": self.chance,
            "shuffled_mean": float(np.mean(self.shuffled)) if self.shuffled else None,
            "shuffled": self.shuffled,
            "shuffled_p95": self.shuffled_p95,
            "z": self.z,
            "level": self.level,
            "carriers": self.carriers,
            "single_family": self.single_family,
            "importance": self.importance,
            "features": self.features,
            "n_rows": self.n_rows,
            "n_folds": self.n_folds,
            "skipped": self.skipped,
            "rule": (
                "significant = above the shuffled runs' 95th percentile and >= 4 standard "
                "errors above chance; critical if significant and >= chance + 0.25, warning if "
                ">= chance + 0.15; above the shuffled runs and >= 3 standard errors above chance "
                "is at least a warning (never ok)"
            ),
        }


@dataclass
class Association:
    """Association between one categorical file property and the class."""

    prop: str
    cramers_v: float
    p_value: float
    level: Severity
    table: dict[str, dict[str, int]]  # class -> value -> count
    same_as: str | None = None  # an earlier property that splits the files identically

    def to_dict(self) -> dict[str, Any]:
        return {
            "property": self.prop,
            "cramers_v": self.cramers_v,
            "p_value": self.p_value,
            "level": self.level,
            "table": self.table,
            "same_as": self.same_as,
        }


def probe_level(ba: float, chance: float, z: float, shuffled_p95: float) -> Severity:
    """Severity of a probe result (the rule is in the module docstring).

    A probe that beats the label-shuffled runs and lies 3 or more standard errors above chance
    is significantly above chance, however small the margin: never "ok".
    """
    beats_shuffled = ba > shuffled_p95
    significant = beats_shuffled and z >= _MIN_Z
    if significant and ba >= chance + _CRIT_MARGIN:
        return "critical"
    if significant and ba >= chance + _WARN_MARGIN:
        return "warning"
    if beats_shuffled and z >= _NOTE_Z:
        return "warning"
    return "ok"


def _describe(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": round(float(a.mean()), 4),
        "min": round(float(a.min()), 4),
        "max": round(float(a.max()), 4),
    }


def _class_stats(
    entries: Sequence[_Entry], recs: Sequence[_Record], classes: Sequence[str]
) -> dict[str, dict[str, Any]]:
    by: dict[str, list[_Record]] = defaultdict(list)
    total: dict[str, int] = Counter()
    for e, r in zip(entries, recs, strict=True):
        if e.folder != "data":
            continue
        label = str(e.sample.label)
        total[label] += 1
        if r.ok and r.has_stats:
            by[label].append(r)
    out: dict[str, dict[str, Any]] = {}
    for c in [*classes, *sorted(set(by) - set(classes))]:
        rs = by.get(c, [])
        hist, _ = np.histogram([r.mean for r in rs], bins=10, range=(0.0, 1.0))
        out[c] = {
            "count": total.get(c, 0),
            "readable": len(rs),
            "width": _describe([r.width for r in rs]),
            "height": _describe([r.height for r in rs]),
            "file_size": _describe([r.size for r in rs if r.size is not None]),
            "format": dict(Counter(r.fmt for r in rs)),
            "mode": dict(Counter(r.mode for r in rs)),
            "bit_depth": dict(Counter(str(r.bit_depth) for r in rs)),
            "name_mismatch": sum(1 for r in rs if not r.suffix_ok),
            "mean_intensity": _describe([r.mean for r in rs]),
            "mean_intensity_hist": [int(v) for v in hist],
            "std_intensity": _describe([r.std for r in rs]),
            "exposure": dict(Counter(r.exposure for r in rs)),
            "border_fraction": _describe([r.border for r in rs]),
            "with_border": sum(1 for r in rs if r.border > 0.05),
            "blank": sum(1 for r in rs if r.flat),
        }
    return out


def _cramers_v(table: np.ndarray) -> tuple[float, float]:
    """Bias-corrected Cramér's V (Bergsma 2013) and the chi-square p-value."""
    from scipy.stats import chi2_contingency

    table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
    r, k = table.shape
    n = float(table.sum())
    if r < 2 or k < 2 or n < 3:
        return 0.0, 1.0
    chi2, p, _, _ = chi2_contingency(table, correction=False)
    phi2 = chi2 / n
    phi2c = max(0.0, phi2 - (k - 1) * (r - 1) / (n - 1))
    rc = r - (r - 1) ** 2 / (n - 1)
    kc = k - (k - 1) ** 2 / (n - 1)
    denom = min(kc - 1, rc - 1)
    v = math.sqrt(phi2c / denom) if denom > 0 else 0.0
    return float(min(1.0, v)), float(p)


def _associations(labels: Sequence[str], recs: Sequence[_Record]) -> list[Association]:
    props: dict[str, Callable[[_Record], str]] = {
        "format": lambda r: r.fmt,
        "mode": lambda r: r.mode,
        "bit_depth": lambda r: str(r.bit_depth),
        "name_matches_content": lambda r: "yes" if r.suffix_ok else "no",
        "size": lambda r: f"{r.width}x{r.height}",
    }
    out = []
    classes = sorted(set(labels))
    seen: dict[tuple[int, ...], str] = {}
    for prop, get in props.items():
        values = [get(r) for r in recs]
        cats = sorted(set(values))
        if len(cats) < 2 or len(classes) < 2 or len(cats) > 30:
            continue
        # properties that partition the files identically (PNG = RGB = 449x464) are one finding
        first: dict[str, int] = {}
        partition = tuple(first.setdefault(v, len(first)) for v in values)
        same_as = seen.setdefault(partition, prop)
        ci = {c: i for i, c in enumerate(classes)}
        vi = {v: i for i, v in enumerate(cats)}
        table = np.zeros((len(classes), len(cats)), dtype=np.int64)
        for lab, v in zip(labels, values, strict=True):
            table[ci[lab], vi[v]] += 1
        v_, p = _cramers_v(table)
        level: Severity = "ok"
        if p < _ASSOC_P and v_ >= _ASSOC_CRIT_V:
            level = "critical"
        elif p < _ASSOC_P and v_ >= _ASSOC_WARN_V:
            level = "warning"
        out.append(
            Association(
                prop,
                round(v_, 4),
                float(f"{p:.3g}"),
                level,
                {
                    c: {cat: int(table[ci[c], vi[cat]]) for cat in cats if table[ci[c], vi[cat]]}
                    for c in classes
                },
                same_as if same_as != prop else None,
            )
        )
    return out


def _probe_matrix(recs: Sequence[_Record]) -> tuple[np.ndarray, list[str], dict[str, list[int]]]:
    """Feature matrix over non-anatomical properties; constant columns are dropped."""
    cols: list[tuple[str, str, np.ndarray]] = []  # (family, name, values)
    for fam, attr in (("format", "fmt"), ("mode", "mode")):
        values = [getattr(r, attr) for r in recs]
        for v in sorted(set(values)):
            cols.append((fam, f"{fam}={v}", np.array([x == v for x in values], np.float64)))
    cols.append(("format", "name_matches_content", np.array([r.suffix_ok for r in recs], float)))
    cols.append(("bit_depth", "bit_depth", np.array([r.bit_depth for r in recs], float)))
    cols.append(("width", "width", np.array([r.width for r in recs], float)))
    cols.append(("height", "height", np.array([r.height for r in recs], float)))
    if all(r.size is not None for r in recs):
        cols.append(("file_size", "log_file_size", np.log1p([float(r.size or 0) for r in recs])))
    for name in ("mean", "std", "p1", "p5", "p50", "p95", "p99"):
        cols.append(("intensity", f"intensity_{name}", np.array([getattr(r, name) for r in recs])))
    cols.append(("border", "border_fraction", np.array([r.border for r in recs], float)))
    kept = [c for c in cols if len(c[2]) and np.ptp(c[2]) > 0]
    if not kept:
        return np.zeros((len(recs), 0)), [], {}
    X = np.stack([c[2] for c in kept], axis=1)
    families: dict[str, list[int]] = defaultdict(list)
    for j, (fam, _, _) in enumerate(kept):
        families[fam].append(j)
    return X, [c[1] for c in kept], dict(families)


def _chance_sd(y: np.ndarray, pred: np.ndarray) -> float:
    """Standard error of balanced accuracy if predictions were independent of the labels."""
    classes = np.unique(y)
    k = len(classes)
    var = 0.0
    for c in classes:
        q = float(np.mean(pred == c))
        var += q * (1 - q) / max(1, int(np.sum(y == c)))
    return math.sqrt(var) / k if var > 0 else 1.0 / (k * math.sqrt(max(1, len(y))))


def _shortcut_probe(
    X: np.ndarray,
    y: np.ndarray,
    names: list[str],
    families: dict[str, list[int]],
    seed: int = 0,
    shuffles: int = _PROBE_SHUFFLES,
) -> ProbeResult:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.tree import DecisionTreeClassifier

    classes, counts = np.unique(y, return_counts=True)
    k = len(classes)
    chance = 1.0 / k if k else 0.0

    def skipped(reason: str) -> ProbeResult:
        return ProbeResult(None, chance, [], None, None, "ok", [], {}, {}, names, len(y), 0, reason)

    if k < 2:
        return skipped("fewer than two classes with readable images")
    if counts.min() < 3:
        return skipped("a class has fewer than 3 readable images; too few to cross-validate")
    if X.shape[1] == 0:
        return skipped("every non-anatomical property is the same for all images")
    rng = np.random.default_rng(seed)
    if len(y) > _PROBE_MAX_ROWS:  # stratified subsample keeps the probe's time bounded
        keep = np.concatenate(
            [
                rng.choice(
                    np.flatnonzero(y == c),
                    max(3, round(_PROBE_MAX_ROWS * n / len(y))),
                    replace=False,
                )
                for c, n in zip(classes, counts, strict=True)
            ]
        )
        X, y = X[keep], y[keep]
    n_folds = int(min(5, np.unique(y, return_counts=True)[1].min()))
    folds = list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(X, y))

    def forest() -> Any:
        return RandomForestClassifier(
            n_estimators=_PROBE_TREES,
            min_samples_leaf=2,
            class_weight="balanced",
            random_state=seed,
            n_jobs=1,
        )

    def cv_predict(make: Callable[[], Any], Xm: np.ndarray, ym: np.ndarray) -> np.ndarray:
        pred = np.empty_like(ym)
        for tr, te in folds:
            pred[te] = make().fit(Xm[tr], ym[tr]).predict(Xm[te])
        return pred

    # main probe, with grouped permutation importance on the held-out folds
    pred = np.empty_like(y)
    drops: dict[str, list[float]] = defaultdict(list)
    for tr, te in folds:
        model = forest().fit(X[tr], y[tr])
        pred[te] = model.predict(X[te])
        base = balanced_accuracy_score(y[te], pred[te])
        for fam, idx in families.items():
            Xp = X[te].copy()
            perm = rng.permutation(len(te))
            Xp[:, idx] = Xp[perm][:, idx]
            drops[fam].append(base - balanced_accuracy_score(y[te], model.predict(Xp)))
    ba = float(balanced_accuracy_score(y, pred))
    sd = _chance_sd(y, pred)
    z = (ba - chance) / sd
    shuffled = [
        float(balanced_accuracy_score(yp, cv_predict(forest, X, yp)))
        for yp in (rng.permutation(y) for _ in range(shuffles))
    ]
    p95 = float(np.percentile(shuffled, 95)) if shuffled else chance
    level = probe_level(ba, chance, z, p95)

    single: dict[str, float] = {}
    carriers: list[str] = []
    for fam, idx in families.items():

        def tree() -> Any:
            return DecisionTreeClassifier(
                max_depth=4, min_samples_leaf=2, class_weight="balanced", random_state=seed
            )

        p_f = cv_predict(tree, X[:, idx], y)
        s = float(balanced_accuracy_score(y, p_f))
        single[fam] = round(s, 4)
        if s >= chance + _WARN_MARGIN and (s - chance) / _chance_sd(y, p_f) >= _MIN_Z and s > p95:
            carriers.append(fam)
    importance = {f: round(float(np.mean(v)), 4) for f, v in drops.items()}
    carriers.sort(key=lambda f: (-single[f], -importance.get(f, 0.0)))
    if level != "ok" and not carriers:  # only an interaction carries it: name the biggest drops
        carriers = [f for f, v in sorted(importance.items(), key=lambda t: -t[1]) if v > 0.02][:3]
    return ProbeResult(
        balanced_accuracy=round(ba, 4),
        chance=round(chance, 4),
        shuffled=[round(s, 4) for s in shuffled],
        shuffled_p95=round(p95, 4),
        z=round(z, 2),
        level=level,
        carriers=carriers,
        single_family=single,
        importance=importance,
        features=names,
        n_rows=len(y),
        n_folds=n_folds,
    )
