"""Dataset shift: how a new site's images differ from the images a model was trained on.

Two kinds of evidence, both reported per property so a reader can name what changed:

- **Acquisition properties** (:data:`medlens.evaluate.gate.ACQ_NAMES`: colour, aspect, intensity
  percentiles, spread, texture of what the model sees) and the decoded images' **format, colour
  mode and size**. For each numeric property: a standardised difference and a two-sample test.
- **Gate scores**, when the bundle has an input gate: the share of new images the gate flags,
  and the feature scores against the gate's threshold.

The reference ("what training looked like") comes from one of two places:

- a *sample of reference images* (the training data, when reachable, or ``--reference``):
  standardised difference = Cohen's d (difference of means over the pooled SD), test =
  two-sample Kolmogorov–Smirnov (distribution-free, sensitive to any change of shape);
- the *gate's training summary* only (median and robust scale per property, no images):
  standardised difference = (new median − training median) / training robust scale, test =
  sign test (under no shift, half the new images lie above the training median; binomial).

p-values are Holm-adjusted over the properties. A property is called **shifted** when its
adjusted p < 0.05 *and* its |standardised difference| ≥ 0.5 (a medium effect): with hundreds of
images a trivial change is "significant", and a large change on a handful is not yet evidence.

The **share flagged** is the share of new images whose largest robust |z| over the properties
exceeds a threshold chosen like the gate's: the gate's own acquisition threshold when it exists,
else the 99th percentile of the same score on half of the reference images (median and scale
fitted on the other half), so about 1 % of in-distribution images are flagged by chance.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medlens.common import json_safe
from medlens.errors import MedlensError
from medlens.evaluate.gate import ACQ_NAMES, acquisition_properties

SHIFT_ALPHA = 0.05
MEDIUM_EFFECT = 0.5
REFERENCE_PASS = 0.99
_MAD_TO_SD = 1.4826
FACTS = ("source_format", "mode", "image_size", "channels")

__all__ = [
    "FACTS",
    "Measured",
    "ShiftReference",
    "image_facts",
    "measure_images",
    "shift_report",
]


def image_facts(loaded: Any) -> dict[str, str]:
    """Format, colour mode, size (``HxW``) and channels of one decoded image
    (a :class:`~medlens.data.io.LoadedImage`), as strings for counting."""
    a = np.asarray(loaded.array)
    return {
        "source_format": str(loaded.source_format),
        "mode": str(loaded.mode),
        "image_size": f"{a.shape[0]}x{a.shape[1]}",
        "channels": str(a.shape[2] if a.ndim == 3 else 1),
    }


@dataclass
class Measured:
    """Acquisition properties (``n × len(ACQ_NAMES)``) and facts of the readable images."""

    uids: list[str]
    properties: np.ndarray
    facts: list[dict[str, str]]
    errors: dict[str, str] = field(default_factory=dict)


def measure_images(samples: Sequence[Any], preprocess: Callable[[Any], Any]) -> Measured:
    """Load each sample once, preprocess it with the bundle's own pipeline and measure it.

    ``preprocess`` is :meth:`medlens.inference.Predictor.preprocess` (it accepts a loaded image);
    a multi-input (fusion) model's dict of views is measured on its first view.
    """
    uids, props, facts, errors = [], [], [], {}
    for s in samples:
        try:
            loaded = s.load()
            pre = preprocess(loaded)
        except MedlensError as exc:
            errors[s.uid] = str(exc)
            continue
        if isinstance(pre, dict):
            pre = next((p for p in pre.values() if p is not None), None)
            if pre is None:
                continue
        uids.append(s.uid)
        props.append(acquisition_properties(pre.image, loaded.array))
        facts.append(image_facts(loaded))
    arr = np.stack(props) if props else np.zeros((0, len(ACQ_NAMES)))
    return Measured(uids, arr, facts, errors)


@dataclass
class ShiftReference:
    """What training looked like: reference images' properties, or the gate's summary."""

    source: str  # a sentence: where the reference comes from
    samples: np.ndarray | None = None  # (m, len(ACQ_NAMES)) reference properties
    facts: list[dict[str, str]] | None = None
    median: np.ndarray | None = None
    scale: np.ndarray | None = None
    threshold: float | None = None  # on the max robust |z|

    @classmethod
    def from_gate(cls, gate: Any) -> ShiftReference:
        """The bundle's input gate: its training median/scale and acquisition threshold."""
        arrays = getattr(gate, "arrays", {}) or {}
        return cls(
            f"the input gate's summary of {getattr(gate, 'n_train', '?')} training images",
            median=np.asarray(arrays["acq_median"], dtype=np.float64),
            scale=np.asarray(arrays["acq_scale"], dtype=np.float64),
            threshold=float(getattr(gate, "acq_threshold", math.inf)),
        )

    @classmethod
    def from_samples(cls, measured: Measured, source: str, seed: int = 0) -> ShiftReference:
        """Reference images: median/scale from one half, the flag threshold from the other."""
        x = measured.properties
        if len(x) < 4:
            raise MedlensError(f"{source}: {len(x)} readable reference images; 4 are needed")
        order = np.random.default_rng(seed).permutation(len(x))
        fit, hold = x[order[: len(x) // 2]], x[order[len(x) // 2 :]]
        median, scale = _robust(fit)
        thr = float(np.quantile(_max_z(hold, median, scale), REFERENCE_PASS))
        return cls(source, x, measured.facts, median, scale, thr)


def _robust(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    median = np.median(x, axis=0)
    mad = _MAD_TO_SD * np.median(np.abs(x - median), axis=0)
    floor = 1e-3 * np.maximum(1.0, np.abs(median))  # a property constant in training
    return median, np.maximum(mad, floor)


def _max_z(x: np.ndarray, median: np.ndarray, scale: np.ndarray) -> np.ndarray:
    z = np.abs(np.atleast_2d(x) - median) / scale
    return np.where(np.isfinite(z), z, np.inf).max(axis=1)


def _holm(p: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (NaN stays NaN)."""
    arr = np.asarray(p, dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(arr))
    out = np.full(len(arr), np.nan)
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(arr[ok])]):
        running = max(running, min(1.0, (len(ok) - rank) * arr[i]))
        out[i] = running
    return out.tolist()


def _property_rows(new: np.ndarray, ref: ShiftReference) -> list[dict[str, Any]]:
    from scipy.stats import binomtest, ks_2samp

    rows: list[dict[str, Any]] = []
    for j, name in enumerate(ACQ_NAMES):
        x = new[:, j]
        row: dict[str, Any] = {"property": name, "new_median": float(np.median(x))}
        if ref.samples is not None:
            r = ref.samples[:, j]
            pooled = math.sqrt((np.var(x, ddof=1) + np.var(r, ddof=1)) / 2) if len(x) > 1 else 0
            diff = float(x.mean() - r.mean())
            d = diff / pooled if pooled > 1e-12 else (0.0 if abs(diff) < 1e-12 else math.inf)
            row.update(
                reference_median=float(np.median(r)),
                standardised_difference=d,
                difference_kind="Cohen's d (means, pooled SD)",
                test="two-sample Kolmogorov-Smirnov",
                p_value=float(ks_2samp(x, r).pvalue) if len(x) and len(r) else float("nan"),
            )
        else:
            assert ref.median is not None and ref.scale is not None
            m, s = float(ref.median[j]), float(ref.scale[j])
            above = int((x > m).sum())
            informative = int((x != m).sum())
            p = binomtest(above, informative, 0.5).pvalue if informative else float("nan")
            row.update(
                reference_median=m,
                standardised_difference=(float(np.median(x)) - m) / s,
                difference_kind="(median - training median) / training robust SD",
                test="sign test against the training median",
                p_value=float(p),
            )
        rows.append(row)
    for row, adj in zip(rows, _holm([r["p_value"] for r in rows]), strict=True):
        row["p_holm"] = adj
        d = row["standardised_difference"]
        row["shifted"] = bool(math.isfinite(adj) and adj < SHIFT_ALPHA and abs(d) >= MEDIUM_EFFECT)
    return rows


def _fact_rows(
    new: list[dict[str, str]], ref: list[dict[str, str]] | None
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key in FACTS:
        counts = Counter(f[key] for f in new)
        entry: dict[str, Any] = {"new": dict(counts.most_common(8))}
        if ref is not None:
            seen = {f[key] for f in ref}
            entry["reference"] = dict(Counter(f[key] for f in ref).most_common(8))
            unseen = sum(n for v, n in counts.items() if v not in seen)
            entry["share_unseen"] = unseen / max(1, len(new))
        out[key] = entry
    return out


def shift_report(
    measured: Measured, reference: ShiftReference | None, gate: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The shift section: per-property rows, facts, the share flagged and the gate's outcome."""
    out: dict[str, Any] = {
        "n": len(measured.uids),
        "facts": _fact_rows(measured.facts, reference.facts if reference else None),
        "gate": gate,
        "rule": (
            f"shifted: Holm-adjusted p < {SHIFT_ALPHA} and |standardised difference| >= "
            f"{MEDIUM_EFFECT}; flagged image: largest robust |z| over the properties above the "
            "reference threshold"
        ),
    }
    if reference is None or not len(measured.uids):
        out["reference"] = None
        out["note"] = (
            "no reference: the bundle has no input gate and no training images were reachable "
            "(give --reference DATA to compare against training images)"
        )
        return json_safe(out)
    assert reference.median is not None and reference.scale is not None
    out["reference"] = reference.source
    out["properties"] = _property_rows(measured.properties, reference)
    out["shifted_properties"] = [r["property"] for r in out["properties"] if r["shifted"]]
    z = _max_z(measured.properties, reference.median, reference.scale)
    thr = reference.threshold if reference.threshold is not None else math.inf
    out["acquisition_threshold"] = thr
    out["share_flagged"] = float(np.mean(z > thr))
    return json_safe(out)
