"""Loaded models and everything computed from them: predictions, triage keys, heatmaps.

Each bundle is loaded once at start-up through :class:`medlens.inference.Predictor` (which
verifies its SHA-256 and replays its own preprocessing). A model is used under its own lock:
CAM methods attach hooks to the network, and a prediction running through the same network in
another thread at that moment would corrupt the heatmap.

The explanation library is imported lazily inside :func:`explain_overlay` only, so a server whose
explanation extras are missing or broken still predicts and says "heatmap unavailable".
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medlens.inference import Prediction, Predictor
from medlens.preprocess import PreprocessResult

log = logging.getLogger("medlens.serve")

METHODS: tuple[str, ...] = (
    "gradcam",
    "gradcam++",
    "hirescam",
    "eigencam",
    "layercam",
    "scorecam",
    "smoothgradcam++",
)
METHOD_LABELS = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "hirescam": "HiResCAM",
    "eigencam": "EigenCAM",
    "layercam": "LayerCAM",
    "scorecam": "Score-CAM",
    "smoothgradcam++": "SmoothGrad-CAM++",
}


# Registry names of ensemble models: a bundle records the registry name (``soft_voting``), which
# need not contain the word "ensemble".
ENSEMBLE_MODELS = frozenset({"soft_voting"})


@dataclass
class LoadedModel:
    key: str
    predictor: Predictor
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.predictor.bundle.name

    @property
    def model_name(self) -> str:
        return self.predictor.model_name

    @property
    def sha256(self) -> str:
        return self.predictor.bundle.sha256

    @property
    def classes(self) -> list[str]:
        return list(self.predictor.classes)

    @property
    def meta(self) -> dict[str, Any]:
        return self.predictor.bundle.meta

    @property
    def intended_use(self) -> str:
        return str(self.meta.get("intended_use", ""))

    @property
    def is_ensemble(self) -> bool:
        name = str(self.meta.get("model", {}).get("name", "")).lower()
        return bool(self.meta.get("ensemble")) or name in ENSEMBLE_MODELS or "ensemble" in name

    @property
    def modalities(self) -> list[str] | None:
        """A fusion model's modalities, main one first (None: a single-image model)."""
        mods = self.predictor.modalities
        return list(mods) if mods else None

    @property
    def head_specs(self) -> dict[str, dict[str, Any]]:
        """The other heads the bundle declares (``task.heads``), keyed by head name."""
        return dict(self.predictor.head_specs)

    @property
    def priority(self) -> list[str]:
        pol = self.predictor.policy
        if pol is not None:
            return list(pol.priority)
        return [c for c in self.meta.get("task", {}).get("priority", []) if c in self.classes]

    @property
    def thresholds(self) -> dict[str, float]:
        pol = self.predictor.policy
        return dict(pol.thresholds) if pol is not None else {}

    def describe(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "model": self.model_name,
            "bundle_sha256": self.sha256,
            "classes": self.classes,
            "priority": self.priority,
            "thresholds": self.thresholds,
            "calibrated": self.predictor.temperature != 1.0,
            "ensemble": self.is_ensemble,
            "intended_use": self.intended_use,
            "heads": {
                k: {"type": str(v.get("type", "classification")), "classes": v.get("classes")}
                for k, v in self.head_specs.items()
            },
            "modalities": self.modalities,
        }

    def predict(self, image: np.ndarray) -> Prediction:
        with self.lock:
            return self.predictor.predict(image)

    def preprocess(self, image: np.ndarray) -> PreprocessResult:
        """The model's view of ``image``; for a fusion model, the main modality's view.

        An upload is one image, which a fusion predictor treats as its first modality and
        preprocesses into ``{modality: result or None}``; the pages show that one image.
        """
        pre = self.predictor.preprocess(image)
        if isinstance(pre, dict):
            return next(p for p in pre.values() if p is not None)
        return pre


class ModelRegistry:
    """The bundles this server serves, keyed ``<slug of name>-<first 8 of sha256>``."""

    def __init__(self, bundles: list[Path], device: str = "cpu") -> None:
        self.models: dict[str, LoadedModel] = {}
        for path in bundles:
            pred = Predictor.from_bundle(path, device=device)
            slug = re.sub(r"[^a-z0-9]+", "-", pred.bundle.name.lower()).strip("-") or "model"
            key = f"{slug[:60]}-{pred.bundle.sha256[:8]}"
            if key in self.models:
                continue  # the same bundle given twice
            self.models[key] = LoadedModel(key, pred)
        if not self.models:
            raise ValueError("no model bundle to serve")

    @property
    def default_key(self) -> str:
        return next(iter(self.models))

    def get(self, key: str | None) -> LoadedModel | None:
        if not key:
            return self.models[self.default_key]
        return self.models.get(key)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.models.values())

    def __len__(self) -> int:
        return len(self.models)


@dataclass
class Triage:
    """Where a result goes on a worklist and why."""

    priority_rank: int
    risk: float
    borderline: list[str]


def triage(
    probabilities: dict[str, float],
    decision: str,
    priority: list[str],
    thresholds: dict[str, float],
    margin: float,
) -> Triage:
    """Worklist key: the decision's rank in the policy priority (tuberculosis before pneumonia
    before everything else), then risk, highest first.

    Risk is the probability of the decided class when that is a priority class; otherwise the
    highest probability any priority class has (the normal-looking case most likely to be
    disease comes first); with no priority classes at all, the uncertainty 1 - p(decision).
    A case is borderline when a priority class's probability is within ``margin`` of its
    threshold (thresholds of 1.0 never fire and are skipped).
    """
    rank = priority.index(decision) if decision in priority else len(priority)
    if decision in priority:
        risk = probabilities.get(decision, 0.0)
    elif priority:
        risk = max(probabilities.get(c, 0.0) for c in priority)
    else:
        risk = 1.0 - probabilities.get(decision, 0.0)
    near = []
    for c in priority:
        t = thresholds.get(c)
        if t is None or t >= 1.0:
            continue
        p = probabilities.get(c, 0.0)
        if abs(p - t) <= margin:
            near.append(f"p({c}) = {p:.3f}, threshold {t:.2f}")
    return Triage(rank, float(risk), near)


def explain_overlay(
    model: LoadedModel, pre: PreprocessResult, method: str, target_class: int | None
) -> tuple[np.ndarray | None, str | None]:
    """Heatmap overlay (uint8 H x W x 3) for one preprocessed image, or None and why not.

    The one place the explanation package is imported: failures of any kind become a message
    the page shows ("heatmap unavailable: ...") instead of an error page.
    """
    if method not in METHODS:
        return None, f"unknown heatmap method {method!r}"
    if model.modalities is not None:
        # CAM needs one image through one network; a fusion model takes several encoders' inputs.
        return None, "heatmap unavailable: not computed for multi-image (fusion) models"
    try:
        from medlens.explain import explain, overlay
    except Exception as exc:
        log.warning("explanations unavailable: %s", exc)
        return None, "heatmap unavailable: the explanation module could not be loaded"
    try:
        import torch

        x = torch.as_tensor(
            np.ascontiguousarray(pre.image[None]),
            dtype=torch.float32,
            device=model.predictor.device,
        )
        with model.lock:
            cam = explain(model.predictor.model, x, method, target_class)
        return overlay(pre.display, cam, colormap="jet", alpha=0.4), None
    except Exception as exc:
        log.warning("heatmap %s failed: %s", method, exc)
        return None, f"heatmap unavailable: {str(exc)[:200]}"
