"""Results out as DICOM: a Structured Report and an encapsulated PDF per result, read back with
pydicom; linked to the uploaded study when the upload was DICOM; marked UNVERIFIED."""

from __future__ import annotations

import io

import pytest

from tests.test_serve_support import (
    api_token,
    make_app,
    new_client,
    signup,
    small_pngs,
    tiny_dicom,
)

pydicom = pytest.importorskip("pydicom")
pytestmark = pytest.mark.timeout(300)

ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
# Type 1 and Type 2 attributes of the modules each object must carry (PS3.3 A.35.2, A.45.1).
COMMON = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "InstanceNumber",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "Manufacturer",
    "Modality",
    "ContentDate",
    "ContentTime",
]
SR_ONLY = [
    "CompletionFlag",
    "VerificationFlag",
    "ValueType",
    "ConceptNameCodeSequence",
    "ContinuityOfContent",
    "ContentSequence",
    "PerformedProcedureCodeSequence",
    "ReferencedPerformedProcedureStepSequence",
]
PDF_ONLY = [
    "ConversionType",
    "BurnedInAnnotation",
    "DocumentTitle",
    "MIMETypeOfEncapsulatedDocument",
    "EncapsulatedDocument",
    "ConceptNameCodeSequence",
    "AcquisitionDateTime",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory, serve_bundles, database_url):
    ws = tmp_path_factory.mktemp("ws_dicom")
    app = make_app(ws, [serve_bundles["a"]], database_url=database_url)
    with new_client(app):
        alice = signup(app, "alice")
        bob = signup(app, "bob")
        api = new_client(app, headers={"Authorization": f"Bearer {api_token(alice)}"})
        yield {"app": app, "alice": alice, "bob": bob, "api": api}


def _read(data: bytes):  # type: ignore[no-untyped-def]
    return pydicom.dcmread(io.BytesIO(data))


def _content(ds) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """{concept meaning: text, code meaning or number} of the SR's content items."""
    out: dict[str, object] = {}
    for item in ds.ContentSequence:
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        if item.ValueType == "TEXT":
            out[name] = item.TextValue
        elif item.ValueType == "NUM":
            out[name] = float(item.MeasuredValueSequence[0].NumericValue)
        elif item.ValueType == "CODE":
            out[name] = item.ConceptCodeSequence[0].CodeMeaning
        elif item.ValueType == "UIDREF":
            out[name] = item.UID
    return out


def test_dicom_upload_gets_an_sr_and_a_pdf_in_its_own_study(env):
    api = env["api"]
    r = api.post("/api/v1/predict", files={"file": ("study.dcm", tiny_dicom())})
    assert r.status_code == 201, r.text
    res = r.json()
    sr_resp = api.get(res["links"]["dicom_sr"].replace("http://testserver", ""))
    assert sr_resp.status_code == 200 and sr_resp.headers["content-type"] == "application/dicom"
    sr = _read(sr_resp.content)
    for kw in (*COMMON, *SR_ONLY):
        assert kw in sr, kw
    assert sr.SOPClassUID == ENHANCED_SR and sr.file_meta.MediaStorageSOPClassUID == ENHANCED_SR
    assert sr.Modality == "SR" and sr.VerificationFlag == "UNVERIFIED"
    assert sr.CompletionFlag == "COMPLETE" and sr.ValueType == "CONTAINER"

    # The study of the stored (de-identified) upload: same UIDs, the image as evidence, and
    # nothing identifying carried over from the original file.
    st = env["app"].state.medlens
    from medlens.serve.db import Result

    with st.db() as db:
        key = db.get(Result, res["id"]).image.storage_key
    stored = pydicom.dcmread(st.workspace.image_path(key), stop_before_pixels=True)
    assert sr.StudyInstanceUID == stored.StudyInstanceUID
    ev = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert ev.StudyInstanceUID == stored.StudyInstanceUID
    ref = ev.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == stored.SeriesInstanceUID
    assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == stored.SOPInstanceUID
    assert str(sr.PatientName) == "" and sr.PatientID == "" and sr.PatientIdentityRemoved == "YES"
    assert b"Doe^Jane" not in sr_resp.content and b"MRN-0042" not in sr_resp.content

    items = _content(sr)
    assert items["Algorithm Name"] == res["model"]
    assert res["bundle"]["sha256"] in items["Algorithm Version"]
    assert items["Observer Type"] == "Device"
    # The input check may refuse the synthetic DICOM (it is unlike the training images): the SR
    # then says so instead of giving a class.
    assert items["Prediction status"] == res["status"]
    if res["status"] == "ok":
        assert items["Finding"] == res["decision"]
    else:
        assert items["Finding"] == f"not assessed ({res['status']})"
    for cls, p in res["probabilities"].items():
        assert items[f"Probability of {cls}"] == pytest.approx(p, abs=1e-5)
    assert "UNVERIFIED" in items["Comment"] and "clinician" in items["Comment"]

    pdf_resp = api.get(f"/api/v1/results/{res['id']}/dicom-pdf.dcm")
    assert pdf_resp.status_code == 200
    pdf = _read(pdf_resp.content)
    for kw in (*COMMON, *PDF_ONLY):
        assert kw in pdf, kw
    assert pdf.SOPClassUID == ENCAPSULATED_PDF and pdf.Modality == "DOC"
    assert pdf.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert pdf.EncapsulatedDocument.startswith(b"%PDF")
    assert len(pdf.EncapsulatedDocument) >= int(pdf.EncapsulatedDocumentLength)
    assert pdf.StudyInstanceUID == sr.StudyInstanceUID  # one study, two series
    assert pdf.SeriesInstanceUID != sr.SeriesInstanceUID


