"""Loaded models and everything computed from them: predictions, triage keys, heatmaps.

Each bundle is loaded once at start-up through :class:`medlens.inference.Predictor` (which
verifies its SHA-256 and replays its own preprocessing) and warmed with one prediction, so the
first upload does not pay for library set-up. A model is used under its own lock: CAM methods
attach hooks to the network, and a prediction running through the same network in another thread
at that moment would corrupt the heatmap.

What kind of model a bundle holds (ensemble, fusion...) is asked of the model registry through
:attr:`Predictor.model_info`, never read from its name. The explanation library is imported
lazily inside :meth:`Predictor.heatmap` only, so a server whose explanation extras are missing or
broken still predicts and says "heatmap unavailable".

Throughput (issue #12): predictions of one model go through its :class:`MicroBatcher`, so
concurrent uploads share a forward pass (:meth:`Predictor.predict_many`, the single-image rules
per image); under the torch engine a batch holds the model's lock (heatmap hooks), under ONNX
it does not need to (heatmaps use the separate torch model). Heatmaps of all models share the
registry's bounded :class:`HeatmapPool`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.inference import DEMO_NOTICE, LoadedImage, Prediction, Predictor
from medlens.serve.heatmaps import HeatmapPool
from medlens.serve.microbatch import MicroBatcher

if TYPE_CHECKING:
    from medlens.serve.settings import ServeSettings

__all__ = ["DEMO_NOTICE", "METHODS", "METHOD_LABELS", "LoadedModel", "ModelRegistry", "Triage"]

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


@dataclass
class LoadedModel:
    key: str
    predictor: Predictor
    lock: threading.Lock = field(default_factory=threading.Lock)
    warm_seconds: float | None = None  # how long the start-up warm-up took (None: not warmed)
    batcher: MicroBatcher | None = None  # None: each prediction alone, under the lock

    def start_batching(self, max_batch: int, max_wait_s: float) -> None:
        """Route :meth:`predict` through a micro-batcher of at most ``max_batch`` images."""
        self.batcher = MicroBatcher(
            self._predict_batch,
            max_batch=max_batch,
            max_wait_s=max_wait_s,
            name=f"batch-{self.key[:24]}",
        )

    def _predict_batch(self, images: list[Any]) -> list[Prediction | Exception]:
        """One forward pass for ``images``; an unreadable image gets its own error."""
        if self.predictor.engine.name == "torch":  # CAM hooks live on this very network
            with self.lock:
                return list(self.predictor.predict_many(images, batch_size=len(images)))
        return list(self.predictor.predict_many(images, batch_size=len(images)))

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
    def created(self) -> str:
        """Creation date of the bundle (``YYYY-MM-DD``), '' when not recorded."""
        return self.predictor.bundle.created[:10]

    @property
    def training_data(self) -> dict[str, Any]:
        return dict(self.predictor.bundle.training_data)

    @property
    def synthetic(self) -> bool:
        """A demonstration model trained on generated phantoms."""
        return self.predictor.bundle.synthetic

    @property
    def training_text(self) -> str:
        """``"48 synthetic images (generated chest_xray phantoms)"``."""
        td = self.training_data
        n = td.get("n_images")
        kind = "synthetic" if td.get("synthetic") else "real"
        count = f"{n} {kind} images" if n is not None else f"{kind} images"
        return f"{count} ({td.get('origin') or 'origin not recorded'})"

    @property
    def menu_label(self) -> str:
        """Tells two bundles of one recipe apart: recipe, architecture, date, short hash."""
        parts = [self.model_name]
        if self.created:
            parts.append(self.created)
        parts.append(self.sha256[:8])
        label = " · ".join(parts)
        if self.is_ensemble:
            label += " (ensemble)"
        if self.synthetic:
            label += " — demonstration, synthetic data"
        return label

    @property
    def is_ensemble(self) -> bool:
        return self.predictor.model_info.kind == "ensemble"

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

    @property
    def coverage(self) -> float | None:
        """Coverage of the bundle's conformal prediction sets (None: it has none)."""
        sets = self.predictor.sets
        return sets.coverage if sets is not None else None

    @property
    def evidence(self) -> dict[str, dict[str, Any]] | None:
        """The bundle's heatmap verdicts per method (None: no localisation evidence)."""
        return self.predictor.trust.evidence

    def test_figures(self) -> list[tuple[str, str]]:
        """Held-out test figures with their intervals, ``[(name, text)]`` ([] if none)."""
        return self.predictor.test_figures()

    def test_caption(self) -> str:
        """``"12 images, 95 % intervals"`` for the test figures' heading ('' if unknown)."""
        metrics = self.predictor.bundle.metrics or {}
        parts = []
        if isinstance(metrics.get("n"), int):
            parts.append(f"{metrics['n']} images")
        level = (metrics.get("intervals") or {}).get("confidence_level")
        if isinstance(level, int | float):
            parts.append(f"{round(100 * level)} % intervals")
        return ", ".join(parts)

    def describe(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "model": self.model_name,
            "bundle_sha256": self.sha256,
            "created": self.predictor.bundle.created,
            "classes": self.classes,
            "priority": self.priority,
            "thresholds": self.thresholds,
            "calibrated": self.predictor.temperature != 1.0,
            "ensemble": self.is_ensemble,
            "intended_use": self.intended_use,
            "training_data": self.training_data,
            "heads": {
                k: {"type": str(v.get("type", "classification")), "classes": v.get("classes")}
                for k, v in self.head_specs.items()
            },
            "modalities": self.modalities,
            "trust": self.predictor.trust.describe(),
        }

    def warm_up(self) -> float:
        """One prediction on a blank image; returns (and remembers) the seconds it took."""
        t0 = time.perf_counter()
        with self.lock:
            self.predictor.warm_up()
        self.warm_seconds = time.perf_counter() - t0
        return self.warm_seconds

    def predict(self, image: np.ndarray | LoadedImage) -> Prediction:
        """Pass the :class:`LoadedImage` an upload was decoded into, not its ``array``: the
        input check reads the decoded figures, which the [0, 1] array no longer shows."""
        if self.batcher is not None:
            return self.batcher.submit(image)
        with self.lock:
            return self.predictor.predict(image)

    def view(self, image: np.ndarray) -> Any:
        """The model's preprocessed view of ``image`` (for a fusion model: the main modality).

        An upload is one image, which a fusion predictor treats as its first modality.
        """
        return self.predictor.view(image)

    def borderline(self, probabilities: dict[str, float], margin: float) -> list[str]:
        return self.predictor.borderline(probabilities, margin)

    def heatmap(
        self, image: np.ndarray, method: str, target_class: int | None
    ) -> tuple[np.ndarray | None, str | None]:
        """Heatmap overlay (uint8 H x W x 3) of one image, or None and why not.

        Failures of any kind become a message the page shows ("heatmap unavailable: ...")
        instead of an error page.
        """
        if method not in METHODS:
            return None, f"unknown heatmap method {method!r}"
        if self.modalities is not None:
            # CAM needs one image through one network; a fusion model takes several inputs.
            return None, "heatmap unavailable: not computed for multi-image (fusion) models"
        try:
            pre = self.view(image)
            with self.lock:
                return self.predictor.heatmap(pre, method, target_class), None
        except ImportError as exc:
            log.warning("explanations unavailable: %s", exc)
            return None, "heatmap unavailable: the explanation module could not be loaded"
        except Exception as exc:
            log.warning("heatmap %s failed: %s", method, exc)
            return None, f"heatmap unavailable: {str(exc)[:200]}"


