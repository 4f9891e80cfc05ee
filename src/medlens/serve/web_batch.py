"""Batch pages: start a batch (files or zips), follow its progress, read and export the worklist.

Intake, the worklist order and the CSV are shared with the REST API in :mod:`.batch`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from medlens.serve import batch, services
from medlens.serve.deps import DB, CurrentUser, page_router, state_of
from medlens.serve.services import Refused
from medlens.serve.templating import redirect, render
from medlens.serve.uploads import UploadRejected

router = page_router()


@router.get("/batch")
def batch_page(request: Request, db: DB, user: CurrentUser) -> Response:
    st = state_of(request)
    return render(
        request,
        "batch_list.html",
        {"jobs": batch.list_jobs(db, user), "limits": st.settings},
        user=user,
    )


@router.post("/batch")
def batch_submit(
    request: Request,
    db: DB,
    user: CurrentUser,
    files: Annotated[list[UploadFile], File()],
    model: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    st = state_of(request)
    chosen = st.models.get(model or None)
    ctx = {"jobs": batch.list_jobs(db, user), "limits": st.settings}
    if chosen is None:
        ctx["error"] = "Unknown model; choose one of the loaded models."
        return render(request, "batch_list.html", ctx, user=user, status=400)
    try:
        entries = batch.batch_entries(st, files)
    except UploadRejected as exc:
        ctx["error"] = f"Batch refused: {exc.message}"
        return render(request, "batch_list.html", ctx, user=user, status=exc.status)
    job = batch.create_job(st, db, user, entries, chosen.key)
    return redirect(f"/batch/{job.id}")


@router.get("/batch/{job_id}")
def batch_job(request: Request, db: DB, user: CurrentUser, job_id: str) -> Response:
    st = state_of(request)
    job = batch.get_job(db, user, job_id)
    items = batch.worklist(db, job)
    return render(
        request,
        "batch.html",
        {
            "job": job,
            "items": items,
            "extras": {it.result.id: services.extras(st, it.result) for it in items if it.result},
            "model": st.models.get(job.bundle_key),
            "margin": st.settings.borderline_margin,
        },
        user=user,
    )


@router.get("/batch/{job_id}/status")
def batch_status(db: DB, user: CurrentUser, job_id: str) -> JSONResponse:
    job = batch.get_job(db, user, job_id)
    return JSONResponse(
        {"status": job.status, "done": job.done, "total": job.total, "failed": job.failed}
    )


@router.get("/batch/{job_id}/worklist.csv")
def batch_csv(request: Request, db: DB, user: CurrentUser, job_id: str) -> Response:
    job = batch.get_job(db, user, job_id)
    return Response(
        batch.worklist_csv(state_of(request), db, job),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="worklist-{job.id[:8]}.csv"'},
    )


@router.post("/batch/{job_id}/delete")
def batch_delete(request: Request, db: DB, user: CurrentUser, job_id: str) -> Response:
    job = batch.get_job(db, user, job_id)
    if job.status in ("queued", "running"):
        raise Refused(409, "This batch is still running; delete it when it has finished.")
    batch.delete_job(state_of(request), db, job)
    return redirect("/batch")
