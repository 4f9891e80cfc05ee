"""REST API under ``/api/v1`` for scripts and other systems; OpenAPI at ``/api/v1/openapi.json``
and an interactive page at ``/api/v1/docs`` (:mod:`.docs`).

Authentication is a personal API token in ``Authorization: Bearer mlt_...`` (created on the
Tokens page, shown once, stored hashed). Cookies are never accepted here, which is why these
routes need no CSRF token: a browser on another site cannot attach a Bearer header.

The contract is checked, not hoped for: every parameter is bounded (ids by pattern, integers by
range, heatmap methods by enumeration), every error has the one shape of :mod:`.problems`, every
status an operation can return is declared, and a schemathesis run over the schema is part of
the tests (tests/test_serve_contract.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    HTTPException,
    Path,
    Query,
    Request,
    UploadFile,
)
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.orm import Session

from medlens.serve import batch as batches
from medlens.serve import services
from medlens.serve.deps import DB, ApiUser, state_of
from medlens.serve.engine import METHODS
from medlens.serve.formats import names_text
from medlens.serve.problems import error_body, responses
from medlens.serve.state import Refused
from medlens.serve.uploads import UploadRejected, validate_upload


def _query_names(dependant: Any) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def reject_unknown_query(request: Request) -> None:
    """A query parameter the operation does not declare is refused (422), not ignored: a typo
    such as ``ofset=100`` must not silently return the first page."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    if dependant is None:
        return
    known = _query_names(dependant)
    for name in request.query_params:
        if name not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise Refused(
                422,
                f"unknown query parameter {name[:40]!r} (allowed: {allowed})",
                f"query.{name}"[:100],
            )


router = APIRouter(prefix="/api/v1", tags=["medlens"], dependencies=[Depends(reject_unknown_query)])

ID_PATTERN = "^[0-9a-f]{32}$"
ResultId = Annotated[str, Path(pattern=ID_PATTERN, description="a result id (32 hex digits)")]
JobId = Annotated[str, Path(pattern=ID_PATTERN, description="a batch id (32 hex digits)")]
Method = Literal[METHODS]  # type: ignore[valid-type]
MAX_OFFSET = 1_000_000  # far beyond any history; keeps the value inside every database's range
DICOM = "application/dicom"


class Health(BaseModel):
    status: str
    models: int
    database: str


class ModelInfo(BaseModel):
    key: str
    name: str
    model: str
    bundle_sha256: str
    classes: list[str]
    priority: list[str]
    thresholds: dict[str, float]
    calibrated: bool
    ensemble: bool
    intended_use: str
    created: str = Field(description="when the bundle was written (ISO 8601, UTC)")
    training_data: dict[str, Any] = Field(
        description="what the model was trained on: {source, synthetic, n_images, origin}; "
        "synthetic=true marks a demonstration model"
    )
    heads: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="other heads: {name: {type, classes}}"
    )
    modalities: list[str] | None = Field(
        default=None, description="fusion models: the modalities taken, main one first"
    )


class SummarySection(BaseModel):
    heading: str
    text: str


class BundleRef(BaseModel):
    key: str
    name: str
    sha256: str


class ResultOut(BaseModel):
    """One prediction. ``decision`` is the policy's; ``label`` the most probable class."""

    id: str
    created_at: str
    file: str = Field(description="sanitised display name of the uploaded file")
    accession: str | None = Field(
        default=None, description="accession or study number, if the user entered one"
    )
    source_format: str
    deidentified: bool
    model: str
    bundle: BundleRef
    demonstration_model: bool = Field(
        description="true: the model was trained on synthetic data, for demonstration only"
    )
    status: str = Field(
        default="ok",
        description="ok: assessed; ungradable or out_of_distribution: the input check refused the"
        " image and decision, label and confidence are null",
    )
    reason: str | None = Field(default=None, description="why the image was not assessed")
    gate: dict[str, Any] | None = Field(
        default=None, description="the input check's score, threshold and details"
    )
    input_check: str | None = Field(
        default=None, description="present, absent or not recorded: whether the model has one"
    )
    prediction_set: list[str] | None = Field(
        default=None, description="conformal prediction set (null: the model has none)"
    )
    uncertain: bool = Field(default=False, description="the prediction set is not one class")
    decision: str | None
    decision_rule: str
    decision_threshold: float | None
    decision_probability: float | None
    label: str | None
    confidence: float | None
    calibrated: bool
    probabilities: dict[str, float]
    thresholds: dict[str, float]
    borderline: list[str]
    priority_rank: int
    risk: float
    summary: list[SummarySection]
    summary_llm: str | None
    preprocess_info: dict[str, Any]
    heads: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="a multi-task model's other heads: {name: {label, confidence, probabilities}}"
        " for a classification head, {name: {value}} for a regression head; scores are not"
        " calibrated, and a clinician decides whether they hold",
    )
    modalities_used: list[str] | None = Field(
        default=None,
        description="fusion models: the modalities this prediction used (null: single-image model)",
    )
    disclaimer: str
    links: dict[str, str]


