"""The input gate: refuse images a model cannot read or was not made for, before any diagnosis.

Every image gets one status (:class:`GateResult`):

- ``ungradable`` (with the reason): :func:`check_gradable` on the *decoded* pixels, before any
  normalisation can turn NaN into zeros or stretch a flat image into contrast.
- ``out_of_distribution`` (with the score and its threshold): the image does not look like the
  training images, by the model's own features **or** by its acquisition properties.
- ``ok``: the diagnosis as usual.

Feature score — class-conditional Mahalanobis distance (smallest over classes, shared
covariance with Ledoit–Wolf shrinkage), chosen by measurement. Small CNN trained on 600 chest
phantoms (``medlens demo``), features = pooled input of the linear head (256-d), each score's
threshold at 99.5 % of 96 validation images; share flagged by the feature score alone
(``benchmarks/bench_gate.py``):

=============  ========  =========  =========  ========  =========================
score          own test  brain MRI  blood sm.  liver US  4 other-recipe phantoms
=============  ========  =========  =========  ========  =========================
Mahalanobis    0 %       100 %      100 %      100 %     100 / 100 / 100 / 100 %
kNN (k=5,cos)  0 %       33 %       100 %      32 %      98 / 100 / 35 / 88 %
energy         0.8 %     1 %        3 %        0 %       0 / 25 / 0 / 5 %
=============  ========  =========  =========  ========  =========================

Energy fails because a network trained on three grey classes is as confident on a brain MRI as
on a chest film; cosine kNN, which ignores the feature norm, misses a third to two thirds of
three sets. kNN and energy remain available (``method=``) to re-measure on other models.

Acquisition score — properties a reader would name (:data:`ACQ_NAMES`: colour, aspect,
intensity percentiles, texture), each as a robust z against the training images (median, MAD
with a floor so a property constant in training — colour of a grey set — still has a finite
scale); the score is the largest |z|, so the reason can name the property.

Either can flag. Each gets its own threshold at the ``1 - (1 - val_pass) / 2`` quantile of its
validation scores (empirical, or a log-normal tail fitted to them when there are too few
validation images for the empirical quantile to exist: :func:`_threshold`): by the union bound at least ``val_pass`` (99 %) of validation images pass
both, and the flag always says *which* test failed — a single combined number would not.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from medlens.common import json_safe

Status = Literal["ok", "ungradable", "out_of_distribution"]
FEATURE_SCORES = ("mahalanobis", "knn", "energy")
ACQ_NAMES = (
    "colourfulness",  # mean chroma (max - min over RGB): 0 for grey
    "channel_decorrelation",  # 1 - smallest correlation between colour channels: 0 for grey
    "log_aspect",  # log(height / width) of the decoded image
    "p05",
    "p25",
    "p50",
    "p75",
    "p95",  # intensity percentiles of the preprocessed input (grey mean of channels)
    "std",
    "texture",  # mean |neighbour difference| / std: speckle and noise vs smooth anatomy
)
_ACQ_FLOORS = {"colourfulness": 0.02, "channel_decorrelation": 0.02, "log_aspect": 0.05}
_MAD_TO_SD = 1.4826
GATE_VERSION = 1

__all__ = [
    "ACQ_NAMES",
    "FEATURE_SCORES",
    "GateResult",
    "InputGate",
    "acquisition_properties",
    "capture_features",
    "check_gradable",
    "extract_features",
    "features_and_logits",
    "saturation_fractions",
]


# --------------------------------------------------------------------------------------------
# Gradability on decoded data
# --------------------------------------------------------------------------------------------


def check_gradable(
    decoded: dict[str, Any],
    min_size: int = 16,
    *,
    near_constant: float = 1e-3,
    flat_absolute: float = 1.0 / 512,
    saturated: float = 0.95,
    unit_array: np.ndarray | None = None,
) -> str | None:
    """Why an image cannot be graded, or ``None`` when it can.

    ``decoded`` describes the pixels as decoded, before normalisation: ``finite_fraction``,
    ``min``, ``max``, ``std`` (of the finite pixels; ``None`` when there are none), ``height``,
    ``width``, ``channels`` and, when the loader provides them, ``at_min_fraction`` /
    ``at_max_fraction`` (share of finite pixels equal to the minimum / maximum; without them,
    taken from the loader's [0, 1] ``unit_array`` by :func:`saturation_fractions`, and without
    either the exposure test is skipped). Checked in this order:

    - any non-finite pixel (NaN, ±inf — e.g. a DICOM rescale that overflowed): the decoder's
      values cannot be trusted anywhere in the image;
    - smaller than ``min_size`` on either side;
    - constant or near-constant: ``std`` below ``near_constant`` × (max − min) — one stray pixel on
      a blank field — or below ``flat_absolute`` (half an 8-bit grey level on a [0, 1] scale);
    - no usable exposure: at least ``saturated`` of the pixels at the darkest or brightest value.

    ``flat_absolute`` assumes a [0, 1] scale; on raw units (8-bit 0–255, HU) it only catches a
    truly flat image and the relative test does the work.
    """
    ff = decoded.get("finite_fraction")
    std = decoded.get("std")
    if ff is None or std is None or float(ff) <= 0:
        return "no finite pixel values (all NaN or infinite): nothing to assess"
    if float(ff) < 1.0:
        return (
            f"{100 * (1 - float(ff)):.3g} % of pixel values are not finite (NaN or infinite): "
            "the file or its rescaling is broken"
        )
    if not math.isfinite(float(std)):
        return (
            "pixel values overflow (their spread is not a finite number): the rescaling is broken"
        )
    h, w = int(decoded.get("height", 0)), int(decoded.get("width", 0))
    if min(h, w) < min_size:
        return f"image is {h}×{w} pixels; this model needs at least {min_size} on each side"
    lo, hi, sd = float(decoded["min"]), float(decoded["max"]), float(std)
    span = hi - lo
    if span <= 0 or sd <= near_constant * span or sd < flat_absolute:
        return (
            f"constant or near-constant image (range {lo:.4g}–{hi:.4g}, std {sd:.3g}): "
            "no contrast to read"
        )
    at_lo, at_hi = decoded.get("at_min_fraction"), decoded.get("at_max_fraction")
    if (at_lo is None or at_hi is None) and unit_array is not None:
        at_lo, at_hi = saturation_fractions(unit_array)
    if at_lo is not None and at_hi is not None and float(at_lo) + float(at_hi) >= saturated:
        return (
            f"no usable exposure: {100 * (float(at_lo) + float(at_hi)):.1f} % of pixels sit at the "
            "darkest or brightest value"
        )
    return None


def saturation_fractions(unit_array: np.ndarray) -> tuple[float, float]:
    """Shares of pixels at exactly 0 and exactly 1 in a loader's [0, 1] array.

    The readers map the stored type's extremes (8/16-bit) or the data's own min and max
    (windowed formats) to 0 and 1, so this is the share at the darkest and brightest value —
    the ``at_min_fraction`` / ``at_max_fraction`` of :func:`check_gradable` when the loader's
    ``decoded`` figures do not carry them.
    """
    a = np.asarray(unit_array)
    if a.size == 0:
        return 0.0, 0.0
    return float(np.count_nonzero(a <= 0.0) / a.size), float(np.count_nonzero(a >= 1.0) / a.size)


# --------------------------------------------------------------------------------------------
# Features of the model, acquisition properties of the image
# --------------------------------------------------------------------------------------------


@contextmanager
def capture_features(model: Any) -> Iterator[list[Any]]:
    """Collect the pooled penultimate features of every forward pass of ``model`` in the block.

    The features are the input of the module ``model.get_classifier()`` returns (timm models and
    medlens' own networks have it): after global pooling, before the linear head — the space the
    classifier separates classes in. Yields a list that receives one detached tensor per forward
    pass; it stays empty for a model without a hookable classifier module (classical models,
    ensembles), whose callers then use the logits as features. One home for the rule, shared by
    :func:`features_and_logits` and the predictor's single forward pass.
    """
    import torch

    grabbed: list[torch.Tensor] = []
    handle = None
    get = getattr(model, "get_classifier", None)  # timm protocol, not a model-kind test
    head = get() if callable(get) else None
    if isinstance(head, torch.nn.Module) and not isinstance(head, torch.nn.Identity):

        def hook(_m: Any, inputs: tuple[Any, ...]) -> None:
            if inputs and isinstance(inputs[0], torch.Tensor):
                grabbed.append(inputs[0].detach())

        handle = head.register_forward_pre_hook(hook)
    try:
        yield grabbed
    finally:
        if handle is not None:
            handle.remove()


def features_and_logits(
    model: Any, x: Any, primary: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled penultimate features and logits of ``model`` on ``x`` in one forward pass.

    Features as :func:`capture_features` defines them; a model without a classifier module gives
    its logits as features, which still separates far-off inputs but less sharply; the caller can
    tell by ``features.shape[1] == logits.shape[1]``. ``x``: what ``model`` takes (a tensor; a
    fusion model's ``(inputs, mask)`` pair is passed as a tuple). ``primary``: the
    classification head of a multi-head model (``"class"``).
    """
    import torch

    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with capture_features(model) as grabbed, torch.inference_mode():
            logits = model(*x) if isinstance(x, tuple) else model(x)
    finally:
        if was_training:
            model.train()
    if isinstance(logits, dict):  # multi-task heads: the primary classification output
        logits = logits[primary or "class"]
    lg = logits.float().cpu().numpy()
    if not grabbed:
        return lg.copy(), lg
    f = grabbed[-1].float().flatten(1).cpu().numpy()
    return f, lg


def extract_features(model: Any, x: Any, primary: str | None = None) -> np.ndarray:
    """Pooled penultimate features (see :func:`features_and_logits`)."""
    return features_and_logits(model, x, primary)[0]


def _as_grey_hw(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(grey H×W, colour H×W×3 or None) of a C×H×W, H×W×3 or H×W array."""
    a = np.asarray(image, dtype=np.float32)
    if a.ndim == 2:
        return a, None
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.ndim != 3:
        raise ValueError(f"expected an image C×H×W, H×W×C or H×W, got shape {a.shape}")
    if a.shape[2] == 1:
        return a[:, :, 0], None
    return a.mean(axis=2), a


def _colour(rgb: np.ndarray | None) -> tuple[float, float]:
    if rgb is None or rgb.shape[-1] < 3:
        return 0.0, 0.0
    chroma = float((rgb.max(axis=2) - rgb.min(axis=2)).mean())
    ch = rgb.reshape(-1, rgb.shape[2]).T.astype(np.float64)
    sd = ch.std(axis=1)
    if np.any(sd < 1e-8):  # a flat channel: correlation undefined; chroma already tells
        return chroma, 0.0 if chroma < 1e-6 else 1.0
    corr = np.corrcoef(ch)
    return chroma, float(1.0 - corr[np.triu_indices(len(ch), 1)].min())


def acquisition_properties(image: np.ndarray, original: np.ndarray | None = None) -> np.ndarray:
    """:data:`ACQ_NAMES` of one image, as a float vector.

    ``image``: the preprocessed input (``C×H×W``, what the model sees): intensity percentiles,
    spread and texture. ``original``: the decoded image (``H×W`` or ``H×W×3``) before
    grey conversion and resizing: colour and aspect ratio — a chest pipeline turns a blood smear
    grey and square, so only the decoded image still shows that it was neither. Without
    ``original`` both come from ``image``.
    """
    grey, rgb = _as_grey_hw(image)
    src_rgb = rgb
    h, w = grey.shape
    if original is not None:
        o = np.asarray(original, dtype=np.float32)
        h, w = o.shape[0], o.shape[1]
        src_rgb = o if o.ndim == 3 and o.shape[2] >= 3 else None
        if src_rgb is not None and np.issubdtype(np.asarray(original).dtype, np.integer):
            src_rgb = src_rgb / float(np.iinfo(np.asarray(original).dtype).max)
    chroma, decor = _colour(src_rgb)
    g = grey.astype(np.float64)
    g = np.where(np.isfinite(g), g, 0.0)
    pct = np.percentile(g, [5, 25, 50, 75, 95])
    sd = float(g.std())
    diff = 0.5 * (np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())
    texture = float(diff / sd) if sd > 1e-8 else 0.0
    vec = [chroma, decor, math.log(max(h, 1) / max(w, 1)), *pct.tolist(), sd, texture]
    return np.asarray(vec, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Feature scores
# --------------------------------------------------------------------------------------------


def _unit(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def knn_score(bank_unit: np.ndarray, features: np.ndarray, k: int) -> np.ndarray:
    """Cosine distance to the k-th nearest training feature (bank already unit-normalised)."""
    sims = _unit(features) @ bank_unit.T
    k = max(1, min(k, bank_unit.shape[0]))
    kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
    return 1.0 - kth


def mahalanobis_score(means: np.ndarray, precision: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Smallest squared Mahalanobis distance to a class mean under the shared covariance."""
    f = np.asarray(features, dtype=np.float64)
    d = f[:, None, :] - means[None, :, :]
    return np.einsum("nkd,de,nke->nk", d, precision, d).min(axis=1)


def energy_score(logits: np.ndarray) -> np.ndarray:
    """−logsumexp of the logits: higher means less like training (Liu et al., 2020)."""
    lg = np.asarray(logits, dtype=np.float64)
    m = lg.max(axis=1, keepdims=True)
    return -(m[:, 0] + np.log(np.exp(lg - m).sum(axis=1)))


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray | None) -> dict[str, np.ndarray]:
    """Class means and the shared precision (Ledoit–Wolf shrinkage: stable when the feature
    dimension is near the number of training images)."""
    from sklearn.covariance import LedoitWolf

    f = np.asarray(features, dtype=np.float64)
    y = np.zeros(len(f), int) if labels is None else np.asarray(labels).astype(int)
    classes = np.unique(y)
    means = np.stack([f[y == c].mean(axis=0) for c in classes])
    centred = f - means[np.searchsorted(classes, y)]
    lw = LedoitWolf(assume_centered=True).fit(centred)
    return {"means": means, "precision": lw.precision_}


def _upper_quantile(scores: np.ndarray, q: float) -> float:
    """The ``ceil(n q)``-th smallest score: at least a ``q`` share of ``scores`` is ≤ it."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if len(s) == 0:
        raise ValueError("no validation images to choose the gate's threshold on")
    return float(s[min(len(s), max(1, math.ceil(len(s) * q - 1e-9))) - 1])


def _threshold(scores: np.ndarray, q: float) -> float:
    """The larger of the empirical ``q`` quantile and a log-normal fit's ``q`` quantile.

    With fewer than ``1 / (1 - q)`` validation images (200 at q = 99.5 %) the empirical
    quantile is just the largest score, and a new image from the same distribution exceeds it
    with probability ``1 / (n + 1)`` — 8 % with 12 validation images, far from the 1 % promised.
    The scores are positive and right-skewed (squared distances, robust |z|), so a log-normal
    tail extrapolates beyond the sample; with many images the empirical quantile takes over.
    """
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    emp = _upper_quantile(s if len(s) else np.asarray(scores, dtype=np.float64), q)
    if len(s) < 3:
        return emp
    from statistics import NormalDist

    logs = np.log(np.maximum(s, 1e-12))
    fit = float(np.exp(logs.mean() + NormalDist().inv_cdf(q) * logs.std(ddof=1)))
    return max(emp, fit)


# --------------------------------------------------------------------------------------------
# The gate
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict on one image; ``score``/``threshold`` belong to the test that decided
    (for ``ok``: the feature test). ``details`` carries both scores and the worst property."""

    status: Status
    reason: str | None = None
    score: float | None = None
    threshold: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def assessed(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


@dataclass
class InputGate:
    """Fitted summary of the training images and the validation-chosen thresholds."""

    method: str
    feature_threshold: float
    acq_threshold: float
    arrays: dict[str, np.ndarray]
    k: int = 5  # neighbours, for method="knn"
    val_pass: float = 0.99
    val_pass_achieved: float = float("nan")
    min_size: int = 16
    n_train: int = 0
    n_val: int = 0

    @classmethod
    def fit(
        cls,
        train_features: np.ndarray,
        train_acq: np.ndarray,
        val_features: np.ndarray,
        val_acq: np.ndarray,
        val_pass: float = 0.99,
        *,
        method: str = "mahalanobis",
        train_labels: np.ndarray | None = None,
        val_logits: np.ndarray | None = None,
        k: int = 5,
        max_bank: int = 5000,
        min_size: int = 16,
        seed: int = 0,
    ) -> InputGate:
        """Summarise the training images; thresholds on validation so ≥ ``val_pass`` pass.

        ``method="energy"`` scores logits: pass them as ``val_features`` (and at scoring time).
        """
        if method not in FEATURE_SCORES:
            raise ValueError(f"gate method must be one of {FEATURE_SCORES}, got {method!r}")
        if not 0.5 <= val_pass < 1.0:
            raise ValueError(f"val_pass must lie in [0.5, 1), got {val_pass}")
        tf = np.asarray(train_features, dtype=np.float64)
        ta = np.asarray(train_acq, dtype=np.float64)
        if ta.ndim != 2 or ta.shape[1] != len(ACQ_NAMES):
            raise ValueError(f"acquisition arrays must be (n, {len(ACQ_NAMES)}), got {ta.shape}")
        arrays: dict[str, np.ndarray] = {}
        if method == "knn":
            bank = tf
            if len(bank) > max_bank:
                pick = np.random.default_rng(seed).choice(len(bank), max_bank, replace=False)
                bank = bank[np.sort(pick)]
            arrays["bank"] = _unit(bank).astype(np.float32)
        elif method == "mahalanobis":
            arrays.update(fit_mahalanobis(tf, train_labels))
        median = np.median(ta, axis=0)
        mad = _MAD_TO_SD * np.median(np.abs(ta - median), axis=0)
        span = max(float(median[ACQ_NAMES.index("p95")] - median[ACQ_NAMES.index("p05")]), 1e-6)
        floors = np.array([_ACQ_FLOORS.get(n, 0.02 * span) for n in ACQ_NAMES])
        floors[ACQ_NAMES.index("texture")] = max(0.02 * float(median[-1]), 1e-3)
        arrays["acq_median"] = median
        arrays["acq_scale"] = np.maximum(mad, floors)
        gate = cls(method, math.inf, math.inf, arrays, k, val_pass, min_size=min_size)
        gate.n_train, gate.n_val = len(tf), len(val_acq)
        q = 1.0 - (1.0 - val_pass) / 2.0
        vf = gate.feature_scores(val_features)
        va = gate.acquisition_z(val_acq).max(axis=1)
        gate.feature_threshold = _threshold(vf, q)
        gate.acq_threshold = _threshold(va, q)
        gate.val_pass_achieved = float(
            np.mean((vf <= gate.feature_threshold) & (va <= gate.acq_threshold))
        )
        return gate

    def feature_scores(self, features: np.ndarray) -> np.ndarray:
        """The feature test's score (larger = less like training); logits for ``energy``."""
        f = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if self.method == "knn":
            return knn_score(self.arrays["bank"].astype(np.float64), f, self.k)
        if self.method == "mahalanobis":
            return mahalanobis_score(self.arrays["means"], self.arrays["precision"], f)
        return energy_score(f)

    def acquisition_z(self, acq: np.ndarray) -> np.ndarray:
        """|robust z| of each acquisition property against the training images."""
        a = np.atleast_2d(np.asarray(acq, dtype=np.float64))
        z = np.abs(a - self.arrays["acq_median"]) / self.arrays["acq_scale"]
        return np.where(np.isfinite(z), z, np.inf)

    def score(
        self, features: np.ndarray, acq: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Per image: ``{"feature", "acquisition", "property"}`` and the out-of-distribution flag."""
        fs = self.feature_scores(features)
        z = self.acquisition_z(acq)
        acq_s = z.max(axis=1)
        flags = (fs > self.feature_threshold) | (acq_s > self.acq_threshold) | ~np.isfinite(fs)
        return {"feature": fs, "acquisition": acq_s, "property": z.argmax(axis=1)}, flags

    def assess(
        self,
        decoded: dict[str, Any] | None,
        features: np.ndarray | None,
        acq: np.ndarray | None,
        unit_array: np.ndarray | None = None,
    ) -> GateResult:
        """One image's status: gradability first (``decoded``), then the two OOD tests.

        ``features``/``acq`` may be ``None`` when the image is ungradable (nothing was run);
        ``unit_array`` (the loader's [0, 1] array) lets the exposure test run when ``decoded``
        has no saturation shares.
        """
        if decoded is not None:
            why = check_gradable(decoded, self.min_size, unit_array=unit_array)
            if why:
                return GateResult("ungradable", why)
        if features is None or acq is None:
            raise ValueError("a gradable image needs its features and acquisition properties")
        s, flag = self.score(np.atleast_2d(features), np.atleast_2d(acq))
        fs, as_, prop = float(s["feature"][0]), float(s["acquisition"][0]), int(s["property"][0])
        details = {
            "feature_score": fs,
            "feature_threshold": self.feature_threshold,
            "feature_method": self.method,
            "acquisition_score": as_,
            "acquisition_threshold": self.acq_threshold,
            "acquisition_property": ACQ_NAMES[prop],
        }
        if not flag[0]:
            return GateResult("ok", None, fs, self.feature_threshold, details)
        f_ratio = fs / self.feature_threshold if self.feature_threshold > 0 else math.inf
        a_ratio = as_ / self.acq_threshold if self.acq_threshold > 0 else math.inf
        if not math.isfinite(fs) or f_ratio >= a_ratio:
            reason = (
                f"does not look like the training images to the model ({self.method} feature "
                f"score {fs:.4g} > threshold {self.feature_threshold:.4g})"
            )
            return GateResult("out_of_distribution", reason, fs, self.feature_threshold, details)
        reason = (
            f"acquisition unlike the training images: {ACQ_NAMES[prop]} is {as_:.3g} robust SD "
            f"from the training median (threshold {self.acq_threshold:.3g})"
        )
        return GateResult("out_of_distribution", reason, as_, self.acq_threshold, details)

    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(json, arrays)``: JSON for the bundle's metadata, float32 arrays (safetensors-ready,
        names prefixed ``gate.``) — no pickle."""
        meta = {
            "version": GATE_VERSION,
            "method": self.method,
            "k": self.k,
            "feature_threshold": self.feature_threshold,
            "acquisition_threshold": self.acq_threshold,
            "acquisition_properties": list(ACQ_NAMES),
            "val_pass": self.val_pass,
            "val_pass_achieved": self.val_pass_achieved,
            "min_size": self.min_size,
            "n_train": self.n_train,
            "n_val": self.n_val,
        }
        arrays = {
            f"gate.{k}": np.ascontiguousarray(v, dtype=np.float32) for k, v in self.arrays.items()
        }
        return json_safe(meta), arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, Any]) -> InputGate:
        """Inverse of :meth:`to_state`; a bundle written by another gate version is refused."""
        if int(meta.get("version", 0)) != GATE_VERSION:
            raise ValueError(
                f"input gate version {meta.get('version')} in the bundle; this medlens reads "
                f"version {GATE_VERSION}: re-export the bundle"
            )
        if list(meta.get("acquisition_properties", [])) != list(ACQ_NAMES):
            raise ValueError("input gate was fitted on other acquisition properties: re-export")
        arr = {
            k.removeprefix("gate."): np.asarray(v, dtype=np.float64)
            for k, v in arrays.items()
            if k.startswith("gate.")
        }
        ft, at = meta["feature_threshold"], meta["acquisition_threshold"]
        return cls(
            method=str(meta["method"]),
            feature_threshold=math.inf if ft is None else float(ft),
            acq_threshold=math.inf if at is None else float(at),
            arrays=arr,
            k=int(meta.get("k", 5)),
            val_pass=float(meta.get("val_pass", 0.99)),
            val_pass_achieved=float(meta.get("val_pass_achieved") or float("nan")),
            min_size=int(meta.get("min_size", 16)),
            n_train=int(meta.get("n_train", 0)),
            n_val=int(meta.get("n_val", 0)),
        )
