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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.bundle import DEMO_NOTICE, Bundle, load_bundle
from medlens.common import to_unit_range
from medlens.data.io import (
    UPLOAD_FORMATS,
    ImageFormat,
    LoadedImage,
    decoded_stats,
    is_supported,
    read_image,
)
from medlens.data.io import detect_format as _detect_format
from medlens.errors import ImageReadError, MedlensError
from medlens.evaluate.calibration import softmax
from medlens.evaluate.gate import acquisition_properties, check_gradable
from medlens.evaluate.policy import DecisionPolicy
from medlens.prediction import (
    DISCLAIMER,
    NOT_ASSESSED,
    Prediction,
    write_predictions_csv,
)
from medlens.preprocess import Pipeline, PreprocessResult
from medlens.trust_state import TrustState, load_trust

if TYPE_CHECKING:
    from medlens.models.registry import ModelInfo

__all__ = [
    "DEMO_NOTICE",
    "DISCLAIMER",
    "NOT_ASSESSED",
    "UPLOAD_FORMATS",
    "ImageFormat",
    "ImageReadError",
    "LoadedImage",
    "Prediction",
    "Predictor",
    "TrustState",
    "as_float_image",
    "decode_image",
    "detect_format",
    "load_explanations",
    "write_predictions_csv",
]


