"""Predict a folder's worth of images: decode in a worker pool while the network runs, write
the CSV as it goes, resume an interrupted run.

- **Overlap.** ``workers`` threads decode, check and preprocess files
  (:meth:`Predictor.prepare`: the decoders and OpenCV release the GIL) at most ``prefetch``
  batches ahead of the engine; the forward pass, gate, sets and policy run batch by batch in the
  caller's thread through :meth:`Predictor.predict_prepared` — the very steps
  :meth:`Predictor.predict_many` takes, so every rule of the single-image path applies
  unchanged. Memory stays bounded by the prefetch.
- **CSV as it goes.** After each batch its rows are appended (the same columns as
  :func:`medlens.prediction.write_predictions_csv`) and flushed: an interrupted run loses at
  most the batch in flight.
- **Resume.** When the CSV exists, files already listed in its ``path`` column are skipped
  (``resume=True``, the default — the CLI's ``--no-resume`` starts over). A CSV with other
  columns (another model's classes) is refused rather than mixed.
"""

from __future__ import annotations

import csv
import logging
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from medlens.errors import MedlensError

log = logging.getLogger(__name__)

__all__ = ["already_done", "predict_files"]


def _rows(results: Sequence[Any], sources: Sequence[str], classes: Sequence[str]) -> list[str]:
    """CSV lines (header first) exactly as the one CSV writer formats them."""
    from medlens.prediction import write_predictions_csv

    with tempfile.TemporaryDirectory(prefix="medlens-rows-") as tmp:
        part = Path(tmp) / "part.csv"
        write_predictions_csv(results, sources, classes, part)
        return part.read_text(encoding="utf-8").splitlines(keepends=True)


def already_done(out: Path, classes: Sequence[str]) -> set[str]:
    """Paths listed in an existing predictions CSV (refused when its columns differ)."""
    header = _rows([], [], classes)[0]
    with out.open(newline="", encoding="utf-8") as fh:
        first = fh.readline()
        if not first:
            return set()
        if first.strip() != header.strip():
            raise MedlensError(
                f"{out} holds predictions with other columns (another model?); give another "
                "--out, or --no-resume to overwrite it"
            )
        return {row[0] for row in csv.reader(fh) if row}


def _batches(files: Sequence[Path], size: int) -> Iterator[list[Path]]:
    for i in range(0, len(files), size):
        yield list(files[i : i + size])


def predict_files(
    predictor: Any,
    files: Sequence[Path],
    out: Path | None = None,
    *,
    batch_size: int = 32,
    workers: int = 2,
    prefetch: int = 2,
    resume: bool = True,
    progress: bool = False,
) -> tuple[list[Path], list[Any]]:
    """Predict ``files``; returns ``(files predicted now, their results)`` in order.

    A result is a :class:`~medlens.prediction.Prediction` or the :class:`MedlensError` that made
    its file unreadable. With ``out``, rows are appended to that CSV after every batch.
    """
    todo = list(files)
    if out is not None and out.is_file() and resume:
        done = already_done(out, predictor.classes)
        todo = [f for f in todo if str(f) not in done]
        if len(todo) < len(files):
            log.info(
                "resuming: %d of %d files already in %s", len(files) - len(todo), len(files), out
            )
    elif out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(_rows([], [], predictor.classes)[0], encoding="utf-8")
    done_files: list[Path] = []
    results: list[Any] = []
    bar = _progress(progress, len(todo))
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:
        pending: deque[tuple[list[Path], list[Future]]] = deque()
        source = _batches(todo, max(1, batch_size))

        def submit() -> None:
            chunk = next(source, None)
            if chunk is not None:
                pending.append((chunk, [pool.submit(predictor.prepare, f) for f in chunk]))

        for _ in range(max(1, prefetch)):
            submit()
        while pending:
            chunk, futures = pending.popleft()
            submit()  # keep the decoders busy while this batch runs
            # Decoding, the input check and preprocessing ran in the pool; only the forward
            # pass, gate, sets and policy run here, on the whole batch at once.
            prepared = [f.result() for f in futures]
            batch = [r for r, _ in predictor.predict_prepared(prepared, [str(f) for f in chunk])]
            for f, r in zip(chunk, batch, strict=True):
                if not isinstance(r, MedlensError):
                    r.source = str(f)
            if out is not None:
                lines = _rows(batch, [str(f) for f in chunk], predictor.classes)[1:]
                with out.open("a", encoding="utf-8", newline="") as fh:
                    fh.writelines(lines)
                    fh.flush()
            done_files += chunk
            results += batch
            if bar is not None:
                bar[0].update(bar[1], advance=len(chunk))
    if bar is not None:
        bar[0].stop()
    return done_files, results


def _progress(enabled: bool, total: int) -> Any:
    if not enabled or not total:
        return None
    from rich.progress import Progress

    p = Progress(transient=True)
    task = p.add_task("Predicting", total=total)
    p.start()
    return p, task