def test_png_upload_gets_a_study_of_its_own_and_downloads_are_stable(env):
    api = env["api"]
    r = api.post("/api/v1/predict", files={"file": ("scan.png", small_pngs(1, 48)[0])})
    rid = r.json()["id"]
    first = _read(api.get(f"/api/v1/results/{rid}/dicom-sr.dcm").content)
    again = _read(api.get(f"/api/v1/results/{rid}/dicom-sr.dcm").content)
    assert "CurrentRequestedProcedureEvidenceSequence" not in first
    assert first.SOPInstanceUID == again.SOPInstanceUID  # a PACS stores it once
    assert first.StudyInstanceUID == again.StudyInstanceUID
    assert first.VerificationFlag == "UNVERIFIED"


def test_result_page_offers_the_downloads_to_its_owner_only(env):
    alice, bob = env["alice"], env["bob"]
    r = env["api"].post("/api/v1/predict", files={"file": ("page.png", small_pngs(1, 48)[0])})
    rid = r.json()["id"]
    page = alice.get(f"/results/{rid}").text
    assert f"/results/{rid}/dicom-sr.dcm" in page and f"/results/{rid}/dicom-pdf.dcm" in page
    for kind in ("sr", "pdf"):
        got = alice.get(f"/results/{rid}/dicom-{kind}.dcm")
        assert got.status_code == 200 and got.content[128:132] == b"DICM"
        assert bob.get(f"/results/{rid}/dicom-{kind}.dcm").status_code == 404


def test_predict_cli_writes_structured_reports(tmp_path, serve_bundles):
    from typer.testing import CliRunner

    from medlens.cli import app

    img = tmp_path / "in" / "chest.png"
    img.parent.mkdir()
    img.write_bytes(small_pngs(1, 48)[0])
    (tmp_path / "in" / "study.dcm").write_bytes(tiny_dicom())
    out = tmp_path / "sr"
    r = CliRunner().invoke(
        app, ["predict", str(serve_bundles["a"]), str(img.parent), "--dicom-out", str(out)]
    )
    assert r.exit_code == 0, r.output
    written = sorted(out.glob("*.dcm"))
    assert [p.name for p in written] == ["chest.sr.dcm", "study.sr.dcm"]
    source = pydicom.dcmread(img.parent / "study.dcm", stop_before_pixels=True)
    for p in written:
        ds = pydicom.dcmread(p)
        assert ds.SOPClassUID == ENHANCED_SR and ds.VerificationFlag == "UNVERIFIED"
        assert "Finding" in _content(ds)
    linked = pydicom.dcmread(out / "study.sr.dcm")
    assert linked.StudyInstanceUID == source.StudyInstanceUID  # the CLI reads the original
