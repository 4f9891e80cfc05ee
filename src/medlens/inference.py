"""Predictor: bundle → the bundle's own preprocessing → model → probabilities and a label.

The preprocessing is rebuilt from the bundle, never from the caller's settings, so serving applies
exactly the pipeline the model was evaluated with. Every result names the model that produced it
and carries the reminder that a clinician decides.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medlens.bundle import Bundle, load_bundle
from medlens.data.io import LoadedImage, is_supported, read_image
from medlens.errors import MedlensError
from medlens.evaluate.calibration import softmax
from medlens.evaluate.policy import DecisionPolicy
from medlens.preprocess import Pipeline, PreprocessResult

DISCLAIMER = "Decision support only, not a diagnosis: a clinician reviews the image and decides."


@dataclass
class Prediction:
    label: str
    index: int
    probabilities: dict[str, float]
    model: str
    bundle_sha256: str
    preprocess_info: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    disclaimer: str = DISCLAIMER
    logits: list[float] = field(default_factory=list)
    calibrated: bool = False
    decision: str | None = None  # the decision policy's class (None: bundle has no policy)
    decision_threshold: float | None = None  # the threshold that fired (None: fallback)
    decision_rule: str = "argmax"

    @property
    def confidence(self) -> float:
        return self.probabilities[self.label]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "label": self.label,
            "confidence": self.confidence,
            "probabilities": self.probabilities,
            "model": self.model,
            "bundle_sha256": self.bundle_sha256,
            "calibrated": self.calibrated,
            "decision": self.decision or self.label,
            "decision_rule": self.decision_rule,
            "decision_threshold": self.decision_threshold,
            "preprocess_info": self.preprocess_info,
            "disclaimer": self.disclaimer,
        }


def as_float_image(image: np.ndarray) -> np.ndarray:
    """Accept uint8/uint16/float arrays (H x W or H x W x 3) and return float32 in [0, 1]."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise MedlensError(f"expected an H x W or H x W x 3 image, got shape {a.shape}")
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    if a.dtype == bool:
        return a.astype(np.float32)
    a = a.astype(np.float32)
    if a.size and (np.nanmin(a) < 0 or np.nanmax(a) > 1):
        raise MedlensError("a float image must hold values in [0, 1]")
    return a


