"""Engines: what runs a bundle's network — eager PyTorch or the bundle's ONNX graph.

Both give the same three things for a preprocessed batch (:meth:`Engine.run`): the primary
logits, the pooled penultimate features (the input of ``model.get_classifier()``, the space the
input gate measures distances in; a model without such a head gives its logits, as
:func:`medlens.evaluate.gate.features_and_logits` does) and every other head's raw output by
name. One rule, :func:`call_with_features`, defines those outputs for both: the ONNX graph is :func:`graph_module`
exported, and the torch engine calls the same hook on the eager model, so switching
engines changes the arithmetic, never the meaning.

Choice (:func:`make_engine`): ``"torch"``; ``"onnx"`` (the FP32 graph, verified at export);
``"onnx-int8"`` (the INT8 graph, accepted at export within its macro-F1 tolerance — never chosen
automatically, since it can change a decision the evaluated model would make); ``"auto"`` = the
FP32 graph when the bundle holds one whose parity check passed and whose hash matches, and
ONNX Runtime is installed; otherwise torch. ``None`` reads ``MEDLENS_ENGINE`` (default
``auto``), so a service started with ``--engine`` passes its choice down without new plumbing.

Threads (defaults): ONNX Runtime gets ``intra_op_num_threads`` = the cores this process may use
(``os.sched_getaffinity``), ``inter_op_num_threads`` = 1 and **no spinning** — idle pool
threads sleep instead of burning the cores that a server's request threads, decoders and
heatmaps need; concurrent ``run`` calls share the one session's pool instead of each bringing
their own. ``MEDLENS_THREADS`` or ``threads=`` overrides the count, and only then is torch's
process-wide pool (``torch.set_num_threads``) set too; otherwise torch keeps its own default
(one thread per core).

The torch model of an ONNX engine (for heatmaps) is built only when first asked for
(:attr:`Engine.model`).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.common import file_sha256
from medlens.errors import MedlensError

if TYPE_CHECKING:
    from medlens.bundle import Bundle

log = logging.getLogger(__name__)

ONNX_FP32 = "model.onnx"
ONNX_INT8 = "model.int8.onnx"
EXPORT_RECORD = "export.json"
ENGINES = ("auto", "onnx", "onnx-int8", "torch")
GRAPH_OF = {"onnx": "fp32", "onnx-int8": "int8"}

Batch = (
    Any  # an N x C x H x W array, or a fusion batch ({modality: array | None}, {modality: mask})
)
Outputs = tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]

__all__ = [
    "ENGINES",
    "EXPORT_RECORD",
    "ONNX_FP32",
    "ONNX_INT8",
    "Engine",
    "OnnxEngine",
    "TorchEngine",
    "call_with_features",
    "default_threads",
    "graph_inputs",
    "graph_module",
    "make_engine",
    "onnx_session",
    "verified_graph",
]


def default_threads() -> int:
    """``MEDLENS_THREADS`` when set, else the cores this process may run on."""
    env = os.environ.get("MEDLENS_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise MedlensError(f"MEDLENS_THREADS={env!r}: give a whole number of threads") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def onnx_session(graph: str | Path | bytes, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with medlens's thread settings (see the module docstring)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MedlensError(
            "the ONNX engine needs ONNX Runtime: pip install 'medlens[onnx]' "
            "(or use --engine torch)"
        ) from None
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or default_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    src = graph if isinstance(graph, bytes) else str(graph)
    return ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------------
# One definition of the outputs, for both engines
# --------------------------------------------------------------------------------------------


def _split_outputs(out: Any, primary: str | None) -> tuple[Any, dict[str, Any]]:
    if isinstance(out, dict):
        key = primary or "class"
        return out[key], {k: v for k, v in out.items() if k != key}
    return out, {}


def call_with_features(model: Any, call: Any, primary: str | None) -> tuple[Any, Any, dict]:
    """``call()`` (a forward of ``model``) → (primary logits, features, other heads), tensors.

    Features are those :func:`medlens.evaluate.gate.capture_features` catches (the one home of
    that rule); without a hookable head they are the logits.
    """
    from medlens.evaluate.gate import capture_features

    with capture_features(model) as grabbed:
        out = call()
    logits, extras = _split_outputs(out, primary)
    feats = grabbed[-1].flatten(1) if grabbed else logits
    return logits, feats, extras


_GRAPH_CLS: Any = None


def graph_module(
    model: Any, primary: str | None, modalities: list[str] | None, extras: list[str]
) -> Any:
    """``model`` as a module of positional tensors returning ``(logits, features, *extras)``.

    Single-image models take ``x``; a fusion model takes one tensor per modality followed by one
    boolean presence mask per modality (a missing modality is zeros with its mask false, which
    the model replaces by its learned placeholder — the same as passing ``None``). The class is
    made on first use so that importing this module does not import torch.
    """
    global _GRAPH_CLS
    if _GRAPH_CLS is None:
        _GRAPH_CLS = _graph_outputs_class()
    return _GRAPH_CLS(model, primary, modalities, extras)


def _graph_outputs_class() -> type:
    import torch

    class _GraphOutputs(torch.nn.Module):
        def __init__(
            self,
            model: Any,
            primary: str | None,
            modalities: list[str] | None,
            extras: list[str],
        ) -> None:
            super().__init__()
            self.model = model
            self.primary = primary
            self.modalities = list(modalities) if modalities else None
            self.extras = list(extras)

        def forward(self, *tensors: Any) -> tuple[Any, ...]:
            if self.modalities:
                n = len(self.modalities)
                x = {m: tensors[i] for i, m in enumerate(self.modalities)}
                mask = {m: tensors[n + i] for i, m in enumerate(self.modalities)}
                call = lambda: self.model(x, mask)  # noqa: E731
            else:
                call = lambda: self.model(tensors[0])  # noqa: E731
            logits, feats, extra = call_with_features(self.model, call, self.primary)
            return (logits, feats, *[extra[k] for k in self.extras])

    return _GraphOutputs


def graph_inputs(batch: Any, modalities: list[str] | None) -> list[np.ndarray]:
    """A Predictor batch as the graph's positional inputs: one array per modality, then one
    boolean presence mask per modality (zeros and False for a modality absent from the batch)."""
    if not modalities:
        return [np.ascontiguousarray(batch, dtype=np.float32)]
    arrays, present = batch
    n = len(next(iter(present.values())))
    shape = next(a.shape[1:] for a in arrays.values() if a is not None)
    images, masks = [], []
    for m in modalities:
        a = arrays.get(m)
        images.append(
            np.zeros((n, *shape), np.float32) if a is None else np.ascontiguousarray(a, np.float32)
        )
        have = present.get(m)
        masks.append(np.zeros(n, bool) if a is None or have is None else np.asarray(have, bool))
    return images + masks


# --------------------------------------------------------------------------------------------
# Engines
# --------------------------------------------------------------------------------------------


class Engine:
    """``run(batch) -> (logits, features, extra heads)`` as float64 numpy arrays."""

    name = "engine"

    def __init__(self, bundle: Bundle, device: str = "cpu") -> None:
        self.bundle = bundle
        self.device = device
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def model(self) -> Any:
        """The eager torch model (built on first use for engines that do not need it)."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self.bundle.build_model().to(self.device)
        return self._model

    @property
    def primary(self) -> str | None:
        raise NotImplementedError

    def run(self, batch: Batch) -> Outputs:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name}


