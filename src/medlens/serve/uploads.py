"""Uploads: checked cheaply, decoded and validated, de-identified - all before anything is stored.

The order matters. Size is checked on the raw bytes; the format from the content's magic bytes
(never the name); the pixel count from the header (PNG IHDR, JPEG SOF via Pillow's lazy open,
DICOM Rows/Columns without pixel data), so a 20,000 x 20,000 "image" is refused before a single
row is decompressed. Only then is the image decoded with :func:`medlens.inference.decode_image` -
the loader training used - from a private temporary file inside the workspace that is deleted
whatever happens. DICOM identifying attributes are removed *before* that temporary file is
written, so the identifiers never reach the disk.

What is stored is never the user's file: PNG and JPEG become a metadata-free PNG of the decoded
pixels (no EXIF, XMP or text chunks that could carry a name; 8-bit sources round-trip exactly),
and DICOM the de-identified object. The user's file name survives only as sanitised display text.

Batches arrive as many files or as one zip. Zip entries are read in memory through
:mod:`zipfile` with a read limit per entry (declared sizes can lie) and a total budget, and never
extracted, so entry names such as ``../../etc/passwd`` are inert display text.

Decoding runs under the process's pixel budget (:mod:`.pixelbudget`): the header's pixel count
is leased before the decode and held by the :class:`ValidatedImage` until its prediction is
stored (:meth:`ValidatedImage.release`, or when it is garbage-collected), so concurrent huge
images queue instead of exhausting memory.
"""

from __future__ import annotations

import io
import os
import re
import struct
import unicodedata
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from medlens.inference import ImageReadError, LoadedImage, decode_image
from medlens.serve import pixelbudget
from medlens.serve.formats import BY_KIND, decode_suffix, names_text, sniff, stored_suffix


class UploadRejected(Exception):
    """An upload refused for a reason the user can act on; ``status`` is the HTTP code."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


@dataclass
class ValidatedImage:
    kind: str  # an upload format's name (medlens.serve.formats): png | jpeg | dicom
    loaded: LoadedImage
    stored_bytes: bytes
    suffix: str
    width: int
    height: int
    display_name: str
    deidentified: bool
    removed_tags: list[str] = field(default_factory=list)
    lease: pixelbudget.Lease | None = field(default=None, repr=False)

    def release(self) -> None:
        """Give the decoded pixels' budget back (the prediction is done with them)."""
        if self.lease is not None:
            self.lease.release()


