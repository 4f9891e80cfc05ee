"""Server-rendered pages for clinicians (Jinja2, no build step, JavaScript only for progress).

Every state-changing request passes :func:`csrf_protect` (a router-wide dependency, so a new
route cannot forget it); pages that show results require a session and read results only
through the ownership-checking functions of :mod:`medlens.serve.services`.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medlens.inference import DISCLAIMER
from medlens.serve import security, services
from medlens.serve.db import ApiToken, BatchItem, BatchJob, Result, User
from medlens.serve.deps import DB, state_of
from medlens.serve.engine import METHOD_LABELS, METHODS
from medlens.serve.services import NotFound, Refused, ServeState
from medlens.serve.summary import certainty_words
from medlens.serve.uploads import BatchEntry, UploadRejected, read_zip, validate_upload

SESSION_COOKIE = "medlens_session"
PRE_COOKIE = "medlens_pre"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ALL_MODELS = "__all__"

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
TEMPLATES.env.globals.update(
    disclaimer=DISCLAIMER,
    method_labels=METHOD_LABELS,
    methods=METHODS,
    pct=lambda p: f"{100 * p:.0f}%",
)


class LoginRequired(Exception):
    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


class CsrfFailed(Exception):
    pass


def _csrf_source(request: Request) -> str | None:
    return request.cookies.get(SESSION_COOKIE) or request.cookies.get(PRE_COOKIE)


async def csrf_protect(request: Request) -> None:
    """Refuse any state-changing request without a valid CSRF token (form field or header)."""
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise CsrfFailed
    token = request.headers.get("x-csrf-token")
    ctype = request.headers.get("content-type", "")
    if token is None and ctype.startswith(
        ("multipart/form-data", "application/x-www-form-urlencoded")
    ):
        form = await request.form()
        value = form.get("csrf_token")
        token = value if isinstance(value, str) else None
    if not security.csrf_valid(state_of(request).secret, _csrf_source(request), token):
        raise CsrfFailed


router = APIRouter(dependencies=[Depends(csrf_protect)], include_in_schema=False)


def optional_user(request: Request, db: DB) -> User | None:
    return services.session_user(db, request.cookies.get(SESSION_COOKIE))


def require_user(request: Request, db: DB) -> User:
    user = services.session_user(db, request.cookies.get(SESSION_COOKIE))
    if user is None:
        raise LoginRequired(request.url.path)
    return user


def require_admin(user: Annotated[User, Depends(require_user)]) -> User:
    if not user.is_admin:
        raise NotFound
    return user


CurrentUser = Annotated[User, Depends(require_user)]


def set_cookie(request: Request, resp: Response, name: str, value: str, max_age: int) -> None:
    st = state_of(request)
    secure = st.settings.cookie_secure
    if secure is None:
        secure = request.url.scheme == "https"
    resp.set_cookie(
        name, value, max_age=max_age, httponly=True, samesite="lax", secure=secure, path="/"
    )


def render(
    request: Request,
    name: str,
    ctx: dict[str, Any] | None = None,
    *,
    user: User | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    st = state_of(request)
    src = _csrf_source(request)
    new_pre = None
    if src is None:
        new_pre = src = security.new_token()
    context = {
        "user": user,
        "csrf_token": security.csrf_token(st.secret, src),
        "models": list(st.models),
        **(ctx or {}),
    }
    resp = TEMPLATES.TemplateResponse(request, name, context, status_code=status, headers=headers)
    if new_pre:
        set_cookie(request, resp, PRE_COOKIE, new_pre, max_age=12 * 3600)
    return resp


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def safe_next(value: str | None) -> str:
    """Only same-site relative paths: no open redirects."""
    if value and value.startswith("/") and not value.startswith(("//", "/\\")):
        return value
    return "/upload"


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# --------------------------------------------------------------------------------------------
# Accounts
# --------------------------------------------------------------------------------------------


@router.get("/")
def home(user: Annotated[User | None, Depends(optional_user)]) -> Response:
    return redirect("/upload" if user else "/login")


@router.get("/login")
def login_page(request: Request, db: DB, next: str = "") -> Response:
    st = state_of(request)
    return render(
        request,
        "login.html",
        {"next": safe_next(next), "signup_open": services.signup_open(db, st.settings.signup_open)},
    )


@router.post("/login")
def login(
    request: Request,
    db: DB,
    username: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=security.MAX_PASSWORD_LENGTH)] = "",
    next: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    st = state_of(request)
    s = st.settings
    ip_key, user_key = f"ip:{client_ip(request)}", f"user:{username.strip().lower()}"
    wait = max(
        st.limiter.retry_after(ip_key, s.login_max_per_ip),
        st.limiter.retry_after(user_key, s.login_max_per_user),
    )
    ctx = {"next": safe_next(next), "username": username, "signup_open": True}
    if wait > 0:
        minutes = math.ceil(wait / 60)
        ctx["error"] = f"Too many login attempts. Try again in {minutes} minute(s)."
        return render(
            request, "login.html", ctx, status=429, headers={"Retry-After": str(int(wait))}
        )
    st.limiter.hit(ip_key)
    user = services.authenticate(db, username, password)
    if user is None:
        st.limiter.hit(user_key)
        ctx["error"] = "Wrong username or password."
        return render(request, "login.html", ctx, status=401)
    st.limiter.reset(user_key)
    token = services.create_session(db, user, s.session_hours)
    resp = redirect(safe_next(next))
    set_cookie(request, resp, SESSION_COOKIE, token, max_age=int(s.session_hours * 3600))
    resp.delete_cookie(PRE_COOKIE, path="/")
    return resp


@router.get("/signup")
def signup_page(request: Request, db: DB) -> Response:
    st = state_of(request)
    is_open = services.signup_open(db, st.settings.signup_open)
    return render(
        request,
        "signup.html",
        {"signup_open": is_open, "min_len": st.settings.min_password_length},
        status=200 if is_open else 403,
    )


@router.post("/signup")
def signup(
    request: Request,
    db: DB,
    username: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=security.MAX_PASSWORD_LENGTH)] = "",
    password2: Annotated[str, Form(max_length=security.MAX_PASSWORD_LENGTH)] = "",
) -> Response:
    st = state_of(request)
    s = st.settings
    ctx: dict[str, Any] = {
        "signup_open": True,
        "min_len": s.min_password_length,
        "username": username,
    }
    if not services.signup_open(db, s.signup_open):
        ctx["signup_open"] = False
        return render(request, "signup.html", ctx, status=403)
    ip_key = f"signup:{client_ip(request)}"
    if st.limiter.retry_after(ip_key, s.login_max_per_ip) > 0:
        ctx["error"] = "Too many sign-ups from this address. Try again later."
        return render(request, "signup.html", ctx, status=429)
    st.limiter.hit(ip_key)
    if password != password2:
        ctx["error"] = "The two passwords differ."
        return render(request, "signup.html", ctx, status=400)
    try:
        user = services.create_user(
            db, username, password, role=None, min_password_length=s.min_password_length
        )
    except Refused as exc:
        ctx["error"] = exc.message
        return render(request, "signup.html", ctx, status=exc.status)
    token = services.create_session(db, user, s.session_hours)
    resp = redirect("/upload")
    set_cookie(request, resp, SESSION_COOKIE, token, max_age=int(s.session_hours * 3600))
    resp.delete_cookie(PRE_COOKIE, path="/")
    return resp


@router.post("/logout")
def logout(request: Request, db: DB) -> Response:
    services.end_session(db, request.cookies.get(SESSION_COOKIE))
    resp = redirect("/login")
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


# --------------------------------------------------------------------------------------------
# Upload and results
# --------------------------------------------------------------------------------------------


@router.get("/upload")
def upload_page(request: Request, user: CurrentUser) -> Response:
    st = state_of(request)
    return render(request, "upload.html", {"limits": st.settings}, user=user)


def read_upload(file: UploadFile, limit: int) -> bytes:
    return file.file.read(limit + 1)


@router.post("/upload")
def upload(
    request: Request,
    db: DB,
    user: CurrentUser,
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    st = state_of(request)
    s = st.settings
    chosen = st.models.get(None if model in ("", ALL_MODELS) else model)
    ctx: dict[str, Any] = {"limits": s}
    if chosen is None:
        ctx["error"] = "Unknown model; choose one of the loaded models."
        return render(request, "upload.html", ctx, user=user, status=400)
    try:
        v = validate_upload(
            read_upload(file, s.max_upload_bytes),
            file.filename,
            max_bytes=s.max_upload_bytes,
            max_pixels=s.max_pixels,
            tmp_dir=st.workspace.tmp,
            keep_dicom_identifiers=s.keep_dicom_identifiers,
        )
    except UploadRejected as exc:
        ctx["error"] = f"Upload refused: {exc.message}"
        return render(request, "upload.html", ctx, user=user, status=exc.status)
    r = services.create_result_from_upload(st, db, user, v, chosen)
    if model == ALL_MODELS and len(st.models) > 1:
        for m in st.models:
            services.result_for_model(st, db, user, r, m)
        return redirect(f"/results/{r.id}/compare")
    return redirect(f"/results/{r.id}")


def _method(request: Request, method: str | None) -> str:
    default = state_of(request).settings.default_method
    return method if method in METHODS else default


def _bars(r: Any, thresholds: dict[str, float]) -> list[dict[str, Any]]:
    rows = []
    for c, p in sorted(r.probabilities.items(), key=lambda kv: -kv[1]):
        t = thresholds.get(c)
        rows.append(
            {
                "cls": c,
                "p": p,
                "threshold": t if t is not None and t < 1.0 else None,
                "decided": c == r.decision,
            }
        )
    return rows


def result_context(st: ServeState, r: Any, method: str) -> dict[str, Any]:
    model = st.models.get(r.bundle_key)
    loaded = model is not None and model.sha256 == r.bundle_sha256
    heat, note = services.heatmap_png(st, r, method)
    thresholds = model.thresholds if model else {}
    p_dec = float(r.probabilities.get(r.decision, r.confidence))
    return {
        "r": r,
        "model": model,
        "model_loaded": loaded,
        "method": method,
        "heatmap_ok": heat is not None,
        "heatmap_note": note,
        "bars": _bars(r, thresholds),
        "p_decision": p_dec,
        "certainty": certainty_words(p_dec),
        "is_priority": model is not None and r.decision in model.priority,
        "sections": services.sections(st, r),
        "extras": services.extras(st, r),
        "pre_info": services.preprocess_facts(r),
    }


@router.get("/results/{result_id}")
def result_page(
    request: Request, db: DB, user: CurrentUser, result_id: str, method: str | None = None
) -> Response:
    st = state_of(request)
    r = services.get_result(db, user, result_id)
    ctx = result_context(st, r, _method(request, method))
    ctx["llm_enabled"] = bool(st.settings.llm_url)
    ctx["siblings"] = services.results_for_image(db, user, r)
    return render(request, "result.html", ctx, user=user)


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png")


@router.get("/results/{result_id}/original.png")
def result_original(request: Request, db: DB, user: CurrentUser, result_id: str) -> Response:
    return _png(services.original_png(state_of(request), services.get_result(db, user, result_id)))


@router.get("/results/{result_id}/preprocessed.png")
def result_preprocessed(request: Request, db: DB, user: CurrentUser, result_id: str) -> Response:
    r = services.get_result(db, user, result_id)
    return _png(services.preprocessed_png(state_of(request), r))


@router.get("/results/{result_id}/heatmap.png")
def result_heatmap(
    request: Request, db: DB, user: CurrentUser, result_id: str, method: str | None = None
) -> Response:
    r = services.get_result(db, user, result_id)
    data, note = services.heatmap_png(state_of(request), r, _method(request, method))
    if data is None:
        return Response(note or "heatmap unavailable", status_code=503, media_type="text/plain")
    return _png(data)


@router.get("/results/{result_id}/report.pdf")
def result_pdf(
    request: Request, db: DB, user: CurrentUser, result_id: str, method: str | None = None
) -> Response:
    r = services.get_result(db, user, result_id)
    pdf = services.report_pdf(state_of(request), r, _method(request, method))
    return Response(
        pdf,
        media_type="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="medlens-{r.id[:8]}.pdf"'},
    )


@router.post("/results/{result_id}/delete")
def result_delete(request: Request, db: DB, user: CurrentUser, result_id: str) -> Response:
    r = services.get_result(db, user, result_id)
    services.delete_result(state_of(request), db, r)
    return redirect("/history?deleted=1")


@router.post("/results/{result_id}/model")
def result_other_model(
    request: Request,
    db: DB,
    user: CurrentUser,
    result_id: str,
    model: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    st = state_of(request)
    r = services.get_result(db, user, result_id)
    if model == ALL_MODELS:
        for m in st.models:
            services.result_for_model(st, db, user, r, m)
        return redirect(f"/results/{r.id}/compare")
    chosen = st.models.get(model)
    if chosen is None:
        raise Refused(400, "Unknown model.")
    return redirect(f"/results/{services.result_for_model(st, db, user, r, chosen).id}")


@router.get("/results/{result_id}/compare")
def result_compare(
    request: Request, db: DB, user: CurrentUser, result_id: str, method: str | None = None
) -> Response:
    st = state_of(request)
    r = services.get_result(db, user, result_id)
    m = _method(request, method)
    columns = [result_context(st, x, m) for x in services.results_for_image(db, user, r)]
    return render(request, "compare.html", {"base": r, "columns": columns, "method": m}, user=user)


@router.post("/results/{result_id}/rewrite")
def result_rewrite(request: Request, db: DB, user: CurrentUser, result_id: str) -> Response:
    from medlens.serve.summary import llm_rewrite

    st = state_of(request)
    s = st.settings
    r = services.get_result(db, user, result_id)
    if not s.llm_url:
        raise Refused(404, "No LLM is configured on this server.")
    try:
        r.summary_llm = llm_rewrite(
            r.summary,
            url=s.llm_url,
            model=s.llm_model,
            api_key_env=s.llm_api_key_env,
            timeout_s=s.llm_timeout_s,
        )
        db.commit()
    except RuntimeError as exc:
        raise Refused(502, str(exc)) from None
    return redirect(f"/results/{r.id}")


@router.get("/history")
def history(
    request: Request,
    db: DB,
    user: CurrentUser,
    q: Annotated[str, Query(max_length=100)] = "",
    page: Annotated[int, Query(ge=1, le=10_000)] = 1,
    deleted: int = 0,
) -> Response:
    per_page = 25
    rows, total = services.search_results(db, user, q, per_page, (page - 1) * per_page)
    pages = max(1, math.ceil(total / per_page))
    st = state_of(request)
    return render(
        request,
        "history.html",
        {
            "rows": rows,
            "extras": {r.id: services.extras(st, r) for r in rows},
            "q": q,
            "page": page,
            "pages": pages,
            "total": total,
            "deleted": deleted,
        },
        user=user,
    )


# --------------------------------------------------------------------------------------------
# Batch
# --------------------------------------------------------------------------------------------


def batch_entries(st: ServeState, files: list[UploadFile]) -> list[BatchEntry]:
    """Turn uploaded files (zips expanded in memory) into entries, enforcing the batch limits."""
    s = st.settings
    entries: list[BatchEntry] = []
    budget = s.max_batch_bytes
    for f in files:
        if not f.filename and f.size == 0:
            continue
        data = f.file.read(budget + 1)
        if len(data) > budget:
            raise UploadRejected(413, f"Batch too large: the limit is {s.max_batch_mb:.0f} MB.")
        if data.startswith(b"PK\x03\x04") or data.startswith(b"PK\x05\x06"):
            entries += read_zip(
                data,
                max_files=s.max_batch_files,
                max_entry_bytes=s.max_upload_bytes,
                max_total=budget,
            )
        else:
            entries.append(BatchEntry(_name(f.filename), data))
        budget -= len(data)
        if len(entries) > s.max_batch_files:
            raise UploadRejected(
                413, f"Too many files: the limit is {s.max_batch_files} per batch."
            )
    if not entries:
        raise UploadRejected(400, "No files were uploaded.")
    return entries


def _name(filename: str | None) -> str:
    from medlens.serve.uploads import sanitise_name

    return sanitise_name(filename)


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


@router.get("/batch")
def batch_page(request: Request, db: DB, user: CurrentUser) -> Response:
    st = state_of(request)
    return render(
        request,
        "batch_list.html",
        {"jobs": services.list_jobs(db, user), "limits": st.settings},
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
    ctx = {"jobs": services.list_jobs(db, user), "limits": st.settings}
    if chosen is None:
        ctx["error"] = "Unknown model; choose one of the loaded models."
        return render(request, "batch_list.html", ctx, user=user, status=400)
    try:
        entries = batch_entries(st, files)
    except UploadRejected as exc:
        ctx["error"] = f"Batch refused: {exc.message}"
        return render(request, "batch_list.html", ctx, user=user, status=exc.status)
    job = create_job(st, db, user, entries, chosen.key)
    return redirect(f"/batch/{job.id}")


@router.get("/batch/{job_id}")
def batch_job(request: Request, db: DB, user: CurrentUser, job_id: str) -> Response:
    st = state_of(request)
    job = services.get_job(db, user, job_id)
    items = services.worklist(db, job)
    model = st.models.get(job.bundle_key)
    return render(
        request,
        "batch.html",
        {
            "job": job,
            "items": items,
            "extras": {it.result.id: services.extras(st, it.result) for it in items if it.result},
            "model": model,
            "margin": st.settings.borderline_margin,
        },
        user=user,
    )


@router.get("/batch/{job_id}/status")
def batch_status(db: DB, user: CurrentUser, job_id: str) -> JSONResponse:
    job = services.get_job(db, user, job_id)
    return JSONResponse(
        {"status": job.status, "done": job.done, "total": job.total, "failed": job.failed}
    )


def worklist_csv(st: ServeState, db: Session, job: BatchJob) -> str:
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
    for rank, it in enumerate(services.worklist(db, job), start=1):
        r = it.result
        if r is None:
            w.writerow(
                [
                    rank,
                    _cell(it.display_name),
                    "",
                    "",
                    "",
                    "",
                    *[""] * len(classes),
                    "",
                    "",
                    "",
                    "",
                    "",
                    _cell(it.error or ""),
                    DISCLAIMER,
                ]
            )
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
                _cell("; ".join(f.text for f in services.extras(st, r).findings)),
                " ".join(r.modalities_used) if r.modalities_used is not None else "",
                r.model_name,
                r.bundle_sha256,
                r.id,
                "",
                DISCLAIMER,
            ]
        )
    return buf.getvalue()


def _cell(text: str) -> str:
    """Neutralise spreadsheet formulas in user-controlled cells (CSV injection)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@router.get("/batch/{job_id}/worklist.csv")
