"""What the web pages and the REST API both do, written once: accounts, sessions, tokens,
results (create, find, delete), derived images, reports and worklists.

Ownership is enforced here, not in the routes: :func:`get_result` and :func:`get_job` return an
object only to its owner (or an admin) and raise :class:`NotFound` otherwise, so another user's
id is indistinguishable from an id that never existed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from medlens.data.io import LoadedImage, read_image
from medlens.inference import DISCLAIMER
from medlens.serve import security
from medlens.serve.db import (
    ApiToken,
    AppSetting,
    BatchItem,
    BatchJob,
    Result,
    StoredImage,
    User,
    UserSession,
    utcnow,
)
from medlens.serve.engine import (
    METHOD_LABELS,
    LoadedModel,
    ModelRegistry,
    explain_overlay,
    triage,
)
from medlens.serve.settings import ServeSettings
from medlens.serve.storage import Workspace, png_bytes
from medlens.serve.summary import (
    Finding,
    SummaryInput,
    head_findings,
    main_preprocess_info,
    modalities_text,
    summary_sections,
    summary_text,
)
from medlens.serve.uploads import ValidatedImage

log = logging.getLogger("medlens.serve")


class NotFound(Exception):
    """No such object for this user (it may exist and belong to someone else)."""


class Refused(Exception):
    """A request the user may not make, with the reason shown to them."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


@dataclass
class ServeState:
    settings: ServeSettings
    sessions: sessionmaker
    workspace: Workspace
    models: ModelRegistry
    secret: bytes
    limiter: security.RateLimiter
    jobs: Any = None  # medlens.serve.jobs.BatchRunner

    def db(self) -> Session:
        return self.sessions()


# --------------------------------------------------------------------------------------------
# App settings stored in the database
# --------------------------------------------------------------------------------------------


def get_setting(db: Session, key: str) -> str | None:
    row = db.get(AppSetting, key)
    return row.value if row else None


def set_setting(db: Session, key: str, value: str) -> None:
    row = db.get(AppSetting, key)
    if row is None:
        db.add(AppSetting(key=key, value=value))
    else:
        row.value = value
    db.commit()


def load_secret(db: Session) -> bytes:
    """The server's CSRF HMAC key: random on first start, kept in the database after."""
    value = get_setting(db, "csrf_secret")
    if value is None:
        value = secrets.token_hex(32)
        set_setting(db, "csrf_secret", value)
    return bytes.fromhex(value)


def signup_open(db: Session, default: bool) -> bool:
    if db.scalar(select(func.count()).select_from(User)) == 0:
        return True  # the first account (the admin) can always be created
    value = get_setting(db, "signup_open")
    return default if value is None else value == "1"


# --------------------------------------------------------------------------------------------
# Accounts, sessions, tokens
# --------------------------------------------------------------------------------------------


def create_user(
    db: Session, username: str, password: str, *, role: str | None, min_password_length: int
) -> User:
    """Create an account. ``role=None``: the first account becomes admin, later ones clinician."""
    username = username.strip()
    if problem := security.username_problem(username):
        raise Refused(400, problem)
    if problem := security.password_problem(password, username, min_password_length):
        raise Refused(400, problem)
    exists = db.scalar(select(User).where(func.lower(User.username) == username.lower()))
    if exists is not None:
        raise Refused(409, "That username is taken.")
    if role is None:
        role = "admin" if db.scalar(select(func.count()).select_from(User)) == 0 else "clinician"
    if role not in ("admin", "clinician"):
        raise Refused(400, "role must be admin or clinician")
    user = User(username=username, password_hash=security.hash_password(password), role=role)
    db.add(user)
    db.commit()
    return user


def authenticate(db: Session, username: str, password: str) -> User | None:
    user = db.scalar(select(User).where(func.lower(User.username) == username.strip().lower()))
    ok = security.verify_password(user.password_hash if user else None, password)
    if not ok or user is None or not user.is_active:
        return None
    if security.needs_rehash(user.password_hash):
        user.password_hash = security.hash_password(password)
    user.last_login_at = utcnow()
    db.commit()
    return user


def create_session(db: Session, user: User, hours: float) -> str:
    token = security.new_token()
    now = utcnow()
    db.add(
        UserSession(
            token_hash=security.token_hash(token),
            user_id=user.id,
            created_at=now,
            last_seen_at=now,
            expires_at=now + timedelta(hours=hours),
        )
    )
    db.execute(delete(UserSession).where(UserSession.expires_at < now))
    db.commit()
    return token


