"""A bundle's network → one ONNX graph with a dynamic batch axis, and its parity check.

The graph is :func:`medlens.engines.graph_module` traced by ``torch.onnx.export`` (the
TorchScript exporter, ``dynamo=False``: it needs no ``onnxscript`` and traces every family the
registry marks exportable; the example batch holds two images because some timm models
specialise on a batch of one). Outputs: ``logits`` (primary head), ``features`` (pooled
penultimate features), then ``head_<name>`` for every other head; inputs: ``image``, or for a
fusion model ``image_<modality>`` for each modality followed by ``present_<modality>`` masks.

Parity (:func:`compare_engines`) runs the eager model and the graph on the same preprocessed
batches — the first image alone, then batches of 32, so the dynamic axis is exercised — and
measures calibrated probabilities (the bundle's temperature applied), argmax, features and the
other heads.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import MedlensError

OPSET = 17


def preprocessed_batches(
    predictor: Any, samples: list[Any], batch_size: int = 32, first_alone: bool = True
) -> Iterator[tuple[Any, list[int]]]:
    """``(model input batch, sample indices)`` over the readable samples, in order."""
    start = 0
    sizes_first = 1 if first_alone else batch_size
    size = sizes_first
    while start < len(samples):
        pres, idx = [], []
        for j, s in enumerate(samples[start : start + size]):
            try:
                pres.append(predictor.preprocess(s))
            except MedlensError:
                continue
            idx.append(start + j)
        if pres:
            yield predictor._stack(pres), idx
        start += size
        size = batch_size


def graph_names(modalities: list[str] | None, extras: list[str]) -> tuple[list[str], list[str]]:
    """Input and output names of the graph."""
    if modalities:
        inputs = [f"image_{m}" for m in modalities] + [f"present_{m}" for m in modalities]
    else:
        inputs = ["image"]
    return inputs, ["logits", "features", *[f"head_{k}" for k in extras]]


def export_graph(
    model: Any,
    example: Any,
    path: Path,
    primary: str | None,
    modalities: list[str] | None,
    extras: list[str],
) -> tuple[list[str], list[str]]:
    """Trace ``model`` on ``example`` (a Predictor batch of >= 2 images) into ``path``."""
    import torch

    from medlens.engines import graph_inputs, graph_module

    gm = graph_module(model, primary, modalities, extras).eval()
    inputs, outputs = graph_names(modalities, extras)
    args = tuple(torch.from_numpy(a) for a in graph_inputs(example, modalities))
    axes = {n: {0: "batch"} for n in (*inputs, *outputs)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter and the exporter's deprecation notice
        try:
            with torch.inference_mode(False), torch.no_grad():
                torch.onnx.export(
                    gm,
                    args,
                    str(path),
                    dynamo=False,
                    opset_version=OPSET,
                    input_names=inputs,
                    output_names=outputs,
                    dynamic_axes=axes,
                    do_constant_folding=True,
                )
        except Exception as exc:  # the tracer's errors are many and not a user's mistake
            raise MedlensError(
                f"the network could not be exported to ONNX: {type(exc).__name__}: {str(exc)[:300]}"
            ) from None
    return inputs, outputs


@dataclass
class Parity:
    """How far a graph's answers are from the eager model's on the same images."""

    n_images: int = 0
    max_prob_diff: float = 0.0
    argmax_disagreements: int = 0
    max_feature_diff: float = 0.0  # absolute
    feature_scale: float = 0.0  # largest |feature| of the eager model, for scale
    max_head_diff: dict[str, float] = field(default_factory=dict)
    batch_sizes: list[int] = field(default_factory=list)
    y: list[int] = field(default_factory=list)  # labels (-1: none) of the images compared
    ref_pred: list[int] = field(default_factory=list)  # eager argmax
    graph_pred: list[int] = field(default_factory=list)

    def summary(self, tolerance: float) -> dict[str, Any]:
        return {
            "n_images": self.n_images,
            "batch_sizes": sorted(set(self.batch_sizes)),
            "max_probability_difference": self.max_prob_diff,
            "tolerance": tolerance,
            "argmax_disagreements": self.argmax_disagreements,
            "max_feature_difference": self.max_feature_diff,
            "feature_scale": self.feature_scale,
            "max_other_head_difference": self.max_head_diff,
        }


def _probs(predictor: Any, logits: np.ndarray) -> np.ndarray:
    return predictor.probabilities(logits)


def compare_engines(
    predictor: Any, reference: Any, graph: Any, samples: list[Any], batch_size: int = 32
) -> Parity:
    """Run both engines on every readable sample; see :class:`Parity`."""
    from medlens.evaluate.calibration import softmax

    idx = {c: i for i, c in enumerate(predictor.classes)}
    par = Parity()
    for batch, which in preprocessed_batches(predictor, samples, batch_size):
        lr, fr, er = reference.run(batch)
        lg, fg, eg = graph.run(batch)
        pr, pg = _probs(predictor, lr), _probs(predictor, lg)
        par.n_images += len(which)
        par.batch_sizes.append(len(which))
        par.max_prob_diff = max(par.max_prob_diff, float(np.abs(pr - pg).max()))
        a_r, a_g = pr.argmax(1), pg.argmax(1)
        par.argmax_disagreements += int((a_r != a_g).sum())
        par.ref_pred += a_r.tolist()
        par.graph_pred += a_g.tolist()
        par.y += [idx.get(getattr(samples[i], "label", None) or "", -1) for i in which]
        par.max_feature_diff = max(par.max_feature_diff, float(np.abs(fr - fg).max()))
        par.feature_scale = max(par.feature_scale, float(np.abs(fr).max()))
        for k, v in er.items():
            w = eg[k]
            if v.ndim == 2:  # a classification head: compare its probabilities
                v, w = softmax(v, 1.0), softmax(w, 1.0)
            d = float(np.abs(v - w).max()) if v.size else 0.0
            par.max_head_diff[k] = max(par.max_head_diff.get(k, 0.0), d)
    if not par.n_images:
        raise MedlensError("none of the check images could be read; the export was not checked")
    for k, v in par.max_head_diff.items():
        par.max_head_diff[k] = v if math.isfinite(v) else float("inf")
    return par