# DICOM PS3.15 Annex E basic application level confidentiality profile: the attributes that
# identify a patient, a clinician, an institution or a visit. Every person name (VR PN), every
# date/time, every private tag and every overlay/curve group is removed as well; UIDs are
# replaced by fresh ones so the stored object cannot be linked back to the source study.
DEIDENTIFY_KEYWORDS: frozenset[str] = frozenset(
    {
        "AccessionNumber",
        "AcquisitionComments",
        "AcquisitionDeviceProcessingDescription",
        "ActualHumanPerformersSequence",
        "AdditionalPatientHistory",
        "AdmissionID",
        "AdmittingDiagnosesCodeSequence",
        "AdmittingDiagnosesDescription",
        "Allergies",
        "Arbitrary",
        "AuthorObserverSequence",
        "BranchOfService",
        "CommentsOnThePerformedProcedureStep",
        "ConsultingPhysicianName",
        "ContentCreatorName",
        "ContentSequence",
        "ContributionDescription",
        "CountryOfResidence",
        "CurrentPatientLocation",
        "CustodialOrganizationSequence",
        "DerivationDescription",
        "DeviceSerialNumber",
        "DeviceUID",
        "DischargeDiagnosisDescription",
        "EthnicGroup",
        "FillerOrderNumberImagingServiceRequest",
        "FrameComments",
        "GraphicAnnotationSequence",
        "HumanPerformerName",
        "HumanPerformerOrganization",
        "IconImageSequence",
        "IdentifyingComments",
        "ImageComments",
        "ImagePresentationComments",
        "ImagingServiceRequestComments",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "InstitutionCodeSequence",
        "InstitutionName",
        "InsurancePlanIdentification",
        "IntendedRecipientsOfResultsIdentificationSequence",
        "InterpretationApproverSequence",
        "InterpretationAuthor",
        "InterpretationRecorder",
        "InterpretationTranscriber",
        "IssuerOfAdmissionID",
        "IssuerOfPatientID",
        "MedicalAlerts",
        "MedicalRecordLocator",
        "MilitaryRank",
        "ModifiedAttributesSequence",
        "NameOfPhysiciansReadingStudy",
        "NamesOfIntendedRecipientsOfResults",
        "Occupation",
        "OperatorIdentificationSequence",
        "OperatorsName",
        "OriginalAttributesSequence",
        "OrderCallbackPhoneNumber",
        "OrderEnteredBy",
        "OrderEntererLocation",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "ParticipantSequence",
        "PatientAddress",
        "PatientAge",
        "PatientBirthDate",
        "PatientBirthName",
        "PatientBirthTime",
        "PatientComments",
        "PatientID",
        "PatientInsurancePlanCodeSequence",
        "PatientMotherBirthName",
        "PatientName",
        "PatientPrimaryLanguageCodeSequence",
        "PatientReligiousPreference",
        "PatientSex",
        "PatientSexNeutered",
        "PatientSize",
        "PatientState",
        "PatientTelephoneNumbers",
        "PatientTransportArrangements",
        "PatientWeight",
        "PerformedLocation",
        "PerformedProcedureStepDescription",
        "PerformedProcedureStepID",
        "PerformingPhysicianIdentificationSequence",
        "PerformingPhysicianName",
        "PersonAddress",
        "PersonIdentificationCodeSequence",
        "PersonName",
        "PersonTelephoneNumbers",
        "PhysicianApprovingInterpretation",
        "PhysiciansOfRecord",
        "PhysiciansOfRecordIdentificationSequence",
        "PhysiciansReadingStudyIdentificationSequence",
        "PlacerOrderNumberImagingServiceRequest",
        "PregnancyStatus",
        "ProtocolName",
        "ReasonForStudy",
        "ReferencedPatientAliasSequence",
        "ReferencedPatientPhotoSequence",
        "ReferencedPatientSequence",
        "ReferencedPerformedProcedureStepSequence",
        "ReferencedStudySequence",
        "ReferringPhysicianAddress",
        "ReferringPhysicianIdentificationSequence",
        "ReferringPhysicianName",
        "ReferringPhysicianTelephoneNumbers",
        "RegionOfResidence",
        "RequestAttributesSequence",
        "RequestedProcedureComments",
        "RequestedProcedureDescription",
        "RequestedProcedureID",
        "RequestedProcedureLocation",
        "RequestingPhysician",
        "RequestingService",
        "ResponsibleOrganization",
        "ResponsiblePerson",
        "ResultsComments",
        "ResultsDistributionListSequence",
        "ScheduledHumanPerformersSequence",
        "ScheduledPatientInstitutionResidence",
        "ScheduledPerformingPhysicianIdentificationSequence",
        "ScheduledPerformingPhysicianName",
        "ScheduledProcedureStepDescription",
        "ScheduledProcedureStepID",
        "ScheduledProcedureStepLocation",
        "SeriesDescription",
        "SmokingStatus",
        "SpecialNeeds",
        "StationName",
        "StudyComments",
        "StudyDescription",
        "StudyID",
        "TextComments",
        "TextString",
        "TopicAuthor",
        "TopicKeywords",
        "TopicSubject",
        "TopicTitle",
        "VerifyingObserverIdentificationCodeSequence",
        "VerifyingObserverName",
        "VerifyingObserverSequence",
        "VerifyingOrganization",
        "VisitComments",
    }
)
_UID_KEYWORDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "SynchronizationFrameOfReferenceUID",
    "IrradiationEventUID",
)


def sanitise_name(name: str | None, fallback: str = "upload") -> str:
    """Display text from a user's file name: last path component, printable, at most 120 chars.

    Never used to build a path; templates escape it again on output.
    """
    raw = name or ""
    base = PureWindowsPath(PurePosixPath(raw).name).name  # strips "/" and "\\" components
    base = unicodedata.normalize("NFKC", base)
    base = "".join(ch for ch in base if ch.isprintable() and unicodedata.category(ch)[0] != "C")
    base = re.sub(r"\s+", " ", base).strip().lstrip(".")
    return (base or fallback)[:120]


