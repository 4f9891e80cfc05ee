"""Heatmaps in their own bounded pool, computed once per result and method.

A Grad-CAM takes a backward pass through the eager torch model (Score-CAM, dozens of forward
passes); run on the request threads, a few result pages opened at once would take every core
from the predictions. Heatmaps therefore run on a small pool of their own (``heatmap_workers``
threads, default 1), and a request waits for its heatmap there.

Each heatmap belongs to one result: ``(result id, method)`` is its key. The first request for a
key computes it; requests for the same key that arrive while it is being computed wait for that
same computation instead of starting another; afterwards it is served from the workspace file
the caller writes (and, for the most recent ``cache_entries`` keys, from memory). So the same
heatmap for the same result is computed once, whatever the number of pages and reports asking.
Failures ("heatmap unavailable: ...") are not cached: the next request tries again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = ["HeatmapPool"]

Outcome = tuple[bytes | None, str | None]  # PNG bytes, or None and why not


class HeatmapPool:
    """Bounded pool + per-key single flight + small in-memory cache of finished heatmaps."""

    def __init__(self, workers: int = 1, cache_entries: int = 64) -> None:
        self.workers = max(1, int(workers))
        self.cache_entries = max(0, int(cache_entries))
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._inflight: dict[Hashable, Future] = {}
        self._cache: OrderedDict[Hashable, Outcome] = OrderedDict()
        self.computed = 0  # computations started (status, tests)
        self.hits = 0  # answered from memory or from a computation already running

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="heatmap")
        return self._pool

    def get(self, key: Hashable, compute: Callable[[], Outcome]) -> Outcome:
        """The heatmap of ``key``: cached, joined while running, or computed on the pool."""
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                self.hits += 1
                return self._cache[key]
            fut = self._inflight.get(key)
            if fut is None:
                self.computed += 1
                fut = self._executor().submit(self._compute, key, compute)
                self._inflight[key] = fut
            else:
                self.hits += 1
        return fut.result()

    def _compute(self, key: Hashable, compute: Callable[[], Outcome]) -> Outcome:
        try:
            out = compute()
        except Exception as exc:  # the page shows a note instead of an error
            out = (None, f"heatmap unavailable: {str(exc)[:200]}")
        with self._lock:
            self._inflight.pop(key, None)
            if out[0] is not None and self.cache_entries:
                self._cache[key] = out
                while len(self._cache) > self.cache_entries:
                    self._cache.popitem(last=False)
        return out

    def forget(self, prefix: Any) -> None:
        """Drop cached heatmaps whose key starts with ``prefix`` (a deleted result's id)."""
        with self._lock:
            for k in [k for k in self._cache if isinstance(k, tuple) and k[:1] == (prefix,)]:
                del self._cache[k]

    def describe(self) -> dict[str, int]:
        return {
            "workers": self.workers,
            "computed": self.computed,
            "hits": self.hits,
            "cached": len(self._cache),
        }

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
