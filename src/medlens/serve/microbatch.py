"""Micro-batching: concurrent single-image requests share one forward pass.

A network run on 8 images costs far less than 8 runs on one image (one graph launch, one pass
over the weights), so when several clinicians upload at once their images are predicted
together. Each request thread calls :meth:`MicroBatcher.submit` and blocks; one worker thread
takes the first waiting item, then everything else already queued, and lingers at most
``max_wait_s`` for more, up to ``max_batch`` items, and runs them through ``run_batch`` (the
server passes :meth:`medlens.inference.Predictor.predict_many`, so every per-image rule —
input check, gate, calibration, sets, policy — is the single-image path's).

Each caller gets its own result, and only its own error: ``run_batch`` returns one entry per
item, an exception instance where that item failed; if the batch call itself raises, every
item is run again alone, so one image that breaks the network cannot fail its neighbours.

Batching is natural as well as timed: while a batch runs, new requests queue, and the next
batch takes them all. The default linger (2 ms) is therefore small; a lone request pays at
most that. The worker thread starts on the first request and ends after ``idle_s`` without
one, so an idle server (or a test) keeps no thread behind.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

__all__ = ["BatchStats", "MicroBatcher"]

log = logging.getLogger("medlens.serve")

T = TypeVar("T")
R = TypeVar("R")


class BatchStats:
    """Counters for the service's status and the benchmarks: calls and items seen."""

    def __init__(self) -> None:
        self.batches = 0
        self.items = 0
        self.largest = 0
        self.fallbacks = 0  # batches re-run one item at a time after the batch call raised

    def as_dict(self) -> dict[str, Any]:
        mean = self.items / self.batches if self.batches else 0.0
        return {
            "batches": self.batches,
            "items": self.items,
            "largest": self.largest,
            "mean_batch": round(mean, 2),
            "fallbacks": self.fallbacks,
        }


class MicroBatcher(Generic[T, R]):
    """Group items submitted from many threads into calls of ``run_batch``.

    ``run_batch(items)`` must return a list of the same length: a result, or an exception
    instance for an item that failed. ``max_batch=1`` turns batching off (each item alone,
    still on the worker thread, so calls into the model stay serialised).
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[T]], Sequence[R | BaseException]],
        *,
        max_batch: int = 8,
        max_wait_s: float = 0.002,
        idle_s: float = 30.0,
        name: str = "microbatch",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must not be negative")
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.idle_s = float(idle_s)
        self.name = name
        self.stats = BatchStats()
        self._queue: queue.SimpleQueue[tuple[T, Future]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._closed = False

    # -- callers ------------------------------------------------------------------------------

    def submit_async(self, item: T) -> Future:
        """Queue ``item``; the future holds its result or its own exception."""
        fut: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed")
            self._queue.put((item, fut))
            if self._worker is None:
                self._worker = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._worker.start()
        return fut

    def submit(self, item: T, timeout: float | None = None) -> R:
        """Queue ``item`` and wait for its result (raises the exception its item caused)."""
        return self.submit_async(item).result(timeout)

    def close(self) -> None:
        """Refuse new items; items already queued are still run."""
        with self._lock:
            self._closed = True

    # -- worker -------------------------------------------------------------------------------

    def _take(self) -> list[tuple[T, Future]] | None:
        """The next batch, or None when the worker may stop (idle, nothing queued)."""
        try:
            first = self._queue.get(timeout=self.idle_s)
        except queue.Empty:
            with self._lock:  # submit() queues under this lock: no item can slip past
                if self._queue.empty():
                    self._worker = None
                    return None
            first = self._queue.get()
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())  # what queued while we were busy
                continue
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=left))
            except queue.Empty:
                break
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            self._run(batch)

    def _run(self, batch: list[tuple[T, Future]]) -> None:
        live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
        if not live:
            return
        items = [item for item, _ in live]
        self.stats.batches += 1
        self.stats.items += len(items)
        self.stats.largest = max(self.stats.largest, len(items))
        try:
            results = list(self.run_batch(items))
            if len(results) != len(items):
                raise RuntimeError(
                    f"{self.name}: run_batch returned {len(results)} results for {len(items)}"
                )
        except (
            BaseException
        ) as exc:  # isolate the item that caused it; never leave a caller hanging
            if len(items) == 1:
                live[0][1].set_exception(exc)
                return
            log.warning("%s: a batch of %d failed (%s); running each alone", self.name,
                        len(items), exc)  # fmt: skip
            self.stats.fallbacks += 1
            results = []
            for item in items:
                try:
                    results.append(self.run_batch([item])[0])
                except BaseException as one:
                    results.append(one)
        for (_, fut), res in zip(live, results, strict=True):
            if isinstance(res, BaseException):
                fut.set_exception(res)
            else:
                fut.set_result(res)