def sniff_kind(data: bytes) -> str:
    """The upload format of ``data`` from its content, or :class:`UploadRejected` saying what it is."""
    fmt, detected = sniff(data[:4096])
    if fmt is not None:
        return fmt.name
    sample = data[:16]
    if detected == "zip" or data.startswith(b"PK\x03\x04"):
        what = "it is a zip archive (use the batch upload for archives)"
    elif detected:
        what = f"it is a {detected.upper()} file, which this server does not accept"
    else:
        try:
            text = sample.decode("utf-8")
            what = f"it starts with text {text[:12]!r}" if text.isprintable() else ""
        except UnicodeDecodeError:
            what = ""
        what = what or f"it starts with bytes {sample[:8].hex(' ')}"
    raise UploadRejected(
        415,
        f"Not a {names_text()} image: the content does not match any of them "
        f"({what}). DICOM files need the standard 128-byte preamble and 'DICM' prefix.",
    )


def _png_size(data: bytes) -> tuple[int, int]:
    # Signature (8) + IHDR length (4) + "IHDR" (4) + width (4) + height (4).
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise UploadRejected(400, "Corrupt PNG: the IHDR header is missing.")
    w, h = struct.unpack(">II", data[16:24])
    return int(w), int(h)


def _pil_size(data: bytes, kind: str, max_pixels: int) -> tuple[int, int]:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                return int(im.size[0]), int(im.size[1])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadRejected(
            413, f"Image too large: more than the {max_pixels / 1e6:.0f} megapixel limit."
        ) from None
    except Exception as exc:
        raise UploadRejected(400, f"Corrupt {kind.upper()} header: {exc}") from None


def _dicom_header(data: bytes) -> Any:
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as exc:
        raise UploadRejected(400, f"Corrupt DICOM file: {exc}") from None


