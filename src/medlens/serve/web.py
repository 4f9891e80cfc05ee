"""Server-rendered pages for uploads and results (Jinja2, no build step, JavaScript only for
progress): upload, result (+ its images, PDF, other models, side by side, LLM rewrite), history.

Accounts and administration live in :mod:`.web_accounts`, batches in :mod:`.web_batch`. Every
router is made by :func:`medlens.serve.deps.page_router` (CSRF on every state-changing route);
results are read only through the ownership-checking functions of :mod:`.services`.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import File, Form, Query, Request, UploadFile
from fastapi.responses import Response

from medlens.serve import services
from medlens.serve.deps import DB, CurrentUser, page_router, state_of
from medlens.serve.engine import METHODS
from medlens.serve.services import Refused, ServeState
from medlens.serve.summary import certainty_words
from medlens.serve.templating import redirect, render
from medlens.serve.uploads import UploadRejected, validate_upload

ALL_MODELS = "__all__"

router = page_router()


@router.get("/upload")
def upload_page(request: Request, user: CurrentUser) -> Response:
    st = state_of(request)
    return render(request, "upload.html", {"limits": st.settings}, user=user)


@router.post("/upload")
def upload(
    request: Request,
    db: DB,
    user: CurrentUser,
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form(max_length=200)] = "",
    accession: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    st = state_of(request)
    s = st.settings
    chosen = st.models.get(None if model in ("", ALL_MODELS) else model)
    ctx: dict[str, Any] = {"limits": s, "accession": accession}
    if chosen is None:
        ctx["error"] = "Unknown model; choose one of the loaded models."
        return render(request, "upload.html", ctx, user=user, status=400)
    try:
        services.clean_accession(accession)
        v = validate_upload(
            file.file.read(s.max_upload_bytes + 1),
            file.filename,
            max_bytes=s.max_upload_bytes,
            max_pixels=s.max_pixels,
            tmp_dir=st.workspace.tmp,
            keep_dicom_identifiers=s.keep_dicom_identifiers,
        )
    except (UploadRejected, Refused) as exc:
        ctx["error"] = f"Upload refused: {exc.message}"
        return render(request, "upload.html", ctx, user=user, status=exc.status)
    r = services.create_result_from_upload(st, db, user, v, chosen, accession)
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
    model = services.loaded_model(st, r)
    heat, note = services.heatmap_png(st, r, method)
    thresholds = model.thresholds if model else {}
    p_dec = float(r.probabilities.get(r.decision, r.confidence))
    return {
        "r": r,
        "model": model,
        "model_loaded": model is not None,
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


@router.get("/results/{result_id}/thumb.png")
def result_thumbnail(request: Request, db: DB, user: CurrentUser, result_id: str) -> Response:
    r = services.get_result(db, user, result_id)
    return _png(services.thumbnail_png(state_of(request), r))


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