def _np(t: Any) -> np.ndarray:
    return t.detach().float().cpu().numpy().astype(np.float64)


class TorchEngine(Engine):
    """Eager PyTorch: the model the bundle's figures were measured with."""

    name = "torch"

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__(bundle, device)
        if threads is not None or os.environ.get("MEDLENS_THREADS"):
            import torch

            torch.set_num_threads(threads or default_threads())
        _ = self.model  # eager: build now, as the Predictor always did

    @property
    def primary(self) -> str | None:
        return getattr(self.model, "primary", None)

    def run(self, batch: Batch) -> Outputs:
        import torch

        dev = torch.device(self.device)

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=dev)

        model = self.model
        with torch.inference_mode():
            if isinstance(batch, tuple):
                arrays, present = batch
                x = {m: None if a is None else t(a) for m, a in arrays.items()}
                mask = {m: torch.as_tensor(v, device=dev) for m, v in present.items()}
                call = lambda: model(x, mask)  # noqa: E731
            else:
                xb = t(batch)
                call = lambda: model(xb)  # noqa: E731
            logits, feats, extras = call_with_features(model, call, self.primary)
        return _np(logits), _np(feats), {k: _np(v) for k, v in extras.items()}


def export_record(bundle: Bundle) -> dict[str, Any] | None:
    """The bundle's ``export.json`` (verified with the bundle), or None."""
    rec = bundle.read_json(EXPORT_RECORD)
    return rec if isinstance(rec, dict) else None


