"""What the web pages and the REST API both do with results, written once: create (store the
image, predict, triage), find, delete, the derived images (original, preprocessed view, heatmap,
thumbnail), the summary, the API's result record and the PDF report.

Ownership is enforced here, not in the routes: :func:`get_result` returns a result only to its
owner (or an admin) and raises :class:`NotFound` otherwise, so another user's id is
indistinguishable from an id that never existed. Accounts live in :mod:`.accounts`, batches in
:mod:`.batch`.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from medlens.common import bytes_sha256, json_safe
from medlens.inference import DISCLAIMER, LoadedImage, decode_image
from medlens.serve import security
from medlens.serve.db import Result, StoredImage, User
from medlens.serve.engine import METHOD_LABELS, METHODS, LoadedModel, triage
from medlens.serve.state import NotFound, Refused, ServeState, load_secret
from medlens.serve.storage import png_bytes
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

__all__ = ["NotFound", "Refused", "ServeState", "User", "load_secret"]

log = logging.getLogger("medlens.serve")
THUMB_SIDE = 96


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


def loaded_model(state: ServeState, r: Result) -> LoadedModel | None:
    """The model that produced ``r`` if it is still loaded (same key and same bundle hash)."""
    model = state.models.get(r.bundle_key)
    return model if model is not None and model.sha256 == r.bundle_sha256 else None


def extras(state: ServeState, r: Result) -> Extras:
    """The other heads and the modalities used of ``r``; the loaded model says what is missing."""
    model = loaded_model(state, r)
    available = model.modalities if model is not None else None
    return Extras(head_findings(r.heads), modalities_text(r.modalities_used, available))


def preprocess_facts(r: Result) -> dict[str, Any]:
    """The main image's preprocessing facts (a fusion result stores them per modality)."""
    return main_preprocess_info(dict(r.preprocess_info or {}), r.modalities_used)


def clean_accession(value: str | None) -> str | None:
    """A user-entered accession or study number: printable, at most 64 characters; None if
    nothing was entered (nothing is stored then)."""
    text = " ".join("".join(ch for ch in (value or "") if ch.isprintable()).split())
    if not text:
        return None
    if len(text) > 64:
        raise Refused(400, "Accession / study number: at most 64 characters.")
    return text


def store_image(
    state: ServeState, db: Session, user: User, v: ValidatedImage, accession: str | None = None
) -> StoredImage:
    accession = clean_accession(accession)  # refused before anything is written
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
        sha256=bytes_sha256(v.stored_bytes),
        deidentified=v.deidentified,
        accession=accession,
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
    near = model.borderline(pred.probabilities, state.settings.borderline_margin)
    t = triage(pred.probabilities, decision, model.priority, near)
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
        preprocess_info=json_safe(pred.preprocess_info),
        borderline=t.borderline,
        priority_rank=t.priority_rank,
        risk=t.risk,
        summary="",
        heads=json_safe(pred.heads) if pred.heads else None,
        modalities_used=list(pred.modalities_used) if pred.modalities_used is not None else None,
    )
    r.summary = summary_text(_summary_input(model, r))
    db.add(r)
    db.commit()
    return r


def create_result_from_upload(
    state: ServeState,
    db: Session,
    user: User,
    v: ValidatedImage,
    model: LoadedModel,
    accession: str | None = None,
) -> Result:
    image = store_image(state, db, user, v, accession)
    return predict_to_result(state, db, user, image, v.loaded, model)


def load_stored(state: ServeState, image: StoredImage) -> LoadedImage:
    return decode_image(state.workspace.image_path(image.storage_key))


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
                func.lower(StoredImage.accession).like(like),
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
# Derived images
# --------------------------------------------------------------------------------------------


def _cached(state: ServeState, owner_id: str, name: str, make: Any) -> bytes:
    p = state.workspace.derived_path(owner_id, name)
    if p.is_file():
        return p.read_bytes()
    data = make()
    state.workspace.write_derived(owner_id, name, data)
    return data


def original_png(state: ServeState, r: Result) -> bytes:
    return _cached(
        state, r.image_id, "original.png", lambda: png_bytes(load_stored(state, r.image).array)
    )


def thumbnail_png(state: ServeState, r: Result) -> bytes:
    """A small PNG of the original for worklists (at most 96 pixels a side)."""

    def make() -> bytes:
        return png_bytes(load_stored(state, r.image).array, max_side=THUMB_SIDE)

    return _cached(state, r.image_id, "thumb.png", make)


def _model_for(state: ServeState, r: Result) -> LoadedModel:
    model = loaded_model(state, r)
    if model is None:
        raise Refused(409, "The model that produced this result is no longer loaded.")
    return model


def preprocessed_png(state: ServeState, r: Result) -> bytes:
    def make() -> bytes:
        model = _model_for(state, r)
        return png_bytes(model.view(load_stored(state, r.image).array).display)

    return _cached(state, r.id, "preprocessed.png", make)


def heatmap_png(state: ServeState, r: Result, method: str) -> tuple[bytes | None, str | None]:
    """Cached heatmap overlay for the decided class, or None and the reason it is unavailable."""
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
    target = model.classes.index(r.decision) if r.decision in model.classes else None
    rgb, note = model.heatmap(load_stored(state, r.image).array, method, target)
    if rgb is None:
        return None, note
    data = png_bytes(rgb)
    state.workspace.write_derived(r.id, name, data)
    return data, None


# --------------------------------------------------------------------------------------------
# Summary, API record, report
# --------------------------------------------------------------------------------------------


def sections(state: ServeState, r: Result) -> list[tuple[str, str]]:
    return summary_sections(_summary_input(state.models.get(r.bundle_key), r))


def result_dict(state: ServeState, r: Result, base_url: str = "") -> dict[str, Any]:
    model = state.models.get(r.bundle_key)
    return {
        "id": r.id,
        "created_at": r.created_at.isoformat(),
        "file": r.image.display_name,
        "accession": r.image.accession,
        "source_format": r.image.source_format,
        "deidentified": r.image.deidentified,
        "model": r.model_name,
        "bundle": {"key": r.bundle_key, "name": r.bundle_name, "sha256": r.bundle_sha256},
        "demonstration_model": bool(model and model.synthetic),
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

    model = loaded_model(state, r)
    try:
        pre_png: bytes | None = preprocessed_png(state, r)
    except Refused:
        pre_png = None
    heat, note = heatmap_png(state, r, method)
    ex = extras(state, r)
    thresholds = model.thresholds if model else {}
    if not thresholds and r.decision_threshold is not None:
        thresholds = {r.decision: r.decision_threshold}  # the model is gone: the one that fired
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
            thresholds=thresholds,
            summary=sections(state, r),
            borderline=list(r.borderline or []),
            original_png=original_png(state, r),
            preprocessed_png=pre_png,
            heatmap_png=heat,
            heatmap_method=METHOD_LABELS.get(method, method),
            heatmap_note=note,
            findings=[(f.name, f.value) for f in ex.findings],
            modalities=ex.modalities,
            accession=r.image.accession,
            synthetic=bool(model and model.synthetic),
            training_data=model.training_text if model else None,
            test_figures=model.test_figures() if model else [],
            test_caption=model.test_caption() if model else "",
        )
    )