class ModelRegistry:
    """The bundles this server serves, keyed ``<slug of name>-<first 8 of sha256>``."""

    def __init__(
        self, bundles: list[Path], device: str = "cpu", settings: ServeSettings | None = None
    ) -> None:
        s = settings
        self.heatmaps = HeatmapPool(
            s.heatmap_workers if s else 1, s.heatmap_cache_entries if s else 64
        )
        self.models: dict[str, LoadedModel] = {}
        for path in bundles:
            pred = Predictor.from_bundle(path, device=device)
            slug = re.sub(r"[^a-z0-9]+", "-", pred.bundle.name.lower()).strip("-") or "model"
            key = f"{slug[:60]}-{pred.bundle.sha256[:8]}"
            if key in self.models:
                continue  # the same bundle given twice
            self.models[key] = LoadedModel(key, pred)
            max_batch = s.batch_max if s else 8
            if max_batch > 1:
                wait = (s.batch_wait_ms if s else 2.0) / 1000.0
                self.models[key].start_batching(max_batch, wait)
        if not self.models:
            raise ValueError("no model bundle to serve")

    def warm_up(self) -> None:
        """Warm every model (one blank prediction each) and log when each one is ready."""
        for m in self:
            seconds = m.warm_up()
            log.info("model %s ready (warm-up %.1f s)", m.menu_label, seconds)

    @property
    def default_key(self) -> str:
        return next(iter(self.models))

    def get(self, key: str | None) -> LoadedModel | None:
        if not key:
            return self.models[self.default_key]
        return self.models.get(key)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.models.values())

    def values(self) -> list[LoadedModel]:
        """The loaded models (as a dict's ``values()``: pages iterate either way)."""
        return list(self.models.values())

    def __len__(self) -> int:
        return len(self.models)


@dataclass
class Triage:
    """Where a result goes on a worklist and why."""

    priority_rank: int
    risk: float
    borderline: list[str]


def triage(
    probabilities: dict[str, float], decision: str, priority: list[str], borderline: list[str]
) -> Triage:
    """Worklist key: the decision's rank in the policy priority (tuberculosis before pneumonia
    before everything else), then risk, highest first.

    Risk is the probability of the decided class when that is a priority class; otherwise the
    highest probability any priority class has (the normal-looking case most likely to be
    disease comes first); with no priority classes at all, the uncertainty 1 - p(decision).
    ``borderline`` (the policy's notes, :meth:`LoadedModel.borderline`) rides along.
    """
    rank = priority.index(decision) if decision in priority else len(priority)
    if decision in priority:
        risk = probabilities.get(decision, 0.0)
    elif priority:
        risk = max(probabilities.get(c, 0.0) for c in priority)
    else:
        risk = 1.0 - probabilities.get(decision, 0.0)
    return Triage(rank, float(risk), list(borderline))