def session_user(db: Session, token: str | None) -> User | None:
    if not token or len(token) > 200:
        return None
    row = db.scalar(select(UserSession).where(UserSession.token_hash == security.token_hash(token)))
    now = utcnow()
    if row is None or row.expires_at < now or not row.user.is_active:
        return None
    if (now - row.last_seen_at).total_seconds() > 60:
        row.last_seen_at = now
        db.commit()
    return row.user


def end_session(db: Session, token: str | None) -> None:
    if token:
        db.execute(delete(UserSession).where(UserSession.token_hash == security.token_hash(token)))
        db.commit()


def create_api_token(db: Session, user: User, name: str) -> tuple[ApiToken, str]:
    """A new token; the plaintext is returned once and never stored."""
    name = (name or "").strip()[:80] or "API token"
    token = security.new_token("mlt_")
    row = ApiToken(
        user_id=user.id, name=name, token_hash=security.token_hash(token), prefix=token[:10]
    )
    db.add(row)
    db.commit()
    return row, token


def bearer_user(db: Session, token: str | None) -> User | None:
    if not token or not token.startswith("mlt_") or len(token) > 200:
        return None
    row = db.scalar(select(ApiToken).where(ApiToken.token_hash == security.token_hash(token)))
    if row is None or row.revoked or not row.user.is_active:
        return None
    row.last_used_at = utcnow()
    db.commit()
    return row.user


def revoke_token(db: Session, user: User, token_id: int) -> None:
    row = db.get(ApiToken, token_id)
    if row is None or row.user_id != user.id:
        raise NotFound
    row.revoked = True
    db.commit()


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def _summary_input(model: LoadedModel | None, r: Result) -> SummaryInput:
    return SummaryInput(
        model_name=r.model_name,
        decision=r.decision,
        label=r.label,
        probabilities=dict(r.probabilities),
        decision_threshold=r.decision_threshold,
        calibrated=r.calibrated,
        priority=model.priority if model else [],
        borderline=list(r.borderline or []),
        preprocess_info=dict(r.preprocess_info or {}),
        heads=dict(r.heads or {}),
        modalities_used=list(r.modalities_used) if r.modalities_used is not None else None,
        modalities=model.modalities if model else None,
    )


@dataclass
class Extras:
    """What a result adds beyond the class decision, ready for a page, the PDF or the CSV."""

    findings: list[Finding]  # the other heads' outputs
    modalities: str | None  # fusion models: "MRI only — CT missing"


def extras(state: ServeState, r: Result) -> Extras:
    """The other heads and the modalities used of ``r``; the loaded model says what is missing."""
    model = state.models.get(r.bundle_key)
    available = model.modalities if model is not None and model.sha256 == r.bundle_sha256 else None
    return Extras(head_findings(r.heads), modalities_text(r.modalities_used, available))


def preprocess_facts(r: Result) -> dict[str, Any]:
    """The main image's preprocessing facts (a fusion result stores them per modality)."""
    return main_preprocess_info(dict(r.preprocess_info or {}), r.modalities_used)


def store_image(state: ServeState, db: Session, user: User, v: ValidatedImage) -> StoredImage:
    image_id = security.new_id()
    key = state.workspace.store_image(image_id, v.stored_bytes, v.suffix)
    img = StoredImage(
        id=image_id,
        user_id=user.id,
        storage_key=key,
        display_name=v.display_name,
        source_format=v.kind,
        width=v.width,
        height=v.height,
        size_bytes=len(v.stored_bytes),
        sha256=hashlib.sha256(v.stored_bytes).hexdigest(),
        deidentified=v.deidentified,
    )
    db.add(img)
    db.flush()
    with contextlib.suppress(Exception):
        state.workspace.write_derived(image_id, "original.png", png_bytes(v.loaded.array))
    return img


def predict_to_result(
    state: ServeState,
    db: Session,
    user: User,
    image: StoredImage,
    loaded: LoadedImage,
    model: LoadedModel,
    batch_id: str | None = None,
) -> Result:
    pred = model.predict(loaded.array)
    decision = pred.decision or pred.label
    t = triage(
        pred.probabilities,
        decision,
        model.priority,
        model.thresholds,
        state.settings.borderline_margin,
    )
    r = Result(
        id=security.new_id(),
        user_id=user.id,
        image_id=image.id,
        batch_id=batch_id,
        bundle_key=model.key,
        bundle_name=model.name,
        bundle_sha256=pred.bundle_sha256,
        model_name=pred.model,
        label=pred.label,
        confidence=float(pred.confidence),
        decision=decision,
        decision_rule=pred.decision_rule,
        decision_threshold=pred.decision_threshold,
        calibrated=pred.calibrated,
        probabilities={k: float(v) for k, v in pred.probabilities.items()},
        preprocess_info=_jsonable(pred.preprocess_info),
        borderline=t.borderline,
        priority_rank=t.priority_rank,
        risk=t.risk,
        summary="",
        heads=_jsonable(pred.heads) if pred.heads else None,
        modalities_used=list(pred.modalities_used) if pred.modalities_used is not None else None,
    )
    r.summary = summary_text(_summary_input(model, r))
    db.add(r)
    db.commit()
    return r


