"""The classical baseline: HOG features + an MLP, a random forest or XGBoost, as a torch module.

A recipe that names ``hog_mlp``, ``hog_rf`` or ``hog_xgboost`` gets a :class:`ClassicalModel`:
an ``nn.Module`` whose ``forward`` takes the same ``N x C x H x W`` float32 batch as every network
and returns ``N x K`` logits (``log`` of the estimator's probabilities, so ``softmax(logits)`` is
exactly what the estimator predicts). That keeps bundles, the Predictor, evaluation and calibration
unchanged: a baseline is judged by the same code as the networks it is compared with.

Why not pickle: a bundle must never unpickle anything (``model.safetensors`` holds tensors only).
The fitted estimator is therefore serialised to bytes and stored in a ``uint8`` buffer named
``payload``: XGBoost's own JSON model, or for scikit-learn the ``skops`` format, whose loader only
builds types it is told to trust. Every type in a skops payload must be on skops' default trusted
list or on :data:`TRUSTED_EXTRA`; anything else (a function, an arbitrary class) is refused with a
:class:`~medlens.errors.BundleError` naming it, before anything is constructed.

scikit-image, xgboost and skops are optional (``pip install "medlens[classical]"``) and are
imported only inside the functions that need them.

These models have no convolution layers and no parameters: gradient training, CAMs and linear
probes do not apply (their registry entries say ``kind="classical", cam="none"``); they are fitted
once with :meth:`fit_arrays`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medlens.errors import BundleError, MedlensError, require
from medlens.models.registry import register_model

KINDS = ("mlp", "rf", "xgboost")

# Types scikit-learn's MLP and forest need that skops does not trust by default. They are plain
# data holders (optimizer state, the compiled tree arrays); nothing here can run code on load.
TRUSTED_EXTRA: frozenset[str] = frozenset(
    {
        "sklearn.tree._tree.Tree",
        "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
        "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    }
)

# Estimator defaults: sized for a few hundred to a few thousand images of 32-128 px.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": {
        "hidden_layer_sizes": (256,),
        "alpha": 1e-3,
        "learning_rate_init": 1e-3,
        "max_iter": 400,
        "early_stopping": False,
    },
    "rf": {"n_estimators": 300, "max_features": "sqrt", "min_samples_leaf": 1},
    "xgboost": {
        "n_estimators": 200,
        "max_depth": 4,
        "learning_rate": 0.1,
        "subsample": 0.9,
        "colsample_bytree": 0.5,
        "min_child_weight": 1.0,
        "reg_lambda": 1.0,
    },
}


def _require(module: str) -> Any:
    """Import an optional dependency of the classical models (the ``classical`` extra)."""
    return require(module, "classical")


def _pair(v: int | Sequence[int], what: str) -> tuple[int, int]:
    t = (int(v), int(v)) if isinstance(v, int) else tuple(int(i) for i in v)
    if len(t) != 2 or min(t) < 1:
        raise MedlensError(f"model.kwargs.{what} must be a positive int or a pair, got {v!r}")
    return t[0], t[1]


def hog_features(
    x: np.ndarray,
    orientations: int = 9,
    pixels_per_cell: tuple[int, int] = (8, 8),
    cells_per_block: tuple[int, int] = (2, 2),
) -> np.ndarray:
    """HOG of every image in an ``N x C x H x W`` batch → ``N x F`` float32.

    Several channels go through ``channel_axis``: per pixel, skimage keeps the gradient of the
    channel where it is strongest (Dalal & Triggs), so an edge visible in one colour only is kept,
    where a channel mean could cancel it.
    """
    feature = _require("skimage.feature")
    if x.ndim != 4:
        raise MedlensError(f"expected an N x C x H x W batch, got shape {x.shape}")
    n, c, h, w = x.shape
    need = (pixels_per_cell[0] * cells_per_block[0], pixels_per_cell[1] * cells_per_block[1])
    if h < need[0] or w < need[1]:
        raise MedlensError(
            f"images of {h}x{w} px are smaller than one HOG block ({need[0]}x{need[1]} px); "
            "lower model.kwargs.pixels_per_cell / cells_per_block or resize larger"
        )
    out = []
    for img in np.asarray(x, dtype=np.float32):
        out.append(
            feature.hog(
                img[0] if c == 1 else img,
                orientations=orientations,
                pixels_per_cell=pixels_per_cell,
                cells_per_block=cells_per_block,
                block_norm="L2-Hys",
                feature_vector=True,
                channel_axis=None if c == 1 else 0,
            )
        )
    return np.stack(out).astype(np.float32) if out else np.zeros((n, 0), np.float32)


class _BoosterProba:
    """An XGBoost ``Booster`` with the ``predict_proba`` / ``classes_`` face of a classifier.

    The native Booster is used (not ``XGBClassifier``) because it accepts a training set where a
    class is absent, and its JSON is the format XGBoost guarantees to read across versions.
    """

    def __init__(self, booster: Any, num_classes: int, n_jobs: int | None) -> None:
        self.booster = booster
        self.classes_ = np.arange(num_classes)
        self.n_features_in_ = int(booster.num_features())
        self.n_jobs = n_jobs

    def predict_proba(self, feats: np.ndarray) -> np.ndarray:
        xgb = _require("xgboost")
        dm = xgb.DMatrix(feats, nthread=self.n_jobs or -1)
        return np.asarray(self.booster.predict(dm), dtype=np.float64).reshape(len(feats), -1)


class ClassicalModel(nn.Module):
    """HOG + a scikit-learn / XGBoost classifier behind the network interface.

    ``kind`` is ``"mlp"``, ``"rf"`` or ``"xgboost"``; other keyword arguments are the estimator's
    own settings (e.g. ``n_estimators``, ``max_depth``, ``hidden_layer_sizes``) over
    :data:`_DEFAULTS`. ``seed`` fixes the estimator's randomness so a refit gives the same model.
    """

    payload: torch.Tensor

    def __init__(
        self,
        kind: str,
        num_classes: int,
        in_chans: int = 1,
        *,
        orientations: int = 9,
        pixels_per_cell: int | Sequence[int] = 8,
        cells_per_block: int | Sequence[int] = 2,
        seed: int = 0,
        n_jobs: int | None = None,
        max_oversample: int = 10,
        **estimator_params: Any,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise MedlensError(f"unknown classical model kind {kind!r}; choose from {KINDS}")
        if num_classes < 2:
            raise MedlensError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.kind = kind
        self.num_classes = int(num_classes)
        self.in_chans = int(in_chans)
        self.orientations = int(orientations)
        self.pixels_per_cell = _pair(pixels_per_cell, "pixels_per_cell")
        self.cells_per_block = _pair(cells_per_block, "cells_per_block")
        self.seed = int(seed)
        self.n_jobs = n_jobs
        self.max_oversample = int(max_oversample)
        params = dict(_DEFAULTS[kind])
        params.update(estimator_params)
        if "hidden_layer_sizes" in params:  # YAML/JSON gives a list
            params["hidden_layer_sizes"] = tuple(int(v) for v in params["hidden_layer_sizes"])
        self.estimator_params = params
        # The fitted estimator's bytes; empty until fitted. Persistent, so it is in state_dict()
        # and therefore in model.safetensors.
        self.register_buffer("payload", torch.zeros(0, dtype=torch.uint8))
        self._estimator: Any = None

    # ---- features and prediction -------------------------------------------------------

    def features(self, x: np.ndarray) -> np.ndarray:
        """HOG features of an ``N x C x H x W`` batch with this model's settings."""
        if x.ndim == 4 and x.shape[1] != self.in_chans:
            raise MedlensError(
                f"model expects {self.in_chans} channel(s), got a batch with {x.shape[1]}"
            )
        return hog_features(x, self.orientations, self.pixels_per_cell, self.cells_per_block)

    @property
    def is_fitted(self) -> bool:
        return self.payload.numel() > 0

    @property
    def estimator(self) -> Any:
        """The fitted estimator (rebuilt from ``payload`` on first use)."""
        if not self.is_fitted:
            raise MedlensError(
                f"this hog_{self.kind} model has not been fitted: train it first "
                "(medlens.train.classical.fit_classical or model.fit_arrays)"
            )
        if self._estimator is None:
            self._estimator = self._decode(self.payload.detach().cpu().numpy().tobytes())
        return self._estimator

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """``N x K`` class probabilities (K = ``num_classes``) for an ``N x C x H x W`` batch."""
        est = self.estimator
        feats = self.features(np.asarray(x, dtype=np.float32))
        expected = getattr(est, "n_features_in_", feats.shape[1])
        if feats.shape[1] != expected:
            raise MedlensError(
                f"the model was fitted on {expected} HOG features per image but this input gives "
                f"{feats.shape[1]}: the image size differs from training"
            )
        p = np.asarray(est.predict_proba(feats), dtype=np.float64)
        out = np.zeros((len(feats), self.num_classes), dtype=np.float64)
        out[:, np.asarray(est.classes_, dtype=np.int64)] = p  # a class absent in training: 0
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits = ``log(clip(p, 1e-7))``, so softmax(logits) recovers the probabilities."""
        p = self.predict_proba(x.detach().float().cpu().numpy())
        logits = np.log(np.clip(p, 1e-7, None)).astype(np.float32)
        return torch.from_numpy(logits).to(x.device)

    # ---- fitting ----------------------------------------------------------------------

    def fit_arrays(
        self, x: np.ndarray, y: np.ndarray, class_weights: Sequence[float] | None = None
    ) -> ClassicalModel:
        """Fit on an ``N x C x H x W`` float32 batch and integer labels; store the payload.

        ``class_weights`` (one per class) become per-sample weights. The forest and XGBoost take
        them directly; scikit-learn's MLP takes ``sample_weight`` from 1.7 on, and on older
        versions rows are instead repeated ``round(w / min w)`` times (at most
        ``max_oversample``), deterministically.
        """
        return self.fit_features(self.features(np.asarray(x, dtype=np.float32)), y, class_weights)

    def fit_features(
        self, feats: np.ndarray, y: np.ndarray, class_weights: Sequence[float] | None = None
    ) -> ClassicalModel:
        """Fit on precomputed :meth:`features` (``N x F``); see :meth:`fit_arrays`."""
        y = np.asarray(y, dtype=np.int64)
        if len(y) != len(feats) or len(y) == 0:
            raise MedlensError(
                f"fitting needs as many labels as images, got {len(y)} labels, {len(feats)} images"
            )
        if y.min() < 0 or y.max() >= self.num_classes:
            raise MedlensError(f"labels must lie in 0..{self.num_classes - 1}")
        weights = None
        if class_weights is not None:
            cw = np.asarray(class_weights, dtype=np.float64)
            if cw.shape != (self.num_classes,) or (cw <= 0).any():
                raise MedlensError(
                    f"class_weights must be {self.num_classes} positive numbers, got {cw.tolist()}"
                )
            weights = cw[y]
        if self.kind == "xgboost":
            est: Any = self._fit_xgboost(feats, y, weights)
            data = bytes(est.booster.save_raw("json"))
        else:
            est = self._fit_sklearn(feats, y, weights)
            data = _require("skops.io").dumps(est)
        self.payload = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.payload.device)
        self._estimator = est
        return self

    def _fit_sklearn(self, feats: np.ndarray, y: np.ndarray, weights: np.ndarray | None) -> Any:
        if self.kind == "rf":
            from sklearn.ensemble import RandomForestClassifier

            rf = self._make(RandomForestClassifier, n_jobs=self.n_jobs)
            return rf.fit(feats, y, sample_weight=weights)
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        # HOG values are small and unevenly scaled; the MLP trains far better on standardised input.
        pipe = Pipeline([("scale", StandardScaler()), ("mlp", self._make(MLPClassifier))])
        if weights is None:
            return pipe.fit(feats, y)
        if "sample_weight" in inspect.signature(MLPClassifier.fit).parameters:
            return pipe.fit(feats, y, mlp__sample_weight=weights)
        present = weights[np.unique(y, return_index=True)[1]].min()
        reps = np.clip(np.rint(weights / present), 1, self.max_oversample).astype(np.int64)
        return pipe.fit(np.repeat(feats, reps, axis=0), np.repeat(y, reps))

    def _make(self, cls: Any, **extra: Any) -> Any:
        try:
            return cls(random_state=self.seed, **extra, **self.estimator_params)
        except TypeError as exc:
            raise MedlensError(
                f"model.kwargs for hog_{self.kind} are not accepted: {exc}"
            ) from None

    def _fit_xgboost(
        self, feats: np.ndarray, y: np.ndarray, weights: np.ndarray | None
    ) -> _BoosterProba:
        xgb = _require("xgboost")
        params = dict(self.estimator_params)
        rounds = int(params.pop("n_estimators"))
        params.update(
            objective="multi:softprob",
            num_class=self.num_classes,
            eval_metric="mlogloss",
            tree_method=params.get("tree_method", "hist"),
            seed=self.seed,
            verbosity=0,
        )
        if self.n_jobs is not None:
            params["nthread"] = self.n_jobs
        dtrain = xgb.DMatrix(feats, label=y, weight=weights, nthread=self.n_jobs or -1)
        try:
            booster = xgb.train(params, dtrain, num_boost_round=rounds)
        except xgb.core.XGBoostError as exc:
            raise MedlensError(f"XGBoost could not train hog_xgboost: {exc}") from None
        return _BoosterProba(booster, self.num_classes, self.n_jobs)

    # ---- (de)serialisation ------------------------------------------------------------

    def _decode(self, data: bytes) -> Any:
        """Rebuild the estimator from payload bytes, trusting nothing the payload does not prove."""
        if self.kind == "xgboost":
            xgb = _require("xgboost")
            if not data.lstrip().startswith(b"{"):
                raise BundleError("hog_xgboost payload is not an XGBoost JSON model")
            booster = xgb.Booster()
            try:
                booster.load_model(bytearray(data))
            except xgb.core.XGBoostError as exc:
                raise BundleError(f"hog_xgboost payload could not be read: {exc}") from None
            return _BoosterProba(booster, self.num_classes, self.n_jobs)
        sio = _require("skops.io")
        try:
            untrusted = sio.get_untrusted_types(data=data)
        except Exception as exc:  # a damaged or foreign archive
            raise BundleError(f"hog_{self.kind} payload is not a skops archive: {exc}") from None
        if refused := sorted(set(untrusted) - TRUSTED_EXTRA):
            raise BundleError(
                f"hog_{self.kind} payload holds types medlens does not trust, refused: {refused}"
            )
        try:
            est = sio.loads(data, trusted=sorted(untrusted))
        except Exception as exc:  # trusted types, but inconsistent content
            raise BundleError(f"hog_{self.kind} payload could not be read: {exc}") from None
        self._check_type(est)
        return est

    def _check_type(self, est: Any) -> None:
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import Pipeline

        ok = (
            isinstance(est, RandomForestClassifier)
            if self.kind == "rf"
            else isinstance(est, Pipeline) and isinstance(est.steps[-1][1], MLPClassifier)
        )
        if not ok:
            raise BundleError(f"hog_{self.kind} payload holds a {type(est).__name__}")
        classes = np.asarray(est.classes_)
        if classes.dtype.kind not in "iu" or classes.min() < 0 or classes.max() >= self.num_classes:
            raise BundleError(
                f"hog_{self.kind} payload predicts classes {classes.tolist()}, "
                f"not within 0..{self.num_classes - 1}"
            )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Accept a payload of any length, then validate it at once.

        The default loader copies into the existing buffer and would refuse any other size. The
        buffer is resized to the incoming one first, so strict loading still reports missing and
        unexpected keys as usual; the estimator is decoded now so a bad payload is refused when a
        bundle is opened, not at its first prediction.
        """
        key = prefix + "payload"
        incoming = state_dict.get(key)
        if isinstance(incoming, torch.Tensor):
            if incoming.dtype != torch.uint8 or incoming.ndim != 1:
                error_msgs.append(f"{key}: expected a 1-D uint8 tensor, got {incoming.dtype}")
                return
            self.payload = torch.zeros_like(incoming, device=self.payload.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._estimator = None
        if isinstance(incoming, torch.Tensor) and self.is_fitted:
            self._estimator = self._decode(self.payload.cpu().numpy().tobytes())

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind}, num_classes={self.num_classes}, in_chans={self.in_chans}, "
            f"hog=({self.orientations}, {self.pixels_per_cell}, {self.cells_per_block}), "
            f"fitted={self.is_fitted}"
        )