def verified_graph(bundle: Bundle, which: str = "fp32") -> tuple[Path, dict[str, Any]] | None:
    """``(path, record)`` of the bundle's ``fp32``/``int8`` graph when its check passed at export
    and the file is the one checked (its hash is in the record); otherwise None."""
    rec = export_record(bundle)
    g = ((rec or {}).get("graphs") or {}).get(which)
    if not isinstance(g, dict) or not g.get("passed"):
        return None
    path = bundle.path / str(g.get("file", ""))
    if not path.is_file() or file_sha256(path) != g.get("sha256"):
        return None
    if g.get("weights_sha256") not in (None, file_sha256(bundle.path / "model.safetensors")):
        return None
    return path, {**{k: v for k, v in (rec or {}).items() if k != "graphs"}, **g}


class OnnxEngine(Engine):
    """The bundle's exported graph on ONNX Runtime (CPU)."""

    def __init__(
        self,
        bundle: Bundle,
        which: str = "fp32",
        device: str = "cpu",
        threads: int | None = None,
        graph: tuple[Path, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(bundle, device)
        # ``graph``: (file, record) of a graph being checked by the export, not yet in the bundle
        found = graph or verified_graph(bundle, which)
        if found is None:
            raise MedlensError(
                f"{bundle.path}: no verified {which.upper()} ONNX graph; run `medlens export "
                f"{bundle.path}{' --int8' if which == 'int8' else ''}` (or use --engine torch)"
            )
        path, self.record = found
        self.name = "onnx" if which == "fp32" else "onnx-int8"
        self.graph = path
        self.session = onnx_session(path, threads)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.extras = list(self.record.get("extra_heads") or [])
        self.modalities = self.record.get("modalities")
        self._primary = self.record.get("primary")

    @property
    def primary(self) -> str | None:
        return self._primary

    def _feed(self, batch: Batch) -> dict[str, np.ndarray]:
        return dict(zip(self.inputs, graph_inputs(batch, self.modalities), strict=True))

    def run(self, batch: Batch) -> Outputs:
        outs = self.session.run(None, self._feed(batch))
        f64 = [np.asarray(o, dtype=np.float64) for o in outs]
        return f64[0], f64[1], dict(zip(self.extras, f64[2:], strict=True))

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "graph": self.graph.name}


def make_engine(
    bundle: Bundle, engine: str | None = None, device: str = "cpu", threads: int | None = None
) -> Engine:
    """The engine named (see the module docstring for ``auto``)."""
    choice = (engine or os.environ.get("MEDLENS_ENGINE") or "auto").strip().lower()
    if choice not in ENGINES:
        raise MedlensError(f"engine {choice!r}: choose one of {', '.join(ENGINES)}")
    if choice == "torch":
        return TorchEngine(bundle, device, threads)
    if choice in GRAPH_OF:
        if device != "cpu":
            raise MedlensError(f"the ONNX engine runs on the CPU; use --engine torch for {device}")
        return OnnxEngine(bundle, GRAPH_OF[choice], device, threads)
    # auto
    if device == "cpu" and verified_graph(bundle, "fp32") is not None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            log.debug("ONNX Runtime not installed: the torch engine serves %s", bundle.path)
        else:
            return OnnxEngine(bundle, "fp32", device, threads)
    return TorchEngine(bundle, device, threads)


def set_default_engine(name: str | None) -> None:
    """Make ``name`` the engine of every Predictor this process builds without naming one
    (``MEDLENS_ENGINE``): how ``--engine`` reaches code that loads bundles itself."""
    if name is None:
        return
    choice = name.strip().lower()
    if choice not in ENGINES:
        raise MedlensError(f"--engine {name!r}: choose one of {', '.join(ENGINES)}")
    os.environ["MEDLENS_ENGINE"] = choice
