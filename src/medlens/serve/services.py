"""What the web pages and the REST API both do with results, written once: create (store the
image, predict, triage), find, delete, the derived images (original, preprocessed view, heatmap,
thumbnail), the summary, the API's result record and the PDF report.

Ownership is enforced here, not in the routes: :func:`get_result` returns a result only to its
owner (or an admin) and raises :class:`NotFound` otherwise, so another user's id is
indistinguishable from an id that never existed. Accounts live in :mod:`.accounts`, batches in
:mod:`.batch`.

Every decode of a stored image holds its pixels from the process's budget
(:mod:`.pixelbudget`) while its pixels are in use, as uploads do; heatmaps are computed on the
registry's bounded pool, once per result and method (:mod:`.heatmaps`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from medlens.common import bytes_sha256, json_safe
from medlens.inference import DISCLAIMER, LoadedImage, decode_image
from medlens.prediction import STATUS_TEXT, Prediction
from medlens.serve import pixelbudget, security
from medlens.serve.db import Result, StoredImage, User
from medlens.serve.engine import METHOD_LABELS, METHODS, LoadedModel, Triage, triage
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
from medlens.trust_state import GATE_ABSENT

__all__ = ["NotFound", "Refused", "ServeState", "User", "load_secret"]

log = logging.getLogger("medlens.serve")
THUMB_SIDE = 96
NOT_ASSESSED_RANK = -1  # worklist rank of a not-assessed result: before every decision


def trust_of(r: Result) -> dict[str, Any]:
    """The stored input-check verdict and prediction set of ``r``, with defaults for results
    stored before either existed (assessed; input check not recorded)."""
    t = dict(r.trust or {})
    return {
        "status": t.get("status", "ok"),
        "reason": t.get("reason"),
        "gate": t.get("gate"),
        "prediction_set": t.get("prediction_set"),
        "uncertain": bool(t.get("uncertain", False)),
        "input_check": t.get("input_check", "not recorded"),
    }


def trust_cells(r: Result) -> list[str]:
    """``status, reason, prediction_set, uncertain`` of ``r`` as CSV cells (worklists)."""
    t = trust_of(r)
    ps = t["prediction_set"]
    return [
        t["status"],
        t["reason"] or "",
        "" if ps is None else " ".join(ps),
        str(t["uncertain"]).lower() if t["status"] == "ok" else "",
    ]


def _summary_input(model: LoadedModel | None, r: Result) -> SummaryInput:
    t = trust_of(r)
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
        status=t["status"],
        reason=t["reason"],
        prediction_set=t["prediction_set"],
        uncertain=t["uncertain"],
        input_check=t["input_check"],
        coverage=model.coverage if model else None,
    )


@dataclass
class Extras:
    """What a result adds beyond the class decision, ready for a page, the PDF or the CSV."""

    findings: list[Finding]  # the other heads' outputs
    modalities: str | None  # fusion models: "MRI only — CT missing"
    status: str = "ok"  # "ok" | "ungradable" | "out_of_distribution"
    reason: str | None = None
    prediction_set: list[str] | None = None
    uncertain: bool = False
    input_check: str = "not recorded"  # "present" | "absent" | "not recorded"
    coverage: float | None = None  # of the prediction sets
    evidence: dict[str, dict[str, Any]] | None = None  # heatmap verdicts of the bundle

    @property
    def assessed(self) -> bool:
        return self.status == "ok"

    @property
    def status_text(self) -> str:
        return STATUS_TEXT.get(self.status, self.status)

    @property
    def gate_note(self) -> str | None:
        """Said on every result of a model without an input check."""
        return GATE_ABSENT if self.input_check == "absent" else None

    @property
    def set_text(self) -> str | None:
        """``{normal, pneumonia}`` — None when the model has no prediction sets."""
        if self.prediction_set is None:
            return None
        return "{" + ", ".join(self.prediction_set) + "}"

    def evidence_line(self, method: str) -> str:
        """The one line of localisation evidence for a heatmap of ``method``."""
        from medlens.explain.section import evidence_line

        return evidence_line(self.evidence, method)


def loaded_model(state: ServeState, r: Result) -> LoadedModel | None:
    """The model that produced ``r`` if it is still loaded (same key and same bundle hash)."""
    model = state.models.get(r.bundle_key)
    return model if model is not None and model.sha256 == r.bundle_sha256 else None


def extras(state: ServeState, r: Result) -> Extras:
    """The other heads and the modalities used of ``r``; the loaded model says what is missing."""
    model = loaded_model(state, r)
    available = model.modalities if model is not None else None
    t = trust_of(r)
    return Extras(
        head_findings(r.heads),
        modalities_text(r.modalities_used, available),
        status=t["status"],
        reason=t["reason"],
        prediction_set=t["prediction_set"],
        uncertain=t["uncertain"],
        input_check=t["input_check"],
        coverage=model.coverage if model else None,
        evidence=model.evidence if model else None,
    )


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
    pred: Prediction | None = None,
) -> Result:
    """Predict ``loaded`` (unless ``pred`` is given: predicted already) and store the result."""
    if pred is None:
        pred = model.predict(loaded)  # the decoded figures travel: the input check reads them
    decision = pred.shown_decision or ""
    near = model.borderline(pred.probabilities, state.settings.borderline_margin)
    if pred.assessed:
        t = triage(pred.probabilities, decision, model.priority, near)
    else:  # not assessed: its own group, first on every worklist, for a person to look at
        t = Triage(NOT_ASSESSED_RANK, 0.0, [])
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
        confidence=float(pred.confidence) if pred.assessed else 0.0,
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
        trust=json_safe(
            {
                "status": pred.status,
                "reason": pred.reason,
                "gate": pred.gate,
                "prediction_set": pred.prediction_set,
                "uncertain": pred.uncertain,
                "input_check": model.predictor.trust.gate_status,
            }
        ),
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
    # Predict before anything is written: with SQLite the first write holds the database's
    # write lock until the commit, and a forward pass inside that window would serialise every
    # concurrent upload (no micro-batching, long waits on the lock).
    clean_accession(accession)  # refused before the network runs
    try:
        pred = model.predict(v.loaded)
        image = store_image(state, db, user, v, accession)
        return predict_to_result(state, db, user, image, v.loaded, model, pred=pred)
    finally:
        v.release()  # the decoded pixels are done with: their budget goes to the next decode


def load_stored(state: ServeState, image: StoredImage) -> LoadedImage:
    """Decode a stored image (unbudgeted: callers hold :func:`stored_image` instead)."""
    return decode_image(state.workspace.image_path(image.storage_key))


@contextlib.contextmanager
def _decoding(pixels: int) -> Iterator[None]:
    """Hold ``pixels`` of the decode budget for the block (a refusal becomes :class:`Refused`)."""
    try:
        lease = pixelbudget.shared().acquire(pixels)
    except (pixelbudget.BudgetExceeded, pixelbudget.BudgetTimeout) as exc:
        raise Refused(exc.status, exc.message) from None
    with lease:
        yield


@contextlib.contextmanager
def stored_image(state: ServeState, image: StoredImage) -> Iterator[LoadedImage]:
    """A stored image decoded under the pixel budget, for as long as the block uses it."""
    with _decoding(_pixels(image)):
        yield load_stored(state, image)


def _pixels(image: StoredImage) -> int:
    return max(0, int(image.width or 0)) * max(0, int(image.height or 0))


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
    with stored_image(state, base.image) as loaded:
        return predict_to_result(state, db, owner, base.image, loaded, model)


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
    heatmaps = getattr(state.models, "heatmaps", None)
    if heatmaps is not None:
        heatmaps.forget(r.id)
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
    def make() -> bytes:
        with stored_image(state, r.image) as loaded:
            return png_bytes(loaded.array)

    return _cached(state, r.image_id, "original.png", make)


def thumbnail_png(state: ServeState, r: Result) -> bytes:
    """A small PNG of the original for worklists (at most 96 pixels a side)."""

    def make() -> bytes:
        with stored_image(state, r.image) as loaded:
            return png_bytes(loaded.array, max_side=THUMB_SIDE)

    return _cached(state, r.image_id, "thumb.png", make)


def _model_for(state: ServeState, r: Result) -> LoadedModel:
    model = loaded_model(state, r)
    if model is None:
        raise Refused(409, "The model that produced this result is no longer loaded.")
    return model


def preprocessed_png(state: ServeState, r: Result) -> bytes:
    def make() -> bytes:
        model = _model_for(state, r)
        with stored_image(state, r.image) as loaded:
            return png_bytes(model.view(loaded.array).display)

    return _cached(state, r.id, "preprocessed.png", make)


def heatmap_png(state: ServeState, r: Result, method: str) -> tuple[bytes | None, str | None]:
    """Cached heatmap overlay for the decided class, or None and the reason it is unavailable.

    Computed on the registry's heatmap pool, once per ``(result, method)``: concurrent requests
    for the same heatmap wait for the one computation. The pool thread touches no database
    object (sessions are per thread): what it needs is read here first.
    """
    if method not in METHODS:
        return None, f"unknown heatmap method {method!r}"
    if trust_of(r)["status"] != "ok":
        return None, "no heatmap: the image was not assessed, so there is no finding to explain"
    name = f"heatmap-{method}.png"
    p = state.workspace.derived_path(r.id, name)
    if p.is_file():
        return p.read_bytes(), None
    try:
        model = _model_for(state, r)
    except Refused as exc:
        return None, f"heatmap unavailable: {exc.message}"
    target = model.classes.index(r.decision) if r.decision in model.classes else None
    result_id, image_path = r.id, state.workspace.image_path(r.image.storage_key)
    pixels = _pixels(r.image)

    def compute() -> tuple[bytes | None, str | None]:
        if p.is_file():  # written while this request waited for the pool
            return p.read_bytes(), None
        try:
            with _decoding(pixels):
                rgb, note = model.heatmap(decode_image(image_path).array, method, target)
        except Refused as exc:
            return None, f"heatmap unavailable: {exc.message}"
        if rgb is None:
            return None, note
        data = png_bytes(rgb)
        state.workspace.write_derived(result_id, name, data)
        return data, None

    pool = getattr(state.models, "heatmaps", None)
    return pool.get((result_id, method), compute) if pool is not None else compute()


# --------------------------------------------------------------------------------------------
# Summary, API record, report
# --------------------------------------------------------------------------------------------


def sections(state: ServeState, r: Result) -> list[tuple[str, str]]:
    return summary_sections(_summary_input(state.models.get(r.bundle_key), r))


def result_dict(state: ServeState, r: Result, base_url: str = "") -> dict[str, Any]:
    model = state.models.get(r.bundle_key)
    t = trust_of(r)
    assessed = t["status"] == "ok"
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
        "status": t["status"],
        "reason": t["reason"],
        "gate": t["gate"],
        "input_check": t["input_check"],
        "prediction_set": t["prediction_set"],
        "uncertain": t["uncertain"],
        "decision": r.decision if assessed else None,
        "decision_rule": r.decision_rule,
        "decision_threshold": r.decision_threshold,
        "decision_probability": r.probabilities.get(r.decision) if assessed else None,
        "label": r.label if assessed else None,
        "confidence": r.confidence if assessed else None,
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
            status=ex.status,
            status_text=ex.status_text,
            reason=ex.reason,
            prediction_set=ex.set_text,
            uncertain=ex.uncertain,
            gate_note=ex.gate_note,
            heatmap_evidence=ex.evidence_line(method) if heat is not None else None,
        )
    )