def batch_csv(request: Request, db: DB, user: CurrentUser, job_id: str) -> Response:
    job = services.get_job(db, user, job_id)
    return Response(
        worklist_csv(state_of(request), db, job),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="worklist-{job.id[:8]}.csv"'},
    )


@router.post("/batch/{job_id}/delete")
def batch_delete(request: Request, db: DB, user: CurrentUser, job_id: str) -> Response:
    job = services.get_job(db, user, job_id)
    if job.status in ("queued", "running"):
        raise Refused(409, "This batch is still running; delete it when it has finished.")
    services.delete_job(state_of(request), db, job)
    return redirect("/batch")


# --------------------------------------------------------------------------------------------
# API tokens and administration
# --------------------------------------------------------------------------------------------


def _tokens(db: Session, user: User) -> list[ApiToken]:
    stmt = select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.created_at.desc())
    return list(db.scalars(stmt).all())


@router.get("/tokens")
def tokens_page(request: Request, db: DB, user: CurrentUser) -> Response:
    return render(request, "tokens.html", {"tokens": _tokens(db, user)}, user=user)


@router.post("/tokens")
def tokens_create(
    request: Request, db: DB, user: CurrentUser, name: Annotated[str, Form(max_length=80)] = ""
) -> Response:
    _, plaintext = services.create_api_token(db, user, name)
    return render(
        request, "tokens.html", {"tokens": _tokens(db, user), "new_token": plaintext}, user=user
    )


@router.post("/tokens/{token_id}/revoke")
def tokens_revoke(request: Request, db: DB, user: CurrentUser, token_id: int) -> Response:
    services.revoke_token(db, user, token_id)
    return redirect("/tokens")


@router.get("/admin")
def admin_page(
    request: Request, db: DB, admin: Annotated[User, Depends(require_admin)]
) -> Response:
    st = state_of(request)
    users = list(db.scalars(select(User).order_by(User.created_at)).all())
    counts = dict(db.execute(select(Result.user_id, func.count()).group_by(Result.user_id)).all())
    return render(
        request,
        "admin.html",
        {
            "users": users,
            "counts": counts,
            "signup_open": services.signup_open(db, st.settings.signup_open),
        },
        user=admin,
    )


@router.post("/admin/signup")
def admin_signup(
    request: Request,
    db: DB,
    admin: Annotated[User, Depends(require_admin)],
    open: Annotated[str, Form(max_length=1)] = "0",
) -> Response:
    services.set_setting(db, "signup_open", "1" if open == "1" else "0")
    return redirect("/admin")


def login_redirect(next_path: str) -> RedirectResponse:
    return redirect(f"/login?next={quote(next_path)}")
