"""Server-rendered pages for uploads and results (Jinja2, no build step, JavaScript only for
progress): upload, result (+ its images, PDF, other models, side by side, LLM rewrite), history.

Accounts and administration live in :mod:`.web_accounts`, batches in :mod:`.web_batch`. Every
router is made by :func:`medlens.serve.deps.page_router` (CSRF on every state-changing route);
results are read only through the ownership-checking functions of :mod:`.services`.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import File, Form, Query, Request, UploadFile
from fastapi.responses import Response

from medlens.errors import MedlensError
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
    return render(request, "upload.html", {"limits": st.settings, **_upload_extras(st)}, user=user)


def _upload_extras(st: ServeState) -> dict[str, Any]:
    """The further modalities a loaded fusion model takes (its main one is the upload itself):
    the form offers one optional file for each."""
    extra: list[str] = []
    for m in st.models.values():
        extra += [x for x in (m.modalities or [])[1:] if x not in extra]
    return {"companion_modalities": extra}


def _validated(st: ServeState, f: UploadFile) -> Any:
    s = st.settings
    return validate_upload(
        f.file.read(s.max_upload_bytes + 1),
        f.filename,
        max_bytes=s.max_upload_bytes,
        max_pixels=s.max_pixels,
        tmp_dir=st.workspace.tmp,
        keep_dicom_identifiers=s.keep_dicom_identifiers,
    )


def _fusion_result(
    st: ServeState,
    db: DB,
    user: Any,
    v: Any,
    others: dict[str, Any],
    model: Any,
    accession: str,
) -> Any:
    """A fusion model's result on the main image plus its companions: every image is stored
    (de-identified like any upload) and the result records, per modality, the stored image it
    read (``preprocess_info[modality]["stored_image_id"]``), so its heatmaps can be redrawn."""
    try:
        image = services.store_image(st, db, user, v, accession)
        stored = {m: services.store_image(st, db, user, o, accession) for m, o in others.items()}
        loaded = {model.modalities[0]: v.loaded, **{m: o.loaded for m, o in others.items()}}
        r = services.predict_to_result(st, db, user, image, loaded, model)
    finally:
        for x in (v, *others.values()):
            x.release()
    info = dict(r.preprocess_info or {})
    for m, img in stored.items():
        info[m] = {**(info.get(m) or {}), "stored_image_id": img.id}
    r.preprocess_info = info
    db.commit()
    return r


@router.post("/upload")
def upload(
    request: Request,
    db: DB,
    user: CurrentUser,
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form(max_length=200)] = "",
    accession: Annotated[str, Form(max_length=200)] = "",
    companion: Annotated[list[UploadFile] | None, File()] = None,
    companion_modality: Annotated[list[str] | None, Form(max_length=40)] = None,
) -> Response:
    st = state_of(request)
    s = st.settings
    chosen = st.models.get(None if model in ("", ALL_MODELS) else model)
    ctx: dict[str, Any] = {"limits": s, "accession": accession, **_upload_extras(st)}
    if chosen is None:
        ctx["error"] = "Unknown model; choose one of the loaded models."
        return render(request, "upload.html", ctx, user=user, status=400)
    extra = [
        (m, f)
        for m, f in zip(companion_modality or [], companion or [], strict=False)
        if f.filename
    ]
    try:
        services.clean_accession(accession)
        if extra and not (chosen.modalities and model != ALL_MODELS):
            raise Refused(400, "The other images are for a model that fuses several; choose one.")
        v = _validated(st, file)
        others = {m: _validated(st, f) for m, f in extra if m in (chosen.modalities or [])[1:]}
    except (UploadRejected, Refused) as exc:
        ctx["error"] = f"Upload refused: {exc.message}"
        return render(request, "upload.html", ctx, user=user, status=exc.status)
    if others:
        r = _fusion_result(st, db, user, v, others, chosen, accession)
        return redirect(f"/results/{r.id}")
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


def _fusion_inputs(st: ServeState, db: DB, r: Any, model: Any) -> dict[str, Any]:
    """``{modality: StoredImage or None}`` of a fusion result: the main image and the
    companions it recorded (same owner only)."""
    from medlens.serve.db import StoredImage

    mods = list(model.modalities or [])
    out: dict[str, Any] = {m: None for m in mods}
    out[mods[0]] = r.image
    for m in mods[1:]:
        img_id = ((r.preprocess_info or {}).get(m) or {}).get("stored_image_id")
        img = db.get(StoredImage, img_id) if isinstance(img_id, str) else None
        out[m] = img if img is not None and img.user_id == r.user_id else None
    return out


def _heat_name(modality: str, method: str) -> str:
    return "heatmap-" + re.sub(r"[^a-z0-9_.-]+", "-", modality.lower())[:30] + f"-{method}.png"


def modality_panels(st: ServeState, db: DB, r: Any, method: str) -> list[dict[str, Any]] | None:
    """A fusion result's heatmap per modality for the fused decision, with each modality's
    contribution (the drop in the decided class's probability when it is withheld), asked of
    the Predictor facade; the overlays are cached per result, modality and method. None for a
    single-image model."""
    import contextlib

    from medlens.serve.storage import png_bytes

    model = services.loaded_model(st, r)
    if model is None or not model.modalities:
        return None
    stored = _fusion_inputs(st, db, r, model)
    missing = "not given: the model used its learned placeholder"
    panels = [
        {
            "modality": m,
            "given": img is not None,
            "contribution": None,
            "note": None if img is not None else missing,
            "url": None,
        }
        for m, img in stored.items()
    ]
    if services.trust_of(r)["status"] != "ok" or method not in METHODS:
        for p in panels:
            if p["given"]:
                p["note"] = "no heatmap: the case was not assessed, so there is nothing to explain"
        return panels
    target = model.classes.index(r.decision) if r.decision in model.classes else None
    pngs = {m: _heat_name(m, method) for m in stored}
    have = all(st.workspace.derived_path(r.id, pngs[m]).is_file() for m, i in stored.items() if i)
    try:
        with contextlib.ExitStack() as stack:
            loaded = {
                m: None if img is None else stack.enter_context(services.stored_image(st, img))
                for m, img in stored.items()
            }
            with model.lock:
                pre = model.predictor.preprocess(loaded)
                res = model.predictor.modality_heatmaps(pre, method, target, maps=not have)
    except (ImportError, Refused, MedlensError) as exc:
        for p in (p for p in panels if p["given"]):
            p["note"] = f"heatmap unavailable: {str(getattr(exc, 'message', exc))[:200]}"
        return panels
    for p in panels:
        m = p["modality"]
        row = res["modalities"][m]
        p["contribution"] = row["contribution"]
        p["note"] = row["note"] if p["given"] else missing
        if row.get("overlay") is not None:
            st.workspace.write_derived(r.id, pngs[m], png_bytes(row["overlay"]))
        if p["given"] and st.workspace.derived_path(r.id, pngs[m]).is_file():
            p["url"] = f"/results/{r.id}/heatmap/{quote(m)}.png?method={quote(method)}"
        ev = model.evidence or {}
        if p["given"] and f"{m} · {method}" in ev:
            p["evidence"] = ev[f"{m} · {method}"]["line"]
    return panels


def result_context(st: ServeState, r: Any, method: str, db: Any = None) -> dict[str, Any]:
    model = services.loaded_model(st, r)
    panels = modality_panels(st, db, r, method) if db is not None else None
    heat, note = (None, None) if panels is not None else services.heatmap_png(st, r, method)
    thresholds = model.thresholds if model else {}
    p_dec = float(r.probabilities.get(r.decision, r.confidence))
    return {
        "r": r,
        "model": model,
        "model_loaded": model is not None,
        "method": method,
        "heatmap_ok": heat is not None,
        "heatmap_note": note,
        "modality_panels": panels,
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
    ctx = result_context(st, r, _method(request, method), db)
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


@router.get("/results/{result_id}/heatmap/{modality}.png")
def result_modality_heatmap(
    request: Request,
    db: DB,
    user: CurrentUser,
    result_id: str,
    modality: str,
    method: str | None = None,
) -> Response:
    """One modality's heatmap of a fusion result (drawn by the result page, then cached)."""
    st = state_of(request)
    r = services.get_result(db, user, result_id)
    m = _method(request, method)
    name = _heat_name(modality, m)
    try:
        p = st.workspace.derived_path(r.id, name)
    except ValueError:
        p = None
    if p is None or not p.is_file():
        modality_panels(st, db, r, m)
    if p is None or not p.is_file():
        return Response("heatmap unavailable", status_code=503, media_type="text/plain")
    return _png(p.read_bytes())


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
