"""Predictor: bundle → the bundle's own preprocessing → model → probabilities and a label.

The preprocessing is rebuilt from the bundle, never from the caller's settings, so serving applies
exactly the pipeline the model was evaluated with. Every result names the model that produced it
and carries the reminder that a clinician decides.

The service layer (:mod:`medlens.serve`) reaches the rest of medlens through this module only:
besides predictions, :class:`Predictor` offers what a results page needs - the model's own view
of an image (:meth:`Predictor.view`), a heatmap over it (:meth:`Predictor.heatmap`), the
registry entry of the model (:attr:`Predictor.model_info`), the borderline rule
(:meth:`Predictor.borderline`) and a warm-up - and :func:`decode_image`, :func:`detect_format`
and :data:`UPLOAD_FORMATS` read uploaded files with the loader and format table training used.

A multi-task model's other heads (stage, risk, detection) come back in ``Prediction.heads``; a
fusion model takes ``{modality: image or None}`` (or a manifest sample) and predicts from
whichever modalities are there.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.bundle import DEMO_NOTICE, Bundle, load_bundle
from medlens.common import to_unit_range
from medlens.data.io import UPLOAD_FORMATS, ImageFormat, LoadedImage, is_supported, read_image
from medlens.data.io import detect_format as _detect_format
from medlens.errors import ImageReadError, MedlensError
from medlens.evaluate.calibration import softmax
from medlens.evaluate.policy import DecisionPolicy
from medlens.preprocess import Pipeline, PreprocessResult

if TYPE_CHECKING:
    from medlens.models.registry import ModelInfo

DISCLAIMER = "Decision support only, not a diagnosis: a clinician reviews the image and decides."

__all__ = [
    "DEMO_NOTICE",
    "DISCLAIMER",
    "UPLOAD_FORMATS",
    "ImageFormat",
    "ImageReadError",
    "LoadedImage",
    "Prediction",
    "Predictor",
    "as_float_image",
    "decode_image",
    "detect_format",
    "load_explanations",
    "write_predictions_csv",
]


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
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)  # other heads' outputs
    modalities_used: list[str] | None = None  # fusion: the modalities this prediction used

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
            "heads": self.heads,
            "modalities_used": self.modalities_used,
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
    if a.dtype.kind == "f":
        a = a.astype(np.float32)
        if a.size and (np.nanmin(a) < 0 or np.nanmax(a) > 1):
            raise MedlensError("a float image must hold values in [0, 1]")
        return a
    return to_unit_range(a)  # integers by their type's range, booleans to {0, 1}


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
        mods = bundle.meta.get("modalities")
        self.modalities: dict[str, str] | None = dict(mods) if mods else None
        self.head_specs: dict[str, dict[str, Any]] = dict(bundle.meta["task"].get("heads") or {})
        self.primary = getattr(self.model, "primary", None)

    @classmethod
    def from_bundle(cls, path: str | Path, device: str = "cpu") -> Predictor:
        return cls(load_bundle(path), device)

    @property
    def model_name(self) -> str:
        return f"{self.bundle.name} ({self.bundle.meta['model']['name']})"

    @property
    def model_info(self) -> ModelInfo:
        """The registry entry of the served model: its kind (network, ensemble, fusion...),
        inputs and whether a heatmap layer exists - asked, never guessed from the name."""
        from medlens.models.registry import model_info

        return model_info(self.model)

    def warm_up(self) -> None:
        """One prediction on a blank image, so the first real request does not pay for lazy
        library set-up (thread pools, kernels, allocator)."""
        self.predict(np.zeros((64, 64), dtype=np.float32))

    def view(self, image: np.ndarray | str | Path | LoadedImage) -> PreprocessResult:
        """The model's view of one image (its preprocessing replayed); a fusion model's view of
        a single image is its main modality's."""
        pre = self.preprocess(image)
        if isinstance(pre, dict):
            return next(p for p in pre.values() if p is not None)
        return pre

    def heatmap(self, pre: PreprocessResult, method: str, target_class: int | None) -> np.ndarray:
        """A heatmap overlay (``uint8 H x W x 3``) over ``pre.display`` for ``target_class``.

        The explanation package is imported here, on first use: a caller whose explanation
        extras are missing gets an ``ImportError`` to report, and predictions never need it.
        Raises :class:`MedlensError` for a model without a single-image heatmap layer.
        """
        info = self.model_info
        if info.inputs != "image" or not info.explainable:
            raise MedlensError(
                f"no heatmap for this model (kind {info.kind}, inputs {info.inputs})"
            )
        import torch

        from medlens.explain import explain, overlay

        x = torch.as_tensor(
            np.ascontiguousarray(pre.image[None]), dtype=torch.float32, device=self.device
        )
        cam = explain(self.model, x, method, target_class)
        return overlay(pre.display, cam, colormap="jet", alpha=0.4)

    def test_figures(self) -> list[tuple[str, str]]:
        """The bundle's held-out test figures (``metrics.json``) as ``(name, "0.912 [0.871–0.948]")``
        rows, named and formatted as the evaluation report does them; [] when it has none."""
        from medlens.evaluate import figures
        from medlens.evaluate.intervals import fmt_ci

        iv = (self.bundle.metrics or {}).get("intervals") or {}
        overall = iv.get("overall") or {}
        return [
            (figures.display_name(f, iv), fmt_ci(overall[f.key]))
            for f in figures.leaderboard()
            if isinstance(overall.get(f.key), dict)
        ]

    def borderline(self, probabilities: dict[str, float], margin: float) -> list[str]:
        """One note per priority class whose probability lies within ``margin`` of a threshold
        that can fire (``[]`` without a decision policy)."""
        if self.policy is None:
            return []
        return [str(n) for n in self.policy.borderline(probabilities, margin)]

    def preprocess(self, image: np.ndarray | str | Path | LoadedImage | Any) -> Any:
        """Read (paths, or anything with a ``load()`` such as a manifest sample) and preprocess.

        A fusion bundle returns ``{modality: PreprocessResult or None}`` (None: not given).
        """
        if self.modalities is not None:
            return self._preprocess_modalities(image)
        return self._preprocess_one(image)

    def _preprocess_one(self, image: Any) -> PreprocessResult:
        if hasattr(image, "load") and not isinstance(image, np.ndarray):
            image = image.load()
        if isinstance(image, str | Path):
            image = read_image(image)
        if isinstance(image, LoadedImage):
            image = image.array
        return self.pipeline(as_float_image(image))

    def _preprocess_modalities(self, item: Any) -> dict[str, PreprocessResult | None]:
        assert self.modalities is not None
        names = list(self.modalities)
        if hasattr(item, "get") and hasattr(item, "path") and not isinstance(item, dict):
            # a manifest sample: the main image plus the other modalities' columns
            given: dict[str, Any] = {names[0]: item.path}
            given.update({m: item.get(self.modalities[m]) for m in names[1:]})
        elif isinstance(item, dict):
            unknown = sorted(set(item) - set(names))
            if unknown:
                raise MedlensError(f"unknown modalities {unknown}; this model takes {names}")
            given = dict(item)
        else:
            given = {names[0]: item}  # a single image is the main modality
        out = {m: None if given.get(m) is None else self._preprocess_one(given[m]) for m in names}
        if all(v is None for v in out.values()):
            raise MedlensError(f"no image given: this model takes one or more of {names}")
        return out

    def _info(self, pre: Any) -> dict[str, Any]:
        if isinstance(pre, dict):
            return {m: p.info for m, p in pre.items() if p is not None}
        return pre.info

    def _stack(self, pres: Sequence[Any]) -> Any:
        """Preprocessed items → a model input batch (with presence masks for fusion)."""
        if not pres or not isinstance(pres[0], dict):
            return np.stack([p.image for p in pres])
        batch: dict[str, np.ndarray | None] = {}
        present: dict[str, np.ndarray] = {}
        for m in pres[0]:
            have = np.array([p[m] is not None for p in pres])
            present[m] = have
            if not have.any():
                batch[m] = None
                continue
            shape = next(p[m].image.shape for p in pres if p[m] is not None)
            batch[m] = np.stack(
                [p[m].image if p[m] is not None else np.zeros(shape, np.float32) for p in pres]
            )
        return batch, present

    def outputs(self, batch: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Primary logits and every other head's raw output for a preprocessed batch."""
        import torch

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=self.device)

        with torch.inference_mode():
            if isinstance(batch, tuple):
                arrays, present = batch
                x = {m: None if a is None else t(a) for m, a in arrays.items()}
                mask = {m: torch.as_tensor(v, device=self.device) for m, v in present.items()}
                out = self.model(x, mask)
            else:
                out = self.model(t(batch))
        if isinstance(out, dict):
            primary = out[self.primary or "class"]
            extras = {
                k: v.float().cpu().numpy().astype(np.float64)
                for k, v in out.items()
                if k != (self.primary or "class")
            }
            return primary.float().cpu().numpy().astype(np.float64), extras
        return out.float().cpu().numpy().astype(np.float64), {}

    def logits_tensor(self, batch: Any) -> np.ndarray:
        """Raw (primary-head) logits for an ``N x C x H x W`` batch of preprocessed arrays."""
        return self.outputs(batch)[0]

    def _head_outputs(self, extras: dict[str, np.ndarray], i: int) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, values in extras.items():
            spec = self.head_specs.get(name, {})
            v = values[i]
            if spec.get("type") == "regression" or np.ndim(v) == 0:
                out[name] = {"value": float(v)}
                continue
            p = softmax(np.asarray(v, dtype=np.float64)[None], 1.0)[0]
            names = spec.get("classes") or [str(j) for j in range(len(p))]
            j = int(np.argmax(p))
            out[name] = {
                "label": names[j],
                "confidence": float(p[j]),
                "probabilities": {n: float(q) for n, q in zip(names, p, strict=True)},
            }
        return out

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities: softmax of logits / the bundle's fitted temperature."""
        return softmax(logits, self.temperature)

    def predict_tensor(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for an ``N x C x H x W`` batch of preprocessed arrays."""
        return self.probabilities(self.logits_tensor(batch))

    def _result(
        self,
        logits: np.ndarray,
        info: dict[str, Any],
        source: str | None,
        heads: dict[str, dict[str, Any]] | None = None,
    ) -> Prediction:
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
            heads=heads or {},
        )
        if isinstance(info, dict) and self.modalities is not None:
            pred.modalities_used = [m for m in self.modalities if m in info]
        if self.policy is not None:
            dec, fired = self.policy.decide(probs[None])
            pred.decision = self.classes[int(dec[0])]
            pred.decision_rule = "policy"
            if fired[0] >= 0:
                pred.decision_threshold = self.policy.thresholds[self.classes[int(fired[0])]]
        return pred

    def predict(self, image: np.ndarray | str | Path | LoadedImage | dict[str, Any]) -> Prediction:
        pre = self.preprocess(image)
        logits, extras = self.outputs(self._stack([pre]))
        src = str(image) if isinstance(image, str | Path) else None
        return self._result(logits[0], self._info(pre), src, self._head_outputs(extras, 0))

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
            pres: list[tuple[int, Any]] = []
            results: list[Prediction | MedlensError | None] = []
            for j, img in enumerate(images[start : start + batch_size]):
                try:
                    pres.append((j, self.preprocess(img)))
                    results.append(None)
                except MedlensError as exc:
                    results.append(exc)
            if pres:
                logits, extras = self.outputs(self._stack([p for _, p in pres]))
                for n, ((j, pre), pr) in enumerate(zip(pres, logits, strict=True)):
                    img = images[start + j]
                    src = str(img) if isinstance(img, str | Path) else None
                    heads = self._head_outputs(extras, n)
                    results[j] = self._result(pr, self._info(pre), src, heads)
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


def load_explanations() -> None:
    """Import the heatmap library now (it takes seconds), e.g. in a start-up thread, so the first
    result page does not wait for it. Raises ``ImportError`` when it cannot be loaded."""
    import medlens.explain.cam  # noqa: F401  (imports pytorch-grad-cam)


def decode_image(path: str | Path) -> LoadedImage:
    """Read an image file with the loader training used (pixels in [0, 1] plus facts).

    Raises :class:`ImageReadError` naming the file and what is wrong with it.
    """
    return read_image(path)


def detect_format(head: bytes, name: str | None = None) -> str | None:
    """The format a file's first bytes announce (``"png"``, ``"jpeg"``, ``"dicom"``, ...), or
    None when no reader recognises them. Content decides; ``name`` only breaks ties."""
    return _detect_format(head, name)


def write_predictions_csv(
    results: Sequence[Prediction | MedlensError],
    sources: Sequence[str | Path],
    classes: Sequence[str],
    path: Path,
) -> None:
    """One row per input, paths in full: the policy's decision first (what the page and the API
    show), the threshold that fired (empty: argmax), the most probable class and its calibrated
    probability, each class's probability, and ``status``/``reason``/``prediction_set`` when
    predictions carry them. An unreadable input keeps its row, with the reason in ``error``."""
    preds = [r for r in results if isinstance(r, Prediction)]
    optional = [a for a in _OPTIONAL_COLUMNS if any(getattr(r, a, None) is not None for r in preds)]

    def cell(v: Any) -> str:
        if v is None:
            return ""
        return " ".join(map(str, v)) if isinstance(v, list | tuple | set | frozenset) else str(v)

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        head = ["path", "decision", "decision_rule", "decision_threshold", "most_probable"]
        tail = ["calibrated", "model", "error"]
        w.writerow([*head, "probability", *[f"p_{c}" for c in classes], *optional, *tail])
        for src, r in zip(sources, results, strict=True):
            if isinstance(r, Prediction):
                thr = r.decision_threshold
                w.writerow(
                    [
                        src,
                        r.decision or r.label,
                        r.decision_rule,
                        "" if thr is None else f"{thr:.6f}",
                        r.label,
                        f"{r.confidence:.6f}",
                        *[f"{r.probabilities[c]:.6f}" for c in classes],
                        *[cell(getattr(r, a, None)) for a in optional],
                        str(r.calibrated).lower(),
                        r.model,
                        "",
                    ]
                )
            else:
                w.writerow([src, *[""] * (7 + len(classes) + len(optional)), str(r)])


# Columns a prediction gains from later features (input gate, conformal sets) when it has them.
_OPTIONAL_COLUMNS = ("status", "reason", "prediction_set")


def _track(items: Iterable, label: str, enabled: bool) -> Iterable:
    if not enabled:
        return items
    from rich.progress import track

    return track(items, description=label, transient=True)