@dataclass
class _Item:
    """One input on its way through :meth:`Predictor._run`: the model's view (None when the
    image is ungradable) and what the input gate needs of the decoded (main) image."""

    pre: Any
    unit: np.ndarray | None  # the loader's [0, 1] array of the (main) image
    reason: str | None = None  # why it cannot be graded


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

    def __init__(
        self,
        bundle: Bundle,
        device: str = "cpu",
        engine: str | None = None,
        threads: int | None = None,
    ) -> None:
        import torch

        from medlens.engines import make_engine

        self.bundle = bundle
        self.device = torch.device(device)
        # Eager torch or the bundle's verified ONNX graph ("auto" by default, see
        # medlens.engines); under ONNX the torch model is built only when a heatmap needs it.
        self.engine = make_engine(bundle, engine, device, threads)
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
        self.primary = self.engine.primary
        # Input gate, conformal sets and heatmap evidence (absent in bundles made before them).
        self.trust: TrustState = load_trust(bundle)
        self.gate = self.trust.gate
        self.sets = self.trust.sets

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        device: str = "cpu",
        engine: str | None = None,
        threads: int | None = None,
    ) -> Predictor:
        return cls(load_bundle(path), device, engine, threads)

    @property
    def model(self) -> Any:
        """The eager torch model (heatmaps, members); built on first use under ONNX."""
        return self.engine.model

    @property
    def model_name(self) -> str:
        return f"{self.bundle.name} ({self.bundle.meta['model']['name']})"

    @property
    def model_info(self) -> ModelInfo:
        """The registry entry of the served model: its kind (network, ensemble, fusion...),
        inputs and whether a heatmap layer exists - asked, never guessed from the name."""
        from medlens.models.registry import model_info

        if self.engine.name != "torch":  # no need to build the torch model to know its kind
            return model_info(str(self.bundle.meta["model"]["name"]), strict=False)
        return model_info(self.model)

    def warm_up(self) -> None:
        """One prediction on a textured image, so the first real request does not pay for lazy
        library set-up (thread pools, kernels, allocator). Not a blank image: the input check
        would refuse it before the network ran."""
        self.predict(np.random.default_rng(0).random((64, 64)).astype(np.float32))

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

    def modality_heatmaps(
        self,
        pre: dict[str, PreprocessResult | None],
        method: str,
        target_class: int | None,
        maps: bool = True,
    ) -> dict[str, Any]:
        """A fusion model's heatmap per modality for the *fused* decision, and each modality's
        contribution (the drop in ``target_class``'s calibrated probability when it is withheld).

        ``pre``: :meth:`preprocess` of a fusion input. Returns ``{"target_class", "probability",
        "method", "modalities": {m: {"given", "overlay" (uint8 H x W x 3 or None), "cam" (the map,
        H x W in [0, 1], or None), "contribution", "probability_without", "layer", "note"}}}`` (see
        :mod:`medlens.explain.modalities`). ``maps=False``: the contributions only (forward
        passes, no CAM), e.g. when the overlays are already cached.
        """
        info = self.model_info
        if info.cam != "modalities" or not isinstance(pre, dict):
            raise MedlensError(f"no per-modality heatmaps for this model (kind {info.kind})")
        import torch

        from medlens.explain import overlay
        from medlens.explain.modalities import explain_modalities

        inputs = {
            m: None
            if p is None
            else torch.as_tensor(np.ascontiguousarray(p.image[None]), device=self.device)
            for m, p in pre.items()
        }
        res = explain_modalities(
            self.model, inputs, method, target_class, temperature=self.temperature, maps=maps
        )
        mods: dict[str, dict[str, Any]] = {}
        for m, e in res.modalities.items():
            p = pre.get(m)
            shown = None
            if e.cam is not None and p is not None:
                shown = overlay(p.display, e.cam, colormap="jet", alpha=0.4)
            mods[m] = {**e.summary(), "overlay": shown, "cam": e.cam}
        return {
            "target_class": res.target_class,
            "probability": res.probability,
            "method": res.method,
            "modalities": mods,
        }

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
        return self.pipeline(self.load(image).array)

    @staticmethod
    def load(image: Any) -> LoadedImage:
        """Any accepted input as a :class:`LoadedImage` whose ``decoded`` figures describe the
        pixels as given (an array's own values, before [0, 1] scaling hides NaN or flatness)."""
        if hasattr(image, "load") and not isinstance(image, np.ndarray):
            image = image.load()
        if isinstance(image, str | Path):
            image = read_image(image)
        if isinstance(image, LoadedImage):
            return image
        raw = np.asarray(image)
        if raw.ndim == 3 and raw.shape[2] == 4:
            raw = raw[:, :, :3]
        finite = raw if raw.dtype.kind != "f" else np.where(np.isfinite(raw), raw, 0)
        unit = as_float_image(finite)  # non-finite values: recorded in decoded, refused there
        safe = np.nan_to_num(unit, nan=0.0, posinf=1.0, neginf=0.0)
        return LoadedImage(
            safe, "array", str(raw.dtype), raw.dtype.itemsize * 8, {}, decoded_stats(raw)
        )

    def _prepare(self, image: Any) -> _Item:
        """Load, check gradability on the decoded data (before normalisation), preprocess."""
        if self.modalities is not None:
            return self._prepare_modalities(image)
        loaded = self.load(image)
        why = check_gradable(loaded.decoded, self.min_size, unit_array=loaded.array)
        if why:
            return _Item(None, loaded.array, why)
        return _Item(self.pipeline(loaded.array), loaded.array)

    def _prepare_modalities(self, item: Any) -> _Item:
        """A fusion input: the main modality (when given) is checked and gated."""
        assert self.modalities is not None
        main = next(iter(self.modalities))
        given = self._given(item)
        unit = None
        if given.get(main) is not None:
            loaded = self.load(given[main])
            why = check_gradable(loaded.decoded, self.min_size, unit_array=loaded.array)
            if why:
                return _Item(None, loaded.array, why)
            given[main], unit = loaded, loaded.array
        return _Item(self._preprocess_modalities(given), unit)

    @property
    def min_size(self) -> int:
        """Smallest side an image may have (the gate's, else the lenient default of 16)."""
        return self.gate.min_size if self.gate is not None else 16

    def _given(self, item: Any) -> dict[str, Any]:
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
        return given

    def _preprocess_modalities(self, item: Any) -> dict[str, PreprocessResult | None]:
        assert self.modalities is not None
        names = list(self.modalities)
        given = self._given(item)
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
        logits, _, extras = self.engine.run(batch)
        return logits, extras

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

    def forward(self, batch: Any) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """One forward pass: primary logits, the other heads' outputs and the features the input
        gate scores (pooled penultimate features; the logits for a model without a hookable
        classifier, e.g. classical models and ensembles)."""
        logits, feats, extras = self.engine.run(batch)  # torch or ONNX (medlens.engines)
        return logits, extras, feats

    def _run(self, items: Sequence[_Item]) -> list[dict[str, Any]]:
        """The forward pass over the gradable items of one batch; per item its logits, head
        outputs, features and acquisition properties ({} for an ungradable item)."""
        live = [j for j, it in enumerate(items) if it.pre is not None]
        out: list[dict[str, Any]] = [{} for _ in items]
        if not live:
            return out
        logits, extras, feats = self.forward(self._stack([items[j].pre for j in live]))
        for n, j in enumerate(live):
            pre = items[j].pre
            view = pre.get(next(iter(pre))) if isinstance(pre, dict) else pre
            acq = None
            if view is not None and items[j].unit is not None:
                acq = acquisition_properties(view.image, items[j].unit)
            out[j] = {
                "logits": logits[n],
                "heads": self._head_outputs(extras, n),
                "features": feats[n],
                "acquisition": acq,
            }
        return out

    def _result(self, item: _Item, run: dict[str, Any], source: str | None) -> Prediction:
        """The prediction of one item: not assessed when ungradable or out of distribution."""
        base = {"model": self.model_name, "bundle_sha256": self._sha, "source": source}
        if item.reason is not None:  # ungradable: the network was not run
            return Prediction(
                "", -1, {}, **base, status="ungradable", reason=item.reason,
                decision_rule=NOT_ASSESSED, calibrated=self.temperature != 1.0,
            )  # fmt: skip
        logits = run["logits"]
        info = self._info(item.pre)
        probs = self.probabilities(logits[None])[0]
        i = int(np.argmax(probs))
        probabilities = {c: float(p) for c, p in zip(self.classes, probs, strict=True)}
        pred = Prediction(
            label=self.classes[i],
            index=i,
            probabilities=probabilities,
            preprocess_info=info,
            logits=[float(v) for v in logits],
            calibrated=self.temperature != 1.0,
            heads=run["heads"],
            **base,
        )
        if isinstance(info, dict) and self.modalities is not None:
            pred.modalities_used = [m for m in self.modalities if m in info]
        if self.gate is not None and run["acquisition"] is not None:
            verdict = self.gate.assess(None, run["features"], run["acquisition"])
            pred.gate = {
                "score": verdict.score,
                "threshold": verdict.threshold,
                "details": verdict.details,
            }
            if not verdict.assessed:
                pred.status, pred.reason = verdict.status, verdict.reason
                pred.details = {
                    "most_probable": pred.label,
                    "probabilities": probabilities,
                    "heads": pred.heads,
                }
                pred.label, pred.index, pred.probabilities = "", -1, {}
                pred.heads, pred.decision_rule = {}, NOT_ASSESSED
                return pred
        if self.sets is not None:
            members = self.sets.predict_sets(probs[None])[0]
            pred.prediction_set = [self.classes[k] for k in sorted(members)]
            pred.uncertain = len(members) != 1
        if self.policy is not None:
            dec, fired = self.policy.decide(probs[None])
            pred.decision = self.classes[int(dec[0])]
            pred.decision_rule = "policy"
            if fired[0] >= 0:
                pred.decision_threshold = self.policy.thresholds[self.classes[int(fired[0])]]
        return pred

    def predict(self, image: np.ndarray | str | Path | LoadedImage | dict[str, Any]) -> Prediction:
        """One image: input check, the bundle's preprocessing, one forward pass, gate, sets,
        policy. Raises :class:`MedlensError` when the input cannot be read at all."""
        item = self._prepare(image)
        src = str(image) if isinstance(image, str | Path) else None
        return self._result(item, self._run([item])[0], src)

    def predict_many(
        self,
        images: Sequence[Any],
        batch_size: int = 32,
        progress: bool = False,
    ) -> list[Prediction | MedlensError]:
        """Predict in batches, exactly as :meth:`predict` does one image; an unreadable input
        yields its error in place of a result."""
        return [r for r, _ in self._predict_batches(images, batch_size, progress)]

    def prepare(self, image: Any) -> _Item | MedlensError:
        """Decode, check gradability and preprocess one input: the part of a prediction that
        needs no model, safe to run in worker threads so batch prediction can overlap it with
        inference (:func:`medlens.batch_predict.predict_files`). An unreadable input gives its
        error."""
        try:
            return self._prepare(image)
        except MedlensError as exc:
            return exc

    def predict_prepared(
        self, items: Sequence[_Item | MedlensError], sources: Sequence[str | None]
    ) -> list[tuple[Prediction | MedlensError, dict[str, Any]]]:
        """One forward pass over prepared inputs, then gate, sets and policy per input, exactly
        as :meth:`predict`; returns ``(result, raw outputs)`` pairs in input order."""
        ok = [it for it in items if isinstance(it, _Item)]
        runs = iter(self._run(ok))
        out: list[tuple[Prediction | MedlensError, dict[str, Any]]] = []
        for it, src in zip(items, sources, strict=True):
            if isinstance(it, MedlensError):
                out.append((it, {}))
                continue
            run = next(runs)
            out.append((self._result(it, run, src), run))
        return out

    def _predict_batches(
        self, images: Sequence[Any], batch_size: int, progress: bool
    ) -> list[tuple[Prediction | MedlensError, dict[str, Any]]]:
        out: list[tuple[Prediction | MedlensError, dict[str, Any]]] = []
        for start in _track(range(0, len(images), batch_size), "Predicting", progress):
            chunk = images[start : start + batch_size]
            sources = [str(img) if isinstance(img, str | Path) else None for img in chunk]
            out += self.predict_prepared([self.prepare(img) for img in chunk], sources)
        return out

    def embed(
        self, images: Sequence[Any], batch_size: int = 32, progress: bool = False
    ) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
        """What the input gate is fitted on, through the very path :meth:`predict_many` takes:
        ``(indices of the gradable, readable inputs, features, logits, acquisition properties)``.
        """
        keep, feats, logits, acq = [], [], [], []
        for i, (r, run) in enumerate(self._predict_batches(images, batch_size, progress)):
            if isinstance(r, Prediction) and run and run["acquisition"] is not None:
                keep.append(i)
                feats.append(run["features"])
                logits.append(run["logits"])
                acq.append(run["acquisition"])
        if not keep:
            return [], np.zeros((0, 0)), np.zeros((0, len(self.classes))), np.zeros((0, 0))
        return keep, np.stack(feats), np.stack(logits), np.stack(acq)

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


def _track(items: Iterable, label: str, enabled: bool) -> Iterable:
    if not enabled:
        return items
    from rich.progress import track

    return track(items, description=label, transient=True)