def check_pixels(width: int, height: int, frames: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise UploadRejected(400, f"Image has no pixels ({width} x {height}).")
    total = width * height * max(frames, 1)
    if total > max_pixels:
        frames_txt = f" x {frames} frames" if frames > 1 else ""
        raise UploadRejected(
            413,
            f"Image too large: {width} x {height}{frames_txt} = {total / 1e6:.1f} megapixels, "
            f"over the {max_pixels / 1e6:.0f} megapixel limit.",
        )


def deidentify_dicom(ds: Any) -> list[str]:
    """Remove identifying attributes in place (all nesting levels); return what was removed."""
    from pydicom.uid import generate_uid

    removed: set[str] = set()

    def visit(dataset: Any) -> None:
        for elem in list(dataset):
            group = elem.tag.group
            kw = elem.keyword or ""
            drop = (
                elem.tag.is_private
                or kw in DEIDENTIFY_KEYWORDS
                or elem.VR in ("PN", "DA", "DT", "TM")
                or 0x6000 <= group <= 0x60FF  # overlays can hold burned-in text
                or 0x5000 <= group <= 0x50FF  # curves
            )
            if drop:
                removed.add(kw or str(elem.tag))
                del dataset[elem.tag]
            elif elem.VR == "SQ":
                for item in elem.value:
                    visit(item)

    visit(ds)
    new_uids = {}
    for kw in _UID_KEYWORDS:
        if kw in ds:
            new_uids[kw] = generate_uid()
            setattr(ds, kw, new_uids[kw])
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = new_uids.get("SOPInstanceUID", generate_uid())
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "medlens: PS3.15 basic profile attributes, names, dates removed"
    return sorted(removed)


def _decode(data: bytes, suffix: str, tmp_dir: Path) -> LoadedImage:
    """Decode with the training loader through a private temporary file that never outlives us."""
    import tempfile

    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(suffix=suffix, dir=tmp_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            return decode_image(name)
        except ImageReadError as exc:
            raise UploadRejected(422, f"The image could not be decoded: {exc.reason}") from None
    finally:
        Path(name).unlink(missing_ok=True)


def canonical_png(loaded: LoadedImage) -> bytes:
    """Decoded pixels as a metadata-free PNG; 8-bit sources round-trip exactly."""
    from PIL import Image

    # One float temporary, worked in place: for a 49-megapixel film each extra copy is 200 MB.
    a = np.clip(np.asarray(loaded.array, dtype=np.float32), 0.0, 1.0)
    eight = a.ndim == 3 or loaded.bit_depth <= 8
    a *= 255.0 if eight else 65535.0
    np.rint(a, out=a)
    img = Image.fromarray(a.astype(np.uint8 if eight else np.uint16))
    del a
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _check_png(data: bytes, max_pixels: int, _keep: bool) -> tuple[bytes, list[str]]:
    w, h = _png_size(data)
    check_pixels(w, h, 1, max_pixels)
    _pil_size(data, "png", max_pixels)
    return data, []


def _check_jpeg(data: bytes, max_pixels: int, _keep: bool) -> tuple[bytes, list[str]]:
    w, h = _pil_size(data, "jpeg", max_pixels)
    check_pixels(w, h, 1, max_pixels)
    return data, []


def _check_dicom(data: bytes, max_pixels: int, keep_identifiers: bool) -> tuple[bytes, list[str]]:
    """Size from the header, then (unless told to keep them) the identifiers removed."""
    ds = _dicom_header(data)
    w, h = int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0)
    if not w or not h:
        raise UploadRejected(422, "DICOM file without an image (no Rows/Columns).")
    frames = int(str(ds.get("NumberOfFrames", 1) or 1))
    check_pixels(w, h, frames, max_pixels)
    if keep_identifiers:
        return data, []
    import pydicom

    try:
        full = pydicom.dcmread(io.BytesIO(data))
        removed = deidentify_dicom(full)
        buf = io.BytesIO()
        full.save_as(buf)
    except Exception as exc:
        raise UploadRejected(422, f"The DICOM file could not be read: {exc}") from None
    return buf.getvalue(), removed


# Per upload format (keyed like medlens.serve.formats): refuse a pixel bomb from its header and
# return the bytes to decode (and the DICOM attributes removed), before anything is decoded.
HEADER_CHECKS = {"png": _check_png, "jpeg": _check_jpeg, "dicom": _check_dicom}


def header_pixels(kind: str, data: bytes, max_pixels: int) -> int:
    """Pixels the decode of already-checked ``data`` will produce (width x height x frames)."""
    if kind == "png":
        w, h = _png_size(data)
        return w * h
    if kind == "dicom":
        ds = _dicom_header(data)
        frames = int(str(ds.get("NumberOfFrames", 1) or 1))
        return int(ds.get("Columns", 0) or 0) * int(ds.get("Rows", 0) or 0) * max(frames, 1)
    w, h = _pil_size(data, kind, max_pixels)
    return w * h


def _lease(pixels: int, budget: pixelbudget.PixelBudget | None) -> pixelbudget.Lease:
    """The budget lease for a decode: queued while full, refused when it can never fit."""
    try:
        return (budget or pixelbudget.shared()).acquire(pixels)
    except (pixelbudget.BudgetExceeded, pixelbudget.BudgetTimeout) as exc:
        raise UploadRejected(exc.status, exc.message) from None


def validate_upload(
    data: bytes,
    filename: str | None,
    *,
    max_bytes: int,
    max_pixels: int,
    tmp_dir: Path,
    keep_dicom_identifiers: bool = False,
    budget: pixelbudget.PixelBudget | None = None,
) -> ValidatedImage:
    """Check, decode and prepare one upload for storage, or raise :class:`UploadRejected`.

    The decode waits for its pixels in ``budget`` (default: the process's shared budget); the
    returned image holds them until :meth:`ValidatedImage.release`.
    """
    display = sanitise_name(filename)
    if not data:
        raise UploadRejected(400, "The file is empty.")
    if len(data) > max_bytes:
        raise UploadRejected(
            413,
            f"File too large: {len(data) / 1e6:.1f} MB, the limit is {max_bytes / 1024 / 1024:.0f} MB.",
        )
    kind = sniff_kind(data)
    check = HEADER_CHECKS.get(kind)
    if check is None:  # in the upload table, but this server cannot check its header
        raise UploadRejected(415, f"{kind.upper()} uploads are not supported by this server.")
    fmt = BY_KIND[kind]
    to_decode, removed = check(data, max_pixels, keep_dicom_identifiers)
    suffix = decode_suffix(fmt)
    lease = _lease(header_pixels(kind, to_decode, max_pixels), budget)
    try:
        loaded = _decode(to_decode, suffix, tmp_dir)
        arr = loaded.array
        if arr.ndim not in (2, 3) or not np.isfinite(arr).all():
            raise UploadRejected(422, "The decoded image is not a finite 2-D image.")
        # Kept: the de-identified DICOM itself, or a metadata-free PNG of the decoded pixels.
        stored = to_decode if stored_suffix(fmt) == ".dcm" else canonical_png(loaded)
    except BaseException:
        lease.release()
        raise
    v = ValidatedImage(
        kind=kind,
        loaded=loaded,
        stored_bytes=stored,
        suffix=stored_suffix(fmt),
        width=int(arr.shape[1]),
        height=int(arr.shape[0]),
        display_name=display,
        deidentified=kind == "dicom" and not keep_dicom_identifiers,
        removed_tags=removed,
        lease=lease,
    )
    lease.bind(v)  # released at the latest when the request lets go of the image
    return v


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


@dataclass
class BatchEntry:
    display_name: str
    data: bytes | None
    error: str | None = None


def _zip_entry_count(data: bytes) -> int:
    """Entry count from the end-of-central-directory record, read before zipfile parses it."""
    start = max(0, len(data) - 65557)
    pos = data.rfind(b"PK\x05\x06", start)
    if pos < 0 or pos + 22 > len(data):
        raise UploadRejected(400, "Not a valid zip archive (no end-of-archive record).")
    total = struct.unpack("<H", data[pos + 10 : pos + 12])[0]
    if total == 0xFFFF:
        raise UploadRejected(413, "Zip64 archives are not accepted: too many entries.")
    return int(total)


def read_zip(
    data: bytes, *, max_files: int, max_entry_bytes: int, max_total: int
) -> list[BatchEntry]:
    """Entries of a zip read in memory, each capped; never extracted to disk."""
    n = _zip_entry_count(data)
    if n > max_files * 2 + 10:  # directories and junk entries count too, within reason
        raise UploadRejected(413, f"Too many entries in the archive ({n}); limit {max_files}.")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UploadRejected(400, f"Not a valid zip archive: {exc}") from None
    out: list[BatchEntry] = []
    budget = max_total
    with zf:
        infos = [
            i
            for i in zf.infolist()
            if not i.is_dir()
            and not PurePosixPath(i.filename).name.startswith(".")
            and not i.filename.startswith("__MACOSX/")
        ]
        if len(infos) > max_files:
            raise UploadRejected(
                413, f"Too many files in the archive ({len(infos)}); the limit is {max_files}."
            )
        if not infos:
            raise UploadRejected(400, "The archive holds no files.")
        for info in infos:
            name = sanitise_name(info.filename)
            if info.flag_bits & 0x1:
                out.append(BatchEntry(name, None, "encrypted archive entry: not read"))
                continue
            if info.file_size > max_entry_bytes:
                out.append(BatchEntry(name, None, "file too large for the per-file limit"))
                continue
            try:
                with zf.open(info) as fh:
                    content = fh.read(min(max_entry_bytes, budget) + 1)
            except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError) as exc:
                out.append(BatchEntry(name, None, f"unreadable archive entry: {exc}"))
                continue
            if len(content) > max_entry_bytes:
                out.append(BatchEntry(name, None, "file too large for the per-file limit"))
                continue
            if len(content) > budget:
                raise UploadRejected(
                    413,
                    f"The archive expands to more than {max_total / 1024 / 1024:.0f} MB; "
                    "split it into smaller batches.",
                )
            budget -= len(content)
            out.append(BatchEntry(name, content))
    return out
