"""Background batch jobs: one worker thread, progress in the database, bytes only in memory.

A batch's files are validated and read (zip entries included) while the request is answered,
then queued here as bytes - never written to disk undecoded. The worker runs each file through
exactly the single-upload path (validate, de-identify, store, predict), records a per-file error
instead of failing the whole batch, and commits progress after every file so the page's progress
bar is live. Jobs that were queued when the server stopped cannot resume (their bytes are gone)
and are marked ``interrupted`` at the next start.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass

from sqlalchemy import select, update

from medlens.errors import MedlensError
from medlens.serve.db import BatchItem, BatchJob, User, utcnow
from medlens.serve.uploads import BatchEntry, UploadRejected, validate_upload

log = logging.getLogger("medlens.serve")


@dataclass
class _Work:
    job_id: str
    user_id: int
    bundle_key: str
    entries: list[BatchEntry]


class BatchRunner:
    def __init__(self, state) -> None:  # type: ignore[no-untyped-def]
        self.state = state
        self._queue: queue.Queue[_Work | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def mark_interrupted(self) -> None:
        with self.state.db() as db:
            db.execute(
                update(BatchJob)
                .where(BatchJob.status.in_(("queued", "running")))
                .values(status="interrupted", error="the server restarted before it finished")
            )
            db.commit()

    def ensure_started(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="medlens-batch", daemon=True
                )
                self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            t = self._thread
            self._thread = None
        if t is not None and t.is_alive():
            self._queue.put(None)
            t.join(timeout)

    def submit(self, job_id: str, user_id: int, bundle_key: str, entries: list[BatchEntry]) -> None:
        self.ensure_started()
        self._queue.put(_Work(job_id, user_id, bundle_key, entries))

    def _loop(self) -> None:
        while True:
            work = self._queue.get()
            if work is None:
                return
            try:
                self._run(work)
            except Exception as exc:  # never let one job kill the worker
                log.exception("batch job %s failed", work.job_id)
                with self.state.db() as db:
                    job = db.get(BatchJob, work.job_id)
                    if job is not None:
                        job.status, job.error, job.finished_at = "failed", str(exc)[:500], utcnow()
                        db.commit()

    def _run(self, work: _Work) -> None:
        from medlens.serve import services

        st = self.state
        s = st.settings
        with st.db() as db:
            job = db.get(BatchJob, work.job_id)
            user = db.get(User, work.user_id)
            if job is None or user is None:
                return
            model = st.models.get(work.bundle_key)
            job.status = "running"
            db.commit()
            items = {
                it.position: it
                for it in db.scalars(select(BatchItem).where(BatchItem.job_id == job.id)).unique()
            }
            for pos, entry in enumerate(work.entries):
                item = items[pos]
                error = entry.error
                stored: tuple[str, str] | None = None
                if error is None and model is None:
                    error = "the model chosen for this batch is no longer loaded"
                if error is None and entry.data is not None:
                    try:
                        v = validate_upload(
                            entry.data,
                            entry.display_name,
                            max_bytes=s.max_upload_bytes,
                            max_pixels=s.max_pixels,
                            tmp_dir=st.workspace.tmp,
                            keep_dicom_identifiers=s.keep_dicom_identifiers,
                        )
                        image = services.store_image(st, db, user, v)
                        stored = (image.storage_key, image.id)
                        r = services.predict_to_result(
                            st, db, user, image, v.loaded, model, batch_id=job.id
                        )
                        item.result_id = r.id
                    except UploadRejected as exc:
                        error = exc.message
                    except MedlensError as exc:
                        error = str(exc)
                    except Exception as exc:
                        log.exception("batch item failed")
                        error = f"internal error: {type(exc).__name__}"
                entry.data = None  # release the bytes as soon as they are used
                if error is not None:
                    db.rollback()
                    if stored is not None:  # stored before the failure: remove the file too
                        st.workspace.delete_image(*stored)
                    item = db.get(BatchItem, item.id)
                    item.error = error[:500]
                    job = db.get(BatchJob, work.job_id)
                    job.failed += 1
                job.done += 1
                db.commit()
            job.status = "done"
            job.finished_at = utcnow()
            db.commit()