def _jsonable(v: Any) -> Any:
    """Plain JSON values; NaN and infinity (a diverged head) become None, which JSON can hold."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def create_result_from_upload(
    state: ServeState, db: Session, user: User, v: ValidatedImage, model: LoadedModel
) -> Result:
    image = store_image(state, db, user, v)
    return predict_to_result(state, db, user, image, v.loaded, model)


def load_stored(state: ServeState, image: StoredImage) -> LoadedImage:
    return read_image(state.workspace.image_path(image.storage_key))


def result_for_model(
    state: ServeState, db: Session, user: User, base: Result, model: LoadedModel
) -> Result:
    """The result of ``model`` on ``base``'s image, reusing an existing one of the same owner."""
    existing = db.scalar(
        select(Result)
        .where(Result.image_id == base.image_id, Result.bundle_key == model.key)
        .where(Result.user_id == base.user_id)
        .order_by(Result.created_at.desc())
    )
    if existing is not None:
        return existing
    owner = base.user if base.user_id != user.id else user
    return predict_to_result(state, db, owner, base.image, load_stored(state, base.image), model)


def owned(query: Any, user: User, column: Any) -> Any:
    return query if user.is_admin else query.where(column == user.id)


def get_result(db: Session, user: User, result_id: str) -> Result:
    if not isinstance(result_id, str) or len(result_id) != 32:
        raise NotFound
    r = db.scalar(owned(select(Result).where(Result.id == result_id), user, Result.user_id))
    if r is None:
        raise NotFound
    return r


def search_results(
    db: Session, user: User, q: str = "", limit: int = 50, offset: int = 0
) -> tuple[list[Result], int]:
    stmt = owned(select(Result), user, Result.user_id).join(StoredImage)
    q = (q or "").strip()[:100]
    if q:
        like = f"%{q.lower()}%"
        stmt = stmt.where(
            or_(
                func.lower(StoredImage.display_name).like(like),
                func.lower(Result.decision).like(like),
                func.lower(Result.label).like(like),
                func.lower(Result.model_name).like(like),
            )
        )
    total = db.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = db.scalars(
        stmt.order_by(Result.created_at.desc())
        .limit(max(1, min(limit, 200)))
        .offset(max(0, offset))
    ).all()
    return list(rows), int(total)


def results_for_image(db: Session, user: User, base: Result) -> list[Result]:
    stmt = select(Result).where(Result.image_id == base.image_id, Result.user_id == base.user_id)
    return list(db.scalars(owned(stmt, user, Result.user_id).order_by(Result.created_at)).all())


def delete_result(state: ServeState, db: Session, r: Result) -> None:
    image = r.image
    db.execute(delete(Result).where(Result.id == r.id))
    state.workspace.delete_derived(r.id)
    remaining = db.scalar(select(func.count()).where(Result.image_id == image.id))
    if not remaining:
        key, image_id = image.storage_key, image.id
        db.execute(delete(StoredImage).where(StoredImage.id == image_id))
        state.workspace.delete_image(key, image_id)
    db.commit()


# --------------------------------------------------------------------------------------------
# Derived images, summary, report
# --------------------------------------------------------------------------------------------


def original_png(state: ServeState, r: Result) -> bytes:
    p = state.workspace.derived_path(r.image_id, "original.png")
    if p.is_file():
        return p.read_bytes()
    data = png_bytes(load_stored(state, r.image).array)
    state.workspace.write_derived(r.image_id, "original.png", data)
    return data


def _model_for(state: ServeState, r: Result) -> LoadedModel:
    model = state.models.get(r.bundle_key)
    if model is None or model.sha256 != r.bundle_sha256:
        raise Refused(409, "The model that produced this result is no longer loaded.")
    return model


def preprocessed_png(state: ServeState, r: Result) -> bytes:
    p = state.workspace.derived_path(r.id, "preprocessed.png")
    if p.is_file():
        return p.read_bytes()
    model = _model_for(state, r)
    pre = model.preprocess(load_stored(state, r.image).array)
    data = png_bytes(pre.display)
    state.workspace.write_derived(r.id, "preprocessed.png", data)
    return data


