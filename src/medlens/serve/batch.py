"""Batches, shared by the Batch pages and the REST API: intake (files and zips read in memory,
limits enforced), the job and its items, the worklist order and its CSV export.

The files themselves are processed by :class:`medlens.serve.jobs.BatchRunner` (one worker
thread) through exactly the single-upload path.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from medlens.inference import DISCLAIMER
from medlens.serve import security
from medlens.serve.db import BatchItem, BatchJob, User
from medlens.serve.services import delete_result, extras, owned
from medlens.serve.state import NotFound, ServeState
from medlens.serve.uploads import BatchEntry, UploadRejected, read_zip, sanitise_name

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def batch_entries(st: ServeState, files: list[Any]) -> list[BatchEntry]:
    """Uploaded files (zips expanded in memory) as entries, enforcing the batch limits.

    ``files`` are Starlette ``UploadFile`` objects (``filename``, ``size``, ``file``).
    """
    s = st.settings
    entries: list[BatchEntry] = []
    budget = s.max_batch_bytes
    for f in files:
        if not f.filename and f.size == 0:
            continue
        data = f.file.read(budget + 1)
        if len(data) > budget:
            raise UploadRejected(413, f"Batch too large: the limit is {s.max_batch_mb:.0f} MB.")
        if data.startswith(ZIP_MAGIC):
            entries += read_zip(
                data,
                max_files=s.max_batch_files,
                max_entry_bytes=s.max_upload_bytes,
                max_total=budget,
            )
        else:
            entries.append(BatchEntry(sanitise_name(f.filename), data))
        budget -= len(data)
        if len(entries) > s.max_batch_files:
            raise UploadRejected(
                413, f"Too many files: the limit is {s.max_batch_files} per batch."
            )
    if not entries:
        raise UploadRejected(400, "No files were uploaded.")
    return entries


def create_job(
    st: ServeState, db: Session, user: User, entries: list[BatchEntry], model_key: str
) -> BatchJob:
    job = BatchJob(id=security.new_id(), user_id=user.id, bundle_key=model_key, total=len(entries))
    db.add(job)
    db.flush()  # the job row must exist before its items reference it
    for i, e in enumerate(entries):
        db.add(BatchItem(job_id=job.id, position=i, display_name=e.display_name))
    db.commit()
    st.jobs.submit(job.id, user.id, model_key, entries)
    return job


def get_job(db: Session, user: User, job_id: str) -> BatchJob:
    if not isinstance(job_id, str) or len(job_id) != 32:
        raise NotFound
    job = db.scalar(owned(select(BatchJob).where(BatchJob.id == job_id), user, BatchJob.user_id))
    if job is None:
        raise NotFound
    return job


def list_jobs(db: Session, user: User, limit: int = 20) -> list[BatchJob]:
    stmt = owned(select(BatchJob), user, BatchJob.user_id).order_by(BatchJob.created_at.desc())
    return list(db.scalars(stmt.limit(limit)).all())


def worklist(db: Session, job: BatchJob) -> list[BatchItem]:
    """Items ordered by decision priority, then risk (highest first); failures last."""
    items = list(db.scalars(select(BatchItem).where(BatchItem.job_id == job.id)).unique().all())

    def key(it: BatchItem) -> tuple:
        r = it.result
        if r is None:
            return (1, 0, 0.0, it.position)
        return (0, r.priority_rank, -r.risk, it.position)

    return sorted(items, key=key)


def delete_job(st: ServeState, db: Session, job: BatchJob) -> None:
    for it in worklist(db, job):
        if it.result is not None:
            delete_result(st, db, it.result)
    db.execute(delete(BatchJob).where(BatchJob.id == job.id))
    db.commit()


def _cell(text: str) -> str:
    """Neutralise spreadsheet formulas in user-controlled cells (CSV injection)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def worklist_csv(st: ServeState, db: Session, job: BatchJob) -> str:
    """The worklist as CSV: one row per file in worklist order, errors included."""
    model = st.models.get(job.bundle_key)
    classes = model.classes if model else []
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "rank",
            "file",
            "decision",
            "decision_probability",
            "risk",
            "borderline",
            *[f"p_{c}" for c in classes],
            "other_findings",
            "modalities_used",
            "model",
            "bundle_sha256",
            "result_id",
            "error",
            "disclaimer",
        ]
    )
    for rank, it in enumerate(worklist(db, job), start=1):
        r = it.result
        if r is None:
            blanks = [""] * (4 + len(classes) + 5)
            w.writerow([rank, _cell(it.display_name), *blanks, _cell(it.error or ""), DISCLAIMER])
            continue
        w.writerow(
            [
                rank,
                _cell(it.display_name),
                r.decision,
                f"{r.probabilities.get(r.decision, 0.0):.4f}",
                f"{r.risk:.4f}",
                "; ".join(r.borderline or []),
                *[f"{r.probabilities.get(c, 0.0):.4f}" for c in classes],
                _cell("; ".join(f.text for f in extras(st, r).findings)),
                " ".join(r.modalities_used) if r.modalities_used is not None else "",
                r.model_name,
                r.bundle_sha256,
                r.id,
                "",
                DISCLAIMER,
            ]
        )
    return buf.getvalue()
