"""Results as DICOM, the way hospitals move them: a Structured Report and an encapsulated PDF.

Following MONAI Deploy's writers, every object says what produced it and that nobody has checked
it: ``VerificationFlag`` is ``UNVERIFIED`` and the report carries the disclaimer. When the upload
was DICOM, both objects join its study (same ``StudyInstanceUID``, patient module copied, the
source image listed as evidence); on a server that de-identifies uploads that study is the
de-identified one the upload path stored, so nothing identifying is re-introduced. For PNG/JPEG
uploads a study UID is derived from the image id. UIDs are derived from the result id, so
downloading an object twice gives the same object (a PACS stores it once).

* **Structured Report** (Enhanced SR Storage): the algorithm (model name and bundle SHA-256),
  the decision, each class probability as a numeric item, the decision threshold, the
  prediction status (``ok``/``ungradable``/``out_of_distribution``), the prediction set and
  reason when the bundle provides them, and the disclaimer.
* **Encapsulated PDF** (Encapsulated PDF Storage): the result's PDF report.
* **DICOM SEG**: none - no served model outputs a mask (segmentation bundles report their
  findings as head values), so there is nothing to encode yet.

Built with pydicom rather than highdicom: highdicom (0.28) has no encapsulated-PDF class and its
SR classes require DICOM evidence, which PNG and JPEG uploads do not have.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from medlens.inference import DISCLAIMER

ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
SCHEME = "99MEDLENS"  # private coding scheme for the concepts DICOM has no code for
UNVERIFIED_NOTE = (
    "UNVERIFIED result of an automated model, not reviewed by a clinician; "
    "not for diagnostic use on its own. "
)


@dataclass
class ResultFacts:
    """What a DICOM result says; built from a stored result or a fresh prediction."""

    result_id: str
    created_at: datetime
    model_name: str
    bundle_name: str
    bundle_sha256: str
    decision: str
    label: str
    probabilities: dict[str, float]
    decision_threshold: float | None = None
    calibrated: bool = False
    status: str = "ok"
    reason: str | None = None
    prediction_set: list[str] | None = None
    accession: str | None = None
    study_seed: str = ""  # derives the study UID when there is no DICOM source
    disclaimer: str = DISCLAIMER
    software_version: str = field(default_factory=lambda: _version())


def _version() -> str:
    from medlens import __version__

    return str(__version__)


def _uid(*parts: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["medlens", *parts]))


def _code(value: str, scheme: str, meaning: str) -> Any:
    from pydicom.dataset import Dataset

    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value[:16], scheme, meaning[:64]
    return c


def _item(relationship: str, value_type: str, concept: Any, **values: Any) -> Any:
    from pydicom.dataset import Dataset

    d = Dataset()
    d.RelationshipType = relationship
    d.ValueType = value_type
    d.ConceptNameCodeSequence = [concept]
    for k, v in values.items():
        setattr(d, k, v)
    return d


def _text(concept: Any, text: str, relationship: str = "CONTAINS") -> Any:
    return _item(relationship, "TEXT", concept, TextValue=text)


def _num(concept: Any, value: float) -> Any:
    from pydicom.dataset import Dataset

    mv = Dataset()
    mv.NumericValue = f"{float(value):.6g}"
    mv.MeasurementUnitsCodeSequence = [_code("1", "UCUM", "no units")]
    return _item("CONTAINS", "NUM", concept, MeasuredValueSequence=[mv])


def _content(f: ResultFacts) -> list[Any]:
    device = _code("121007", "DCM", "Device")
    items = [
        _item(
            "HAS OBS CONTEXT",
            "CODE",
            _code("121005", "DCM", "Observer Type"),
            ConceptCodeSequence=[device],
        ),
        _item(
            "HAS OBS CONTEXT",
            "UIDREF",
            _code("121012", "DCM", "Device Observer UID"),
            UID=_uid("device", f.bundle_sha256),
        ),
        _text(_code("121013", "DCM", "Device Observer Name"), f.model_name, "HAS OBS CONTEXT"),
        _text(_code("111001", "DCM", "Algorithm Name"), f.model_name),
        _text(_code("111003", "DCM", "Algorithm Version"), f"{f.bundle_name} {f.bundle_sha256}"),
        _text(_code("121071", "DCM", "Finding"), f.decision),
        _text(_code("STATUS", SCHEME, "Prediction status"), f.status),
    ]
    if f.reason:
        items.append(_text(_code("REASON", SCHEME, "Prediction status reason"), f.reason))
    if f.prediction_set is not None:
        items.append(
            _text(_code("PSET", SCHEME, "Prediction set"), ", ".join(f.prediction_set) or "(empty)")
        )
    for cls, p in f.probabilities.items():
        items.append(_num(_code(f"P-{cls}", SCHEME, f"Probability of {cls}"), p))
    if f.decision_threshold is not None:
        items.append(_num(_code("THRESHOLD", SCHEME, "Decision threshold"), f.decision_threshold))
    items.append(
        _text(
            _code("CALIBRATED", SCHEME, "Probabilities calibrated"),
            "yes" if f.calibrated else "no",
        )
    )
    items.append(_text(_code("121106", "DCM", "Comment"), UNVERIFIED_NOTE + f.disclaimer))
    return items


PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _common(f: ResultFacts, source: Any | None, kind: str, sop_class: str) -> Any:
    """Patient, study, series, equipment and SOP common modules of one output object."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    for kw in PATIENT_STUDY:  # Type 2: present, empty when unknown or de-identified
        value = getattr(source, kw, "") if source is not None else ""
        setattr(ds, kw, value if value is not None else "")
    if source is not None:
        ds.StudyInstanceUID = source.StudyInstanceUID
        for kw in ("PatientIdentityRemoved", "DeidentificationMethod"):
            if kw in source:
                setattr(ds, kw, getattr(source, kw))
    else:
        ds.StudyInstanceUID = _uid("study", f.study_seed or f.result_id)
    if f.accession:
        ds.AccessionNumber = f.accession[:16]
    ds.SeriesInstanceUID = _uid(kind, "series", f.result_id)
    ds.SOPInstanceUID = _uid(kind, "instance", f.result_id)
    ds.SOPClassUID = sop_class
    ds.SeriesNumber = 900 if kind == "sr" else 901
    ds.InstanceNumber = 1
    ds.Manufacturer = "medlens"
    ds.ManufacturerModelName = f.model_name[:64]
    ds.SoftwareVersions = f.software_version
    ds.DeviceSerialNumber = f.bundle_sha256[:16]
    now = datetime.now(UTC)
    created = f.created_at if f.created_at.tzinfo else f.created_at.replace(tzinfo=UTC)
    ds.ContentDate, ds.ContentTime = created.strftime("%Y%m%d"), created.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = (
        now.strftime("%Y%m%d"),
        now.strftime("%H%M%S"),
    )
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def _evidence(source: Any) -> list[Any]:
    """CurrentRequestedProcedureEvidenceSequence: the source image, by study/series/instance."""
    from pydicom.dataset import Dataset

    sop = Dataset()
    sop.ReferencedSOPClassUID = source.SOPClassUID
    sop.ReferencedSOPInstanceUID = source.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = source.SeriesInstanceUID
    series.ReferencedSOPSequence = [sop]
    study = Dataset()
    study.StudyInstanceUID = source.StudyInstanceUID
    study.ReferencedSeriesSequence = [series]
    return [study]


