"""Export a bundle's network to ONNX, checked against the eager model before it is trusted.

``medlens export BUNDLE [--int8]`` (and ``medlens train`` by default, FP32 only) adds to the
bundle, under its checksums:

- ``model.onnx``: the FP32 graph (dynamic batch axis; outputs logits, features, other heads —
  see :mod:`medlens.export.graph`). Accepted only when, on every validation image, the calibrated
  probabilities differ from the eager model's by at most ``tolerance`` (1e-4) and the argmax is
  the same; otherwise nothing is added and the export is refused.
- ``model.int8.onnx`` (``--int8``): static INT8 quantization calibrated on validation images
  (:mod:`medlens.export.quantize`). Accepted only when the validation macro-F1 drops by at most
  ``max_f1_drop`` points (1.0) from the eager model's; a refusal is recorded (with the figures)
  and the graph is not added.
- ``export.json``: what was checked, on which images, the figures, the graph hashes and the
  weights' hash — the engines (:mod:`medlens.engines`) use a graph only when this record says it
  passed and the hashes match. A model that cannot be exported (a classical HOG model; a failed
  check at training time) gets a record saying why.

Which images: :mod:`medlens.export.data` (the run's validation split by default).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from medlens.common import file_sha256, json_safe
from medlens.engines import EXPORT_RECORD, ONNX_FP32, ONNX_INT8, OnnxEngine, graph_inputs
from medlens.errors import MedlensError
from medlens.export.data import CheckImages, validation_images
from medlens.export.graph import OPSET, Parity, compare_engines, export_graph

log = logging.getLogger(__name__)

TOLERANCE = 1e-4
MAX_F1_DROP = 1.0  # points of macro-F1 (0-100 scale)

__all__ = [
    "MAX_F1_DROP",
    "TOLERANCE",
    "CheckImages",
    "ExportRefused",
    "NotExportable",
    "export_after_training",
    "export_bundle",
    "validation_images",
]


class NotExportable(MedlensError):
    """The model has no network graph to export (its registry entry says so)."""


class ExportRefused(MedlensError):
    """A graph was made but failed its check; nothing unchecked was added to the bundle."""


def _macro_f1(y: list[int], pred: list[int], k: int) -> float | None:
    from sklearn.metrics import f1_score

    keep = [i for i, v in enumerate(y) if v >= 0]
    if not keep:
        return None
    yy = [y[i] for i in keep]
    pp = [pred[i] for i in keep]
    return float(f1_score(yy, pp, labels=list(range(k)), average="macro", zero_division=0))


def _example(predictor: Any, samples: list[Any]) -> Any:
    """Two preprocessed images (one repeated when there is only one) to trace the export on."""
    pres = []
    for s in samples:
        try:
            pres.append(predictor.preprocess(s))
        except MedlensError:
            continue
        if len(pres) == 2:
            break
    if not pres:
        raise MedlensError("none of the check images could be read; nothing to export with")
    return predictor._stack(pres if len(pres) == 2 else pres * 2)


def _calibration_feeds(
    predictor: Any, samples: list[Any], modalities: list[str] | None, inputs: list[str], n: int
) -> list[dict[str, np.ndarray]]:
    from medlens.export.graph import preprocessed_batches

    return [
        dict(zip(inputs, graph_inputs(batch, modalities), strict=True))
        for batch, _ in preprocessed_batches(predictor, samples[:n], 16, first_alone=False)
    ]


def _existing(bundle_path: Path) -> dict[str, Any]:
    f = bundle_path / EXPORT_RECORD
    try:
        rec = json.loads(f.read_text()) if f.is_file() else {}
    except (OSError, json.JSONDecodeError):
        rec = {}
    return rec if isinstance(rec, dict) else {}


def _seal(bundle_path: Path, files: dict[str, Path], record: dict[str, Any]) -> None:
    """Graphs first, the record last: a graph without its record is never used."""
    from medlens.bundle import add_file

    for name, src in files.items():
        add_file(bundle_path, name, src.read_bytes())
    add_file(bundle_path, EXPORT_RECORD, json.dumps(json_safe(record), indent=2))


def export_bundle(
    bundle_path: str | Path,
    *,
    int8: bool = False,
    data: str | Path | None = None,
    images: CheckImages | None = None,
    tolerance: float = TOLERANCE,
    max_f1_drop: float = MAX_F1_DROP,
    batch_size: int = 32,
    threads: int | None = None,
) -> dict[str, Any]:
    """Export, check and add the graph(s) to the bundle; returns the ``export.json`` record.

    ``images`` (the check images) default to :func:`validation_images` (``data`` overrides where
    they are read from). Raises :class:`NotExportable`, :class:`ExportRefused` (FP32 parity, or
    INT8 beyond ``max_f1_drop`` — then the FP32 graph and the refusal are recorded first) or
    another :class:`MedlensError` for unusable inputs.
    """
    import onnxruntime as ort
    import torch

    from medlens.bundle import load_bundle
    from medlens.inference import Predictor
    from medlens.models.registry import model_info

    path = Path(bundle_path)
    bundle = load_bundle(path)
    name = str(bundle.meta["model"]["name"])
    info = model_info(name, strict=False)
    if not info.exportable:
        raise NotExportable(
            f"{path}: model {name!r} (kind {info.kind}) has no network graph to export to ONNX; "
            "it is served by its own engine"
        )
    imgs = images or validation_images(bundle, data)
    predictor = Predictor(bundle, engine="torch")
    ref = predictor.engine
    modalities = list(predictor.modalities) if predictor.modalities else None
    example = _example(predictor, imgs.samples)
    _, _, probe = ref.run(example)
    extras = list(probe)
    weights = file_sha256(path / "model.safetensors")
    record: dict[str, Any] = {
        "format": "onnx",
        "opset": OPSET,
        "exporter": f"torch.onnx TorchScript exporter (torch {torch.__version__})",
        "onnxruntime": ort.__version__,
        "primary": ref.primary,
        "extra_heads": extras,
        "modalities": modalities,
        "check_images": imgs.source,
        "graphs": dict(_existing(path).get("graphs") or {}),
    }
    record.pop("not_exported", None)
    with tempfile.TemporaryDirectory(prefix="medlens-export-") as tmp:
        fp32 = Path(tmp) / ONNX_FP32
        log.info("exporting %s to ONNX", name)
        inputs, outputs = export_graph(
            predictor.model, example, fp32, ref.primary, modalities, extras
        )
        record.update(inputs=inputs, outputs=outputs)
        entry = {"file": ONNX_FP32, "sha256": file_sha256(fp32), "weights_sha256": weights}
        graph = OnnxEngine(bundle, graph=(fp32, {**record, **entry}), threads=threads)
        log.info("checking the graph against the eager model on %d images", len(imgs.samples))
        par = compare_engines(predictor, ref, graph, imgs.samples, batch_size)
        passed = par.max_prob_diff <= tolerance and par.argmax_disagreements == 0
        entry.update(passed=passed, parity=par.summary(tolerance))
        if not passed:
            raise ExportRefused(
                f"{path}: the ONNX graph does not reproduce the model on {par.n_images} "
                f"validation images (largest probability difference {par.max_prob_diff:.2e}, "
                f"tolerance {tolerance:.0e}; {par.argmax_disagreements} different argmax); "
                "nothing was added"
            )
        record["graphs"]["fp32"] = entry
        files = {ONNX_FP32: fp32}
        refused = None
        if int8:
            refused = _int8(
                predictor, par, imgs, fp32, Path(tmp), record, weights, max_f1_drop, threads
            )
            if refused is None:
                files[ONNX_INT8] = Path(tmp) / ONNX_INT8
        _seal(path, files, record)
    if refused:
        raise ExportRefused(refused)
    return record


def _int8(
    predictor: Any,
    fp32_parity: Parity,
    imgs: CheckImages,
    fp32: Path,
    tmp: Path,
    record: dict[str, Any],
    weights: str,
    max_f1_drop: float,
    threads: int | None,
) -> str | None:
    """Quantize, measure, record; the refusal message, or None when accepted."""
    from medlens.export.quantize import CALIBRATION_IMAGES, quantize_graph

    k = len(predictor.classes)
    f1_ref = _macro_f1(fp32_parity.y, fp32_parity.ref_pred, k)
    if f1_ref is None:
        raise MedlensError("INT8 needs labelled validation images to measure its macro-F1")
    modalities = record["modalities"]
    feeds = _calibration_feeds(
        predictor, imgs.samples, modalities, record["inputs"], CALIBRATION_IMAGES
    )
    out = tmp / ONNX_INT8
    settings = quantize_graph(fp32, out, feeds)
    log.info("quantized to INT8 (calibrated on %d images)", settings["calibration_images"])
    entry: dict[str, Any] = {"file": ONNX_INT8, "sha256": file_sha256(out)}
    entry["weights_sha256"] = weights
    q = OnnxEngine(predictor.bundle, graph=(out, {**record, **entry}), threads=threads)
    par = compare_engines(predictor, predictor.engine, q, imgs.samples)
    f1_q = _macro_f1(par.y, par.graph_pred, k) or 0.0
    drop = 100.0 * (f1_ref - f1_q)
    passed = drop <= max_f1_drop
    entry.update(
        passed=passed,
        quantization=settings,
        macro_f1_fp32=f1_ref,
        macro_f1_int8=f1_q,
        macro_f1_drop_points=drop,
        max_f1_drop_points=max_f1_drop,
        n_images=par.n_images,
        decisions_changed=par.argmax_disagreements,
        max_probability_difference=par.max_prob_diff,
    )
    if not passed:
        entry.pop("file")
        entry.pop("sha256")
        entry["reason"] = (
            f"INT8 macro-F1 {f1_q:.4f} vs FP32 {f1_ref:.4f} on {par.n_images} validation "
            f"images: a drop of {drop:.2f} points, more than the {max_f1_drop:g} allowed"
        )
    record["graphs"]["int8"] = entry
    return None if passed else f"INT8 export refused: {entry['reason']} (the FP32 graph was added)"


def export_after_training(bundle_path: str | Path, images: CheckImages) -> dict[str, Any]:
    """The FP32 export ``medlens train`` makes: never fails the run; a model that cannot be
    exported, or a graph that fails its check, leaves a record saying why."""
    path = Path(bundle_path)
    try:
        return export_bundle(path, images=images)
    except ImportError as exc:
        why = f"ONNX export needs its extras: pip install 'medlens[onnx]' ({exc.name})"
    except MedlensError as exc:
        why = str(exc)
    log.warning("no ONNX graph: %s", why)
    record = {"format": "onnx", "graphs": {}, "not_exported": why}
    from medlens.bundle import add_file

    add_file(path, EXPORT_RECORD, json.dumps(record, indent=2))
    return record