def heatmap_png(state: ServeState, r: Result, method: str) -> tuple[bytes | None, str | None]:
    """Cached heatmap overlay for the decided class, or None and the reason it is unavailable."""
    from medlens.serve.engine import METHODS

    if method not in METHODS:
        return None, f"unknown heatmap method {method!r}"
    name = f"heatmap-{method}.png"
    p = state.workspace.derived_path(r.id, name)
    if p.is_file():
        return p.read_bytes(), None
    try:
        model = _model_for(state, r)
    except Refused as exc:
        return None, f"heatmap unavailable: {exc.message}"
    pre = model.preprocess(load_stored(state, r.image).array)
    target = model.classes.index(r.decision) if r.decision in model.classes else None
    rgb, note = explain_overlay(model, pre, method, target)
    if rgb is None:
        return None, note
    data = png_bytes(rgb)
    state.workspace.write_derived(r.id, name, data)
    return data, None


def sections(state: ServeState, r: Result) -> list[tuple[str, str]]:
    return summary_sections(_summary_input(state.models.get(r.bundle_key), r))


def result_dict(state: ServeState, r: Result, base_url: str = "") -> dict[str, Any]:
    model = state.models.get(r.bundle_key)
    return {
        "id": r.id,
        "created_at": r.created_at.isoformat(),
        "file": r.image.display_name,
        "source_format": r.image.source_format,
        "deidentified": r.image.deidentified,
        "model": r.model_name,
        "bundle": {"key": r.bundle_key, "name": r.bundle_name, "sha256": r.bundle_sha256},
        "decision": r.decision,
        "decision_rule": r.decision_rule,
        "decision_threshold": r.decision_threshold,
        "decision_probability": r.probabilities.get(r.decision),
        "label": r.label,
        "confidence": r.confidence,
        "calibrated": r.calibrated,
        "probabilities": r.probabilities,
        "thresholds": model.thresholds if model else {},
        "borderline": list(r.borderline or []),
        "priority_rank": r.priority_rank,
        "risk": r.risk,
        "summary": [{"heading": h, "text": t} for h, t in sections(state, r)],
        "summary_llm": r.summary_llm,
        "preprocess_info": r.preprocess_info,
        "heads": dict(r.heads or {}),
        "modalities_used": list(r.modalities_used) if r.modalities_used is not None else None,
        "disclaimer": DISCLAIMER,
        "links": {
            "self": f"{base_url}/api/v1/results/{r.id}",
            "page": f"{base_url}/results/{r.id}",
            "report_pdf": f"{base_url}/api/v1/results/{r.id}/report.pdf",
            "explain": f"{base_url}/api/v1/results/{r.id}/explain",
        },
    }


def report_pdf(state: ServeState, r: Result, method: str) -> bytes:
    from medlens.serve.pdf import ReportData, render_pdf

    model = state.models.get(r.bundle_key)
    try:
        pre_png: bytes | None = preprocessed_png(state, r)
    except Refused:
        pre_png = None
    heat, note = heatmap_png(state, r, method)
    ex = extras(state, r)
    return render_pdf(
        ReportData(
            result_id=r.id,
            display_name=r.image.display_name,
            created_at=r.created_at,
            model_name=r.model_name,
            bundle_name=r.bundle_name,
            bundle_sha256=r.bundle_sha256,
            intended_use=model.intended_use if model else "",
            decision=r.decision,
            label=r.label,
            confidence_decision=float(r.probabilities.get(r.decision, r.confidence)),
            decision_threshold=r.decision_threshold,
            calibrated=r.calibrated,
            probabilities=dict(r.probabilities),
            thresholds=model.thresholds if model else {},
            summary=sections(state, r),
            borderline=list(r.borderline or []),
            original_png=original_png(state, r),
            preprocessed_png=pre_png,
            heatmap_png=heat,
            heatmap_method=METHOD_LABELS.get(method, method),
            heatmap_note=note,
            findings=[(f.name, f.value) for f in ex.findings],
            modalities=ex.modalities,
        )
    )


# --------------------------------------------------------------------------------------------
# Batches and worklists
# --------------------------------------------------------------------------------------------


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


def delete_job(state: ServeState, db: Session, job: BatchJob) -> None:
    for it in worklist(db, job):
        if it.result is not None:
            delete_result(state, db, it.result)
    db.execute(delete(BatchJob).where(BatchJob.id == job.id))
    db.commit()