class ResultList(BaseModel):
    total: int
    results: list[ResultOut]


class WorklistItem(BaseModel):
    rank: int
    file: str
    result: ResultOut | None
    error: str | None


class JobOut(BaseModel):
    id: str
    status: str
    total: int
    done: int
    failed: int
    model: str
    worklist: list[WorklistItem] | None = None
    links: dict[str, str]


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _result(request: Request, r: Any) -> dict[str, Any]:
    """The API record of a result, with links to its DICOM objects."""
    base = _base(request)
    out = services.result_dict(state_of(request), r, base)
    out["links"] = {
        **out.get("links", {}),
        "dicom_sr": f"{base}/api/v1/results/{r.id}/dicom-sr.dcm",
        "dicom_pdf": f"{base}/api/v1/results/{r.id}/dicom-pdf.dcm",
    }
    return out


@router.get("/health", response_model=Health, responses=responses(503))
def health(request: Request, db: DB) -> Any:
    try:
        db.execute(text("SELECT 1"))
    except Exception:
        return JSONResponse(error_body(503, "the database is unreachable"), status_code=503)
    return Health(status="ok", models=len(state_of(request).models), database="ok")


@router.get("/models", response_model=list[ModelInfo], responses=responses(401))
def models(request: Request, user: ApiUser) -> list[ModelInfo]:
    return [ModelInfo(**m.describe()) for m in state_of(request).models]


@router.post(
    "/predict",
    response_model=ResultOut,
    status_code=201,
    responses=responses(400, 401, 413, 415, 422),
)
def predict(
    request: Request,
    db: DB,
    user: ApiUser,
    file: Annotated[UploadFile, File(description=names_text())],
    model: Annotated[str | None, Form(max_length=200)] = None,
    accession: Annotated[
        str | None, Form(max_length=200, description="accession or study number (optional)")
    ] = None,
) -> dict[str, Any]:
    st = state_of(request)
    s = st.settings
    chosen = st.models.get(model)
    if chosen is None:
        raise HTTPException(400, f"unknown model {model!r}; GET /api/v1/models lists them")
    try:
        v = validate_upload(
            file.file.read(s.max_upload_bytes + 1),
            file.filename,
            max_bytes=s.max_upload_bytes,
            max_pixels=s.max_pixels,
            tmp_dir=st.workspace.tmp,
            keep_dicom_identifiers=s.keep_dicom_identifiers,
        )
        r = services.create_result_from_upload(st, db, user, v, chosen, accession)
    except (UploadRejected, services.Refused) as exc:
        raise HTTPException(exc.status, exc.message) from None
    return _result(request, r)


def _job_out(request: Request, db: Session, job: Any, with_list: bool) -> JobOut:
    base = _base(request)
    items = None
    if with_list and job.status not in ("queued", "running"):
        items = [
            WorklistItem(
                rank=i,
                file=it.display_name,
                result=ResultOut(**_result(request, it.result)) if it.result else None,
                error=it.error,
            )
            for i, it in enumerate(batches.worklist(db, job), start=1)
        ]
    return JobOut(
        id=job.id,
        status=job.status,
        total=job.total,
        done=job.done,
        failed=job.failed,
        model=job.bundle_key,
        worklist=items,
        links={
            "self": f"{base}/api/v1/batch/{job.id}",
            "csv": f"{base}/api/v1/batch/{job.id}/worklist.csv",
            "page": f"{base}/batch/{job.id}",
        },
    )


