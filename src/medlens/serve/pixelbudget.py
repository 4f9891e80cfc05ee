"""A pixel budget for decoding: concurrent huge images wait their turn instead of exhausting memory.

A 49-megapixel PNG can be 47 KB on disk and about 1 GB once decoded (the [0, 1] float array,
the copies preprocessing makes). The per-image cap (``max_pixels``) stops one such image from
being too big, but not three arriving at once. Every decode therefore takes a lease of its
pixel count (width x height x frames, read from the header before a row is decompressed) from
one budget per process, a counting semaphore over pixels: while the leases held would exceed
the budget, a new decode waits — a queue, not a crash. Waiters are served in arrival order, so a
large image is not starved by a stream of small ones. An image larger than the whole budget
could never run and is refused at once (413, like the per-image cap); a wait longer than
``timeout`` is refused with 503 ("busy, try again").

A lease is held for as long as the decoded pixels live in the request (decode, canonical PNG,
prediction); :meth:`Lease.release` is idempotent, and a lease attached to an object with
:meth:`Lease.bind` is released when that object is garbage-collected, so an exception path that
forgets the release cannot leak budget forever.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["DEFAULT_BUDGET", "BudgetExceeded", "BudgetTimeout", "Lease", "PixelBudget", "shared"]

DEFAULT_BUDGET = 60_000_000  # pixels: one image at the 50-Mpx cap, plus room for small ones


class BudgetExceeded(ValueError):
    """One image larger than the whole budget: it could never be decoded here."""

    status = 413

    def __init__(self, pixels: int, total: int) -> None:
        self.pixels, self.total = pixels, total
        self.message = (
            f"Image too large: {pixels / 1e6:.1f} megapixels, over this server's decode budget "
            f"of {total / 1e6:.0f} megapixels."
        )
        super().__init__(self.message)


class BudgetTimeout(TimeoutError):
    """The budget stayed full for longer than the caller would wait."""

    status = 503

    def __init__(self, waited: float) -> None:
        self.message = (
            f"The server is busy decoding other large images (waited {waited:.0f} s); "
            "try again in a minute."
        )
        super().__init__(self.message)


class Lease:
    """Pixels held from a :class:`PixelBudget`; give them back with :meth:`release`."""

    __slots__ = ("__weakref__", "_budget", "_released", "pixels")

    def __init__(self, budget: PixelBudget, pixels: int) -> None:
        self._budget = budget
        self.pixels = pixels
        self._released = False

    def release(self) -> None:
        """Return the pixels (once; later calls do nothing)."""
        if not self._released:
            self._released = True
            self._budget._give_back(self.pixels)

    def bind(self, owner: Any) -> Any:
        """Also release when ``owner`` is garbage-collected; returns ``owner``."""
        weakref.finalize(owner, self.release)
        return owner

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class PixelBudget:
    """A counting semaphore over pixels, first come first served."""

    def __init__(self, total: int, timeout: float | None = None) -> None:
        if total <= 0:
            raise ValueError("the pixel budget must be positive")
        self.total = int(total)
        self.timeout = timeout  # default wait of acquire() (None: as long as it takes)
        self.used = 0
        self.peak = 0  # most pixels ever held at once (status, benchmarks)
        self.waits = 0  # leases that had to queue
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def acquire(self, pixels: int, timeout: float | None = None) -> Lease:
        """A lease of ``pixels``, waiting (in arrival order) until they fit.

        Raises :class:`BudgetExceeded` at once when ``pixels`` exceeds the whole budget and
        :class:`BudgetTimeout` after ``timeout`` seconds of waiting (default: the budget's own).
        """
        timeout = self.timeout if timeout is None else timeout
        pixels = max(0, int(pixels))
        if pixels > self.total:
            raise BudgetExceeded(pixels, self.total)
        ticket = object()
        t0 = time.monotonic()
        with self._cond:
            self._queue.append(ticket)
            try:
                queued = False
                while self._queue[0] is not ticket or self.used + pixels > self.total:
                    queued = True
                    left = None if timeout is None else timeout - (time.monotonic() - t0)
                    if left is not None and left <= 0:
                        raise BudgetTimeout(time.monotonic() - t0)
                    self._cond.wait(left)
                self.used += pixels
                self.peak = max(self.peak, self.used)
                self.waits += int(queued)
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()  # the next in line may fit too
        return Lease(self, pixels)

    @contextmanager
    def hold(self, pixels: int, timeout: float | None = None) -> Iterator[Lease]:
        """``with budget.hold(w * h): decode()`` — released on leaving the block."""
        lease = self.acquire(pixels, timeout)
        try:
            yield lease
        finally:
            lease.release()

    def _give_back(self, pixels: int) -> None:
        with self._cond:
            self.used -= pixels
            self._cond.notify_all()

    def describe(self) -> dict[str, int]:
        return {
            "total": self.total,
            "used": self.used,
            "peak": self.peak,
            "waits": self.waits,
            "waiting": self.waiting,
        }


_SHARED: PixelBudget | None = None
_SHARED_LOCK = threading.Lock()


def shared(total: int | None = None, timeout: float | None = None) -> PixelBudget:
    """The process's budget. ``total`` (the server's ``pixel_budget`` setting, given once at
    start-up) replaces a budget of another size; without it the current one (or a default of
    :data:`DEFAULT_BUDGET` pixels) is returned. ``timeout`` sets how long a decode waits."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None or (total is not None and _SHARED.total != int(total)):
            _SHARED = PixelBudget(int(total) if total is not None else DEFAULT_BUDGET)
        if timeout is not None:
            _SHARED.timeout = float(timeout)
        return _SHARED