def _build(
    kind: str, num_classes: int, in_chans: int, pretrained: bool | str | Path, **kw: Any
) -> ClassicalModel:
    if pretrained is not False:
        raise MedlensError(
            f"model.pretrained: hog_{kind} has no pretrained weights; set pretrained to false "
            "(the model is fitted from your data)"
        )
    return ClassicalModel(kind, num_classes, in_chans, **kw)


@register_model("hog_mlp", kind="classical", cam="none", exportable=False)
def hog_mlp(
    num_classes: int, in_chans: int = 1, pretrained: bool | str | Path = False, **kw: Any
) -> ClassicalModel:
    """HOG + a one-hidden-layer MLP (inputs standardised)."""
    return _build("mlp", num_classes, in_chans, pretrained, **kw)


@register_model("hog_rf", kind="classical", cam="none", exportable=False)
def hog_rf(
    num_classes: int, in_chans: int = 1, pretrained: bool | str | Path = False, **kw: Any
) -> ClassicalModel:
    """HOG + a random forest."""
    return _build("rf", num_classes, in_chans, pretrained, **kw)


@register_model("hog_xgboost", kind="classical", cam="none", exportable=False)
def hog_xgboost(
    num_classes: int, in_chans: int = 1, pretrained: bool | str | Path = False, **kw: Any
) -> ClassicalModel:
    """HOG + gradient-boosted trees (XGBoost, ``hist`` method)."""
    return _build("xgboost", num_classes, in_chans, pretrained, **kw)