@router.post(
    "/batch", response_model=JobOut, status_code=202, responses=responses(400, 401, 413, 422)
)
def batch(
    request: Request,
    db: DB,
    user: ApiUser,
    files: Annotated[list[UploadFile], File(description="images and/or zip archives")],
    model: Annotated[str | None, Form(max_length=200)] = None,
) -> JobOut:
    st = state_of(request)
    chosen = st.models.get(model)
    if chosen is None:
        raise HTTPException(400, f"unknown model {model!r}")
    try:
        entries = batches.batch_entries(st, files)
    except UploadRejected as exc:
        raise HTTPException(exc.status, exc.message) from None
    job = batches.create_job(st, db, user, entries, chosen.key)
    return _job_out(request, db, job, with_list=False)


@router.get("/batch/{job_id}", response_model=JobOut, responses=responses(401, 404, 422))
def batch_status(request: Request, db: DB, user: ApiUser, job_id: JobId) -> JobOut:
    return _job_out(request, db, batches.get_job(db, user, job_id), with_list=True)


@router.get(
    "/batch/{job_id}/worklist.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}, **responses(401, 404, 422)},
)
def batch_csv(request: Request, db: DB, user: ApiUser, job_id: JobId) -> Response:
    job = batches.get_job(db, user, job_id)
    return Response(batches.worklist_csv(state_of(request), db, job), media_type="text/csv")


@router.get("/results", response_model=ResultList, responses=responses(401, 422))
def results(
    request: Request,
    db: DB,
    user: ApiUser,
    q: Annotated[str, Query(max_length=100)] = "",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    rows, total = services.search_results(db, user, q, limit, offset)
    return {"total": total, "results": [_result(request, r) for r in rows]}


@router.get("/results/{result_id}", response_model=ResultOut, responses=responses(401, 404, 422))
def result(request: Request, db: DB, user: ApiUser, result_id: ResultId) -> dict[str, Any]:
    return _result(request, services.get_result(db, user, result_id))


@router.delete(
    "/results/{result_id}",
    status_code=204,
    response_class=Response,
    responses=responses(401, 404, 422),
)
def delete_result(request: Request, db: DB, user: ApiUser, result_id: ResultId) -> Response:
    services.delete_result(state_of(request), db, services.get_result(db, user, result_id))
    return Response(status_code=204)


@router.get(
    "/results/{result_id}/explain",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **responses(401, 404, 422, 503)},
)
def explain(
    request: Request,
    db: DB,
    user: ApiUser,
    result_id: ResultId,
    method: Annotated[Method, Query(description="heatmap method")] = "gradcam++",
) -> Response:
    r = services.get_result(db, user, result_id)
    data, note = services.heatmap_png(state_of(request), r, method)
    if data is None:
        raise HTTPException(503, note or "heatmap unavailable")
    return Response(data, media_type="image/png")


@router.get(
    "/results/{result_id}/report.pdf",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}}, **responses(401, 404, 422)},
)
def report(
    request: Request,
    db: DB,
    user: ApiUser,
    result_id: ResultId,
    method: Annotated[Method, Query(description="heatmap method")] = "gradcam++",
) -> Response:
    r = services.get_result(db, user, result_id)
    return Response(services.report_pdf(state_of(request), r, method), media_type="application/pdf")


@router.get(
    "/results/{result_id}/dicom-sr.dcm",
    response_class=Response,
    responses={200: {"content": {DICOM: {}}}, **responses(401, 404, 422)},
)
def dicom_sr(request: Request, db: DB, user: ApiUser, result_id: ResultId) -> Response:
    """The result as a DICOM Structured Report (Enhanced SR, VerificationFlag UNVERIFIED), in
    the study of the uploaded image when that was DICOM."""
    from medlens.serve.dicom_out import result_sr

    r = services.get_result(db, user, result_id)
    return _dicom(result_sr(state_of(request), r), r.id, "sr")


@router.get(
    "/results/{result_id}/dicom-pdf.dcm",
    response_class=Response,
    responses={200: {"content": {DICOM: {}}}, **responses(401, 404, 422)},
)
def dicom_pdf(request: Request, db: DB, user: ApiUser, result_id: ResultId) -> Response:
    """The PDF report encapsulated in DICOM (Encapsulated PDF Storage), in the same study."""
    from medlens.serve.dicom_out import result_pdf

    r = services.get_result(db, user, result_id)
    return _dicom(result_pdf(state_of(request), r), r.id, "pdf")


def _dicom(data: bytes, result_id: str, kind: str) -> Response:
    name = f"medlens-{result_id[:8]}-{kind}.dcm"
    return Response(
        data,
        media_type=DICOM,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
