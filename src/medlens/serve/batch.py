"""Batches, shared by the Batch pages and the REST API: intake (files and zips read in memory,
limits enforced), the job and its items, the worklist order and its CSV export.

Intake stages every file in the workspace, checked and de-identified (:mod:`.intake`), and
records one queued item per file; the files are then processed by any worker through exactly
the single-upload path (:mod:`.jobs`). A file refused at intake is recorded as a failed item
with its reason, so the worklist still lists every file that was sent.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from medlens.inference import DISCLAIMER
from medlens.serve import security
from medlens.serve.db import ITEM_FAILED, ITEM_QUEUED, BatchItem, BatchJob, User, utcnow
from medlens.serve.intake import stage_bytes
from medlens.serve.services import delete_result, extras, owned, trust_cells
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
    """Stage each file (checked, de-identified) and queue it; refused files fail at once.

    Files are written before the rows commit: a crash in between leaves staged files that no
    row refers to, which :func:`medlens.serve.jobs.sweep_orphans` removes.
    """
    s = st.settings
    job_id = security.new_id()
    items: list[BatchItem] = []
    failed = 0
    for i, e in enumerate(entries):
        item = BatchItem(job_id=job_id, position=i, display_name=e.display_name)
        error = e.error
        if error is None and e.data is not None:
            try:
                staged = stage_bytes(
                    e.data,
                    max_bytes=s.max_upload_bytes,
                    max_pixels=s.max_pixels,
                    keep_dicom_identifiers=s.keep_dicom_identifiers,
                )
                item.staged_key = st.workspace.stage(job_id, i, staged)
                item.status = ITEM_QUEUED
            except UploadRejected as exc:
                error = exc.message
        elif error is None:
            error = "the file could not be read"
        e.data = None  # the bytes now live on disk (or were refused): release them
        if error is not None:
            item.status, item.error = ITEM_FAILED, error[:500]
            failed += 1
        items.append(item)
    job = BatchJob(
        id=job_id,
        user_id=user.id,
        bundle_key=model_key,
        total=len(entries),
        done=failed,
        failed=failed,
        status="queued" if failed < len(entries) else "done",
        finished_at=None if failed < len(entries) else utcnow(),
    )
    db.add(job)
    db.flush()  # the job row must exist before its items reference it
    db.add_all(items)
    db.commit()
    st.wake_workers()
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
    staged = []
    for it in worklist(db, job):
        staged.append(it.staged_key)
        if it.result is not None:
            delete_result(st, db, it.result)
    db.execute(delete(BatchJob).where(BatchJob.id == job.id))
    db.commit()
    for key in staged:
        st.workspace.unstage(key)


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
            "status",  # not assessed (ungradable / out_of_distribution) rank first
            "reason",
            "prediction_set",
            "uncertain",
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
            blanks = [""] * (8 + len(classes) + 5)
            w.writerow([rank, _cell(it.display_name), *blanks, _cell(it.error or ""), DISCLAIMER])
            continue
        w.writerow(
            [
                rank,
                _cell(it.display_name),
                *trust_cells(r),
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