class Predictor:
    """Load once, predict many: ``Predictor.from_bundle(path).predict("image.png")``."""

    def __init__(self, bundle: Bundle, device: str = "cpu") -> None:
        import torch

        self.bundle = bundle
        self.device = torch.device(device)
        self.model = bundle.build_model().to(self.device)
        self.pipeline = Pipeline.from_config(bundle.meta["preprocess"])
        if self.pipeline.fingerprint() != bundle.meta.get("preprocess_fingerprint"):
            raise MedlensError(
                f"{bundle.path}: the preprocessing pipeline does not reproduce its fingerprint; "
                "this medlens version would preprocess differently from training"
            )
        self.classes = bundle.classes
        self._sha = bundle.sha256
        self.temperature = 1.0
        self.policy: DecisionPolicy | None = None
        if (cal := bundle.read_json("calibration.json")) is not None:
            self.temperature = float(cal["temperature"])
        if (pol := bundle.read_json("policy.json")) is not None:
            self.policy = DecisionPolicy.from_dict(pol)
            if self.policy.classes != self.classes:
                raise MedlensError(f"{bundle.path}: policy.json classes differ from the model's")

    @classmethod
    def from_bundle(cls, path: str | Path, device: str = "cpu") -> Predictor:
        return cls(load_bundle(path), device)

    @property
    def model_name(self) -> str:
        return f"{self.bundle.name} ({self.bundle.meta['model']['name']})"

    def preprocess(self, image: np.ndarray | str | Path | LoadedImage | Any) -> PreprocessResult:
        """Read (paths, or anything with a ``load()`` such as a manifest sample) and preprocess."""
        if hasattr(image, "load") and not isinstance(image, np.ndarray):
            image = image.load()
        if isinstance(image, str | Path):
            image = read_image(image)
        if isinstance(image, LoadedImage):
            image = image.array
        return self.pipeline(as_float_image(image))

    def logits_tensor(self, batch: np.ndarray) -> np.ndarray:
        """Raw logits for an ``N x C x H x W`` batch of preprocessed arrays."""
        import torch

        with torch.inference_mode():
            x = torch.as_tensor(
                np.ascontiguousarray(batch), dtype=torch.float32, device=self.device
            )
            return self.model(x).float().cpu().numpy().astype(np.float64)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities: softmax of logits / the bundle's fitted temperature."""
        return softmax(logits, self.temperature)

    def predict_tensor(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for an ``N x C x H x W`` batch of preprocessed arrays."""
        return self.probabilities(self.logits_tensor(batch))

    def _result(self, logits: np.ndarray, info: dict[str, Any], source: str | None) -> Prediction:
        probs = self.probabilities(logits[None])[0]
        i = int(np.argmax(probs))
        pred = Prediction(
            label=self.classes[i],
            index=i,
            probabilities={c: float(p) for c, p in zip(self.classes, probs, strict=True)},
            model=self.model_name,
            bundle_sha256=self._sha,
            preprocess_info=info,
            source=source,
            logits=[float(v) for v in logits],
            calibrated=self.temperature != 1.0,
        )
        if self.policy is not None:
            dec, fired = self.policy.decide(probs[None])
            pred.decision = self.classes[int(dec[0])]
            pred.decision_rule = "policy"
            if fired[0] >= 0:
                pred.decision_threshold = self.policy.thresholds[self.classes[int(fired[0])]]
        return pred

    def predict(self, image: np.ndarray | str | Path | LoadedImage) -> Prediction:
        pre = self.preprocess(image)
        logits = self.logits_tensor(pre.image[None])[0]
        src = str(image) if isinstance(image, str | Path) else None
        return self._result(logits, pre.info, src)

    def predict_many(
        self,
        images: Sequence[np.ndarray | str | Path | LoadedImage],
        batch_size: int = 32,
        progress: bool = False,
    ) -> list[Prediction | MedlensError]:
        """Predict in batches; an unreadable input yields its error in place of a result."""
        out: list[Prediction | MedlensError] = []
        chunks = range(0, len(images), batch_size)
        for start in _track(chunks, "Predicting", progress):
            pres: list[tuple[int, PreprocessResult]] = []
            results: list[Prediction | MedlensError | None] = []
            for j, img in enumerate(images[start : start + batch_size]):
                try:
                    pres.append((j, self.preprocess(img)))
                    results.append(None)
                except MedlensError as exc:
                    results.append(exc)
            if pres:
                logits = self.logits_tensor(np.stack([p.image for _, p in pres]))
                for (j, pre), pr in zip(pres, logits, strict=True):
                    img = images[start + j]
                    src = str(img) if isinstance(img, str | Path) else None
                    results[j] = self._result(pr, pre.info, src)
            out.extend(r for r in results if r is not None)
        return out

    def predict_folder(
        self,
        folder: str | Path,
        out_csv: str | Path | None = None,
        batch_size: int = 32,
        progress: bool = True,
    ) -> list[Prediction | MedlensError]:
        """Every supported image under ``folder``; optionally written as CSV (errors included)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise MedlensError(f"not a folder: {folder}")
        files = sorted(p for p in folder.rglob("*") if p.is_file() and is_supported(p))
        results = self.predict_many(files, batch_size, progress)
        if out_csv is not None:
            write_predictions_csv(results, files, self.classes, Path(out_csv))
        return results


def write_predictions_csv(
    results: Sequence[Prediction | MedlensError],
    sources: Sequence[str | Path],
    classes: Sequence[str],
    path: Path,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "confidence", *[f"p_{c}" for c in classes], "model", "error"])
        for src, r in zip(sources, results, strict=True):
            if isinstance(r, Prediction):
                w.writerow(
                    [
                        src,
                        r.label,
                        f"{r.confidence:.6f}",
                        *[f"{r.probabilities[c]:.6f}" for c in classes],
                        r.model,
                        "",
                    ]
                )
            else:
                w.writerow([src, "", "", *[""] * len(classes), "", str(r)])


def _track(items: Iterable, label: str, enabled: bool) -> Iterable:
    if not enabled:
        return items
    from rich.progress import track

    return track(items, description=label, transient=True)
