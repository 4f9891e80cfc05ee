"""Scale-out batch inference: ``medlens predict --engine ray`` on Ray Data.

The same predictor as the plain path (:mod:`medlens.batch_predict`), run as a Ray Data
``map_batches`` actor: :class:`BundleActor` loads the bundle once in ``__init__`` (verifying its
SHA-256, choosing its engine — the verified ONNX graph under ``auto`` — with one thread per actor)
and predicts each batch, a dict of arrays ``{"index", "path"}``, through
:meth:`medlens.inference.Predictor.predict_many`: decode, input check, the bundle's
preprocessing, calibration, gate, sets and policy, exactly as one machine does. The driver writes
the CSV with the one CSV writer, batch by batch in input order, and resumes like the plain path.

Where it runs: a local Ray started for the run (``workers`` actors, one CPU each) by default, or
an existing cluster with ``address`` (``ray://head:10001`` or ``auto``). On a cluster every node
needs medlens installed (``pip install 'medlens[onnx,ray]'``) and the bundle and images at the
same paths (shared storage); the actors read files themselves, only paths travel.

Ray is an optional extra (``pip install 'medlens[ray]'``), imported only here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import MedlensError

log = logging.getLogger(__name__)

__all__ = ["BundleActor", "manifest_paths", "predict_files_ray"]


class BundleActor:
    """A Ray Data callable class: the Predictor loaded once per actor, a batch per call."""

    def __init__(self, bundle: str, engine: str | None = None, threads: int = 1) -> None:
        from medlens.inference import Predictor

        self.predictor = Predictor.from_bundle(bundle, engine=engine, threads=threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from medlens.data.io import read_image

        decoded: list[Any] = []
        for p in batch["path"]:
            try:
                decoded.append(read_image(str(p)))
            except MedlensError as exc:
                decoded.append(exc)
        readable = [d for d in decoded if not isinstance(d, MedlensError)]
        preds = iter(self.predictor.predict_many(readable, batch_size=max(1, len(readable))))
        results: list[Any] = []
        for p, d in zip(batch["path"], decoded, strict=True):
            r = d if isinstance(d, MedlensError) else next(preds)
            if isinstance(r, MedlensError):
                results.append(str(r))  # exceptions do not always unpickle: their message does
            else:
                r.source = str(p)
                results.append(r)
        out = np.empty(len(results), dtype=object)
        out[:] = results
        return {"index": np.asarray(batch["index"]), "result": out}


def manifest_paths(files: Sequence[Path]) -> list[Path]:
    """Files as given, with every ``.csv`` replaced by the image paths of that manifest."""
    from medlens.data.manifest import from_csv

    out: list[Path] = []
    for f in files:
        if f.suffix.lower() == ".csv" and f.is_file():
            out += [Path(s.path) for s in from_csv(f).samples]
        else:
            out.append(f)
    return out


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise MedlensError(
            "--engine ray needs Ray Data: pip install 'medlens[ray]' (or \"ray[data]>=2.9\")"
        ) from None
    return ray


def predict_files_ray(
    predictor: Any,
    files: Sequence[Path],
    out: Path | None = None,
    *,
    batch_size: int = 32,
    workers: int = 2,
    resume: bool = True,
    address: str | None = None,
    engine: str | None = None,
    progress: bool = False,
) -> tuple[list[Path], list[Any]]:
    """Predict ``files`` on Ray; returns ``(files predicted now, their results)`` in order.

    ``predictor`` is the driver's Predictor of the same bundle (its classes name the CSV
    columns; it is not shipped). ``engine`` is the actors' engine (default: ``auto``).
    """
    from medlens.batch_predict import _rows, already_done

    ray = _ray()
    todo = manifest_paths(list(files))
    n_given = len(todo)
    if out is not None and out.is_file() and resume:
        done = already_done(out, predictor.classes)
        todo = [f for f in todo if str(f) not in done]
        if len(todo) < n_given:
            log.info("resuming: %d of %d files already in %s", n_given - len(todo), n_given, out)
    elif out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(_rows([], [], predictor.classes)[0], encoding="utf-8")
    if not todo:
        return [], []

    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.WARNING,
        }
        if address:
            kwargs["address"] = address
        else:
            kwargs["num_cpus"] = max(1, workers)
        ray.init(**kwargs)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # rows come back in input order
        ctx.enable_progress_bars = bool(progress)
        items = [{"index": i, "path": str(f)} for i, f in enumerate(todo)]
        blocks = max(1, min(len(items), 4 * workers))
        try:
            ds = ray.data.from_items(items, override_num_blocks=blocks)
        except TypeError:  # Ray < 2.10 calls it parallelism
            ds = ray.data.from_items(items, parallelism=blocks)
        ds = ds.map_batches(
            BundleActor,
            fn_constructor_kwargs={"bundle": str(predictor.bundle.path), "engine": engine},
            batch_size=max(1, batch_size),
            batch_format="numpy",
            concurrency=max(1, workers),
            num_cpus=1,
        )
        results: list[Any] = [None] * len(todo)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            idx = [int(i) for i in batch["index"]]
            got = [r if not isinstance(r, str) else MedlensError(r) for r in batch["result"]]
            for i, r in zip(idx, got, strict=True):
                results[i] = r
            if out is not None:
                lines = _rows(got, [str(todo[i]) for i in idx], predictor.classes)[1:]
                with out.open("a", encoding="utf-8", newline="") as fh:
                    fh.writelines(lines)
                    fh.flush()
    finally:
        if started:
            ray.shutdown()
    missing = [str(todo[i]) for i, r in enumerate(results) if r is None]
    if missing:
        raise MedlensError(f"Ray returned no result for {len(missing)} file(s), e.g. {missing[0]}")
    return list(todo), results