def _linkable(source: Any | None) -> Any | None:
    keys = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
    return source if source is not None and all(k in source for k in keys) else None


def _bytes(ds: Any) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def structured_report(f: ResultFacts, source: Any | None = None) -> bytes:
    """An Enhanced SR (Part 10 bytes) of one result; ``source`` is the DICOM it was made from."""
    source = _linkable(source)
    ds = _common(f, source, "sr", ENHANCED_SR)
    ds.Modality = "SR"
    ds.SeriesDescription = "medlens AI result (unverified)"
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.PerformedProcedureCodeSequence = []
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    if source is not None:
        ds.CurrentRequestedProcedureEvidenceSequence = _evidence(source)
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic imaging report")]
    ds.ContinuityOfContent = "SEPARATE"
    ds.ContentSequence = _content(f)
    return _bytes(ds)


def encapsulated_pdf(pdf: bytes, f: ResultFacts, source: Any | None = None) -> bytes:
    """The PDF report as Encapsulated PDF Storage (Part 10 bytes), in the result's study."""
    source = _linkable(source)
    ds = _common(f, source, "pdf", ENCAPSULATED_PDF)
    ds.Modality = "DOC"
    ds.SeriesDescription = "medlens AI report (unverified)"
    ds.ConversionType = "WSD"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = f"medlens AI report (UNVERIFIED): {f.decision}"[:64]
    ds.ConceptNameCodeSequence = []
    ds.AcquisitionDateTime = ""
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    if source is not None:
        ds.SourceInstanceSequence = (
            _evidence(source)[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
        )
    return _bytes(ds)


# --------------------------------------------------------------------------------------------
# From a stored result (the service) or a prediction (the CLI)
# --------------------------------------------------------------------------------------------


def result_facts(r: Any) -> ResultFacts:
    """Facts of a stored :class:`medlens.serve.db.Result`, with its input-check verdict."""
    from medlens.serve.services import trust_of

    t = trust_of(r)
    pset = t.get("prediction_set")
    status = str(t.get("status") or "ok")
    return ResultFacts(
        result_id=r.id,
        created_at=r.created_at,
        model_name=r.model_name,
        bundle_name=r.bundle_name,
        bundle_sha256=r.bundle_sha256,
        decision=r.decision if status == "ok" else f"not assessed ({status})",
        label=r.label,
        probabilities=dict(r.probabilities),
        decision_threshold=r.decision_threshold,
        calibrated=bool(r.calibrated),
        status=status,
        reason=t.get("reason"),
        prediction_set=list(pset) if pset is not None else None,
        accession=r.image.accession,
        study_seed=r.image_id,
    )


def stored_source(state: Any, r: Any) -> Any | None:
    """The stored (de-identified) DICOM header of the result's image, or None."""
    if r.image.source_format != "dicom":
        return None
    import pydicom

    try:
        path = state.workspace.image_path(r.image.storage_key)
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        return None


def result_sr(state: Any, r: Any) -> bytes:
    return structured_report(result_facts(r), stored_source(state, r))


def result_pdf(state: Any, r: Any, method: str = "gradcam++") -> bytes:
    from medlens.serve.services import report_pdf

    return encapsulated_pdf(report_pdf(state, r, method), result_facts(r), stored_source(state, r))


def prediction_facts(pred: Any, source_name: str) -> ResultFacts:
    """Facts of a :class:`medlens.inference.Prediction` made outside the service (CLI)."""
    from medlens.common import bytes_sha256

    pset = getattr(pred, "prediction_set", None)
    status = str(getattr(pred, "status", None) or "ok")
    rid = bytes_sha256(f"{source_name}|{pred.bundle_sha256}".encode())[:32]
    return ResultFacts(
        result_id=rid,
        created_at=datetime.now(UTC),
        model_name=pred.model,
        bundle_name=pred.model,
        bundle_sha256=pred.bundle_sha256,
        decision=(pred.decision or pred.label) if status == "ok" else f"not assessed ({status})",
        label=pred.label,
        probabilities={k: float(v) for k, v in pred.probabilities.items()},
        decision_threshold=pred.decision_threshold,
        calibrated=bool(pred.calibrated),
        status=status,
        reason=getattr(pred, "reason", None),
        prediction_set=list(pset) if pset is not None else None,
        study_seed=rid,
    )


def write_predictions(out_dir: Any, files: Sequence[Any], predictions: Sequence[Any]) -> list[Any]:
    """One SR per readable input into ``out_dir`` (DICOM inputs: in their own study); paths."""
    from pathlib import Path

    import pydicom

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for f, pred in zip(files, predictions, strict=True):
        if isinstance(pred, Exception) or not hasattr(pred, "probabilities"):
            continue  # unreadable (or resumed from an earlier run's CSV): nothing to report
        source = None
        try:
            source = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:
            source = None  # not DICOM: a study of its own
        facts = prediction_facts(pred, str(f))
        target = out / f"{Path(f).stem}.sr.dcm"
        target.write_bytes(structured_report(facts, source))
        written.append(target)
    return written
