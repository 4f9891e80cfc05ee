"""The durable batch queue: items claimed from the database, processed once, resumed after a crash.

A batch's files are checked, de-identified and staged in the workspace while the upload is
answered (:func:`medlens.serve.batch.create_job`); each file is one :class:`BatchItem` row with
its own status. Any number of workers - threads of a web process or ``medlens worker``
processes - take items from that table:

* **Claim.** ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL (workers never wait on each
  other's rows), then on every backend a conditional ``UPDATE ... WHERE id = :id AND status =
  'queued'`` whose row count says whether this worker won: on SQLite (which ignores ``FOR
  UPDATE`` but serialises writers) that update is the lock.
* **Lease.** A claim holds the item until ``lease_until``. A worker killed mid-item never
  finishes it; once the lease has passed another worker claims it again (``attempts`` counts
  the claims; an item that has killed its worker ``max_attempts`` times is failed, not retried
  for ever).
* **Exactly once.** The result, the item's ``done`` status and the job's counters commit in one
  transaction, and only while this worker still holds the claim; so a crash leaves either a
  result or nothing, and a worker whose lease was taken over cannot add a second result.

Files a crash left behind (an image written before its row committed, a staged file whose item
is finished) are removed by :func:`sweep_orphans`, which every web process and worker runs at
start.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, event, exists, or_, select, update
from sqlalchemy.orm import Session

from medlens.errors import MedlensError
from medlens.serve.db import (
    ITEM_DONE,
    ITEM_FAILED,
    ITEM_QUEUED,
    ITEM_RUNNING,
    BatchItem,
    BatchJob,
    Result,
    StoredImage,
    User,
    utcnow,
)
from medlens.serve.uploads import UploadRejected, validate_upload

log = logging.getLogger("medlens.serve")
OPEN = (ITEM_QUEUED, ITEM_RUNNING)


class LeaseLost(Exception):
    """Another worker took this item over (our lease ran out): our result must not be kept."""


def worker_name() -> str:
    """``host:pid:random`` - unique per worker, readable in the database when debugging."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(3)}"


def _claimable(now: Any) -> Any:
    expired = and_(BatchItem.status == ITEM_RUNNING, BatchItem.lease_until < now)
    return or_(BatchItem.status == ITEM_QUEUED, expired)


def claim(db: Session, worker: str, lease_s: float, max_attempts: int) -> int | None:
    """Claim the oldest claimable item for ``worker``; its id, or None if the queue is empty."""
    for _ in range(20):  # lost races on SQLite: try the next candidate
        now = utcnow()
        cand = db.execute(
            select(BatchItem.id, BatchItem.job_id, BatchItem.attempts)
            .where(_claimable(now))
            .order_by(BatchItem.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if cand is None:
            db.rollback()
            return None
        item_id, job_id, attempts = cand
        if attempts >= max_attempts:  # it stopped its worker every time: give up on it
            won = db.execute(
                update(BatchItem)
                .where(BatchItem.id == item_id, _claimable(now))
                .values(
                    status=ITEM_FAILED,
                    claimed_by=None,
                    lease_until=None,
                    error=f"processing stopped {attempts} times before it finished "
                    "(the worker was killed or ran out of memory); this file was not analysed",
                )
            ).rowcount
            if won:
                _count(db, job_id, failed=True)
                _finish_if_done(db, job_id)
            db.commit()
            continue
        won = db.execute(
            update(BatchItem)
            .where(BatchItem.id == item_id, _claimable(now))
            .values(
                status=ITEM_RUNNING,
                claimed_by=worker,
                lease_until=now + timedelta(seconds=lease_s),
                attempts=BatchItem.attempts + 1,
            )
        ).rowcount
        if won:
            db.execute(
                update(BatchJob)
                .where(BatchJob.id == job_id, BatchJob.status == "queued")
                .values(status="running")
            )
            db.commit()
            return int(item_id)
        db.rollback()
    return None


def _count(db: Session, job_id: str, *, failed: bool) -> None:
    values: dict[str, Any] = {"done": BatchJob.done + 1}
    if failed:
        values["failed"] = BatchJob.failed + 1
    db.execute(update(BatchJob).where(BatchJob.id == job_id).values(**values))


def _finish_if_done(db: Session, job_id: str) -> None:
    """Mark the job done once no item is queued or running (whoever finishes last does it)."""
    still_open = exists().where(BatchItem.job_id == job_id, BatchItem.status.in_(OPEN))
    db.execute(
        update(BatchJob)
        .where(BatchJob.id == job_id, BatchJob.status.in_(("queued", "running")), ~still_open)
        .values(status="done", finished_at=utcnow())
    )


def _held(item_id: int, worker: str) -> Any:
    return and_(
        BatchItem.id == item_id, BatchItem.status == ITEM_RUNNING, BatchItem.claimed_by == worker
    )


def _complete_with_result(db: Session, item_id: int, job_id: str, worker: str) -> Any:
    """Make the commit that stores a result also finish the item, in the same transaction.

    The single-upload path (:func:`medlens.serve.services.predict_to_result`) commits the new
    :class:`Result` itself; this hook runs inside that flush, sets the item ``done`` (only if
    this worker still holds it - else :class:`LeaseLost` aborts the whole transaction) and
    counts it on the job. Returns the listener so the caller can remove it.
    """

    def after_flush(session: Session, _ctx: Any) -> None:
        new = [o for o in session.new if isinstance(o, Result)]
        if not new:
            return
        conn = session.connection()
        won = conn.execute(
            update(BatchItem)
            .where(_held(item_id, worker))
            .values(status=ITEM_DONE, result_id=new[0].id, lease_until=None, error=None)
        ).rowcount
        if not won:
            raise LeaseLost(item_id)
        conn.execute(update(BatchJob).where(BatchJob.id == job_id).values(done=BatchJob.done + 1))

    event.listen(db, "after_flush", after_flush)
    return after_flush


def process(state: Any, item_id: int, worker: str) -> str:
    """Run one claimed item through the single-upload path; ``done``, ``failed`` or ``lost``."""
    from medlens.serve import services

    s = state.settings
    with state.db() as db:
        item = db.get(BatchItem, item_id)
        if item is None or item.claimed_by != worker or item.status != ITEM_RUNNING:
            return "lost"
        job = db.get(BatchJob, item.job_id)
        user = db.get(User, job.user_id) if job is not None else None
        job_id, staged = item.job_id, item.staged_key
        model = state.models.get(job.bundle_key) if job is not None else None
        error: str | None = None
        stored: tuple[str, str] | None = None
        if user is None or job is None:
            error = "the batch or its owner no longer exists"
        elif model is None:
            error = "the model chosen for this batch is no longer loaded"
        else:
            listener = _complete_with_result(db, item_id, job_id, worker)
            try:
                data = state.workspace.staged_path(staged).read_bytes()
                v = validate_upload(
                    data,
                    item.display_name,
                    max_bytes=s.max_upload_bytes,
                    max_pixels=s.max_pixels,
                    tmp_dir=state.workspace.tmp,
                    keep_dicom_identifiers=s.keep_dicom_identifiers,
                )
                image = services.store_image(state, db, user, v)
                stored = (image.storage_key, image.id)
                services.predict_to_result(state, db, user, image, v.loaded, model, batch_id=job_id)
            except LeaseLost:
                db.rollback()
                if stored is not None:
                    state.workspace.delete_image(*stored)
                log.warning("batch item %s was taken over by another worker", item_id)
                return "lost"
            except (ValueError, OSError):
                error = "the uploaded file was lost before it was processed; upload it again"
            except UploadRejected as exc:
                error = exc.message
            except MedlensError as exc:
                error = str(exc)
            except Exception as exc:
                log.exception("batch item %s failed", item_id)
                error = f"internal error: {type(exc).__name__}"
            finally:
                event.remove(db, "after_flush", listener)
        if error is not None:
            db.rollback()
            if stored is not None:  # stored before the failure: remove the file too
                state.workspace.delete_image(*stored)
            won = db.execute(
                update(BatchItem)
                .where(_held(item_id, worker))
                .values(status=ITEM_FAILED, error=error[:500], lease_until=None)
            ).rowcount
            if not won:
                db.rollback()
                return "lost"
            _count(db, job_id, failed=True)
        _finish_if_done(db, job_id)
        db.commit()
    state.workspace.unstage(staged)
    return "failed" if error is not None else "done"


def sweep_orphans(state: Any, grace_s: float | None = None) -> dict[str, int]:
    """Remove workspace files no row refers to (older than the grace period); counts."""
    grace = state.settings.orphan_grace_s if grace_s is None else grace_s

    def known(column: Any, *, where: Any = None) -> Any:
        def find(names: list[str]) -> set[str]:
            stmt = select(column).where(column.in_(names))
            if where is not None:
                stmt = stmt.where(where)
            with state.db() as db:
                return set(db.scalars(stmt).all())

        return find

    def owners(names: list[str]) -> set[str]:
        return known(StoredImage.id)(names) | known(Result.id)(names)

    removed = state.workspace.sweep(
        known(StoredImage.storage_key),
        owners,
        known(BatchItem.staged_key, where=BatchItem.status.in_(OPEN)),
        grace,
    )
    if any(removed.values()):
        log.info("removed orphaned workspace files: %s", removed)
    return removed


class Worker:
    """Claims and processes batch items until stopped (a thread of a web process, or the main
    loop of ``medlens worker``). Idle workers poll the database every ``poll_s`` seconds; a
    web process wakes its own worker at once when it queues a batch (:meth:`wake`)."""

    def __init__(self, state: Any, name: str | None = None, poll_s: float | None = None) -> None:
        self.state = state
        self.name = name or worker_name()
        self.poll_s = state.settings.worker_poll_s if poll_s is None else poll_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.processed = 0

    def run_once(self) -> bool:
        """Claim and process one item; False when the queue was empty."""
        s = self.state.settings
        with self.state.db() as db:
            item_id = claim(db, self.name, s.lease_s, s.max_attempts)
        if item_id is None:
            return False
        process(self.state, item_id, self.name)
        self.processed += 1
        return True

    def run(self, *, until_idle: bool = False) -> int:
        """Process items until :meth:`stop` (or, with ``until_idle``, until the queue is empty)."""
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # a database hiccup must not kill the worker
                log.exception("batch worker %s: claim failed; retrying", self.name)
                busy = False
                time.sleep(self.poll_s)
            if not busy:
                if until_idle:
                    break
                self._wake.wait(self.poll_s)
                self._wake.clear()
        return self.processed

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        """Run in a daemon thread of this process."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self.run, name="medlens-batch", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the current item, then stop."""
        self._stop.set()
        self._wake.set()
        t = self._thread
        if t is not None and t.is_alive() and t is not threading.current_thread():
            t.join(timeout)
        self._thread = None
