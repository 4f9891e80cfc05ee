"""Shared helpers for the serve tests (no tests here): app and client factories, and builders
for hostile files. The trained bundle they serve is the session fixture ``serve_bundles``
(tests/conftest.py)."""

from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")
pytest.importorskip("argon2")

PASSWORD = "correct horse battery staple"


def make_app(workspace: Path, bundles: list[Path], **overrides: Any):  # type: ignore[no-untyped-def]
    from medlens.serve import ServeSettings, create_app

    # Sign-up open: the tests make their users through the sign-up page (it is closed by default).
    opts: dict[str, Any] = {
        "login_max_per_ip": 1000,
        "warm_explanations": False,
        "signup_open": True,
    }
    opts.update(overrides)
    return create_app(ServeSettings(bundles=bundles, workspace=workspace, **opts))


def csrf(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "page has no CSRF token"
    return m.group(1)


def new_client(app, **kw):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    return TestClient(app, follow_redirects=False, **kw)


def signup(app, username: str, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    """A client logged in as a new user."""
    c = new_client(app)
    tok = csrf(c.get("/signup").text)
    r = c.post(
        "/signup",
        data={"csrf_token": tok, "username": username, "password": password, "password2": password},
    )
    assert r.status_code == 303, r.text[:500]
    return c


def token_of(client) -> str:  # type: ignore[no-untyped-def]
    return csrf(client.get("/upload").text)


def upload(client, data: bytes, name: str = "scan.png", model: str = ""):  # type: ignore[no-untyped-def]
    return client.post(
        "/upload",
        data={"csrf_token": token_of(client), "model": model},
        files={"file": (name, data, "application/octet-stream")},
    )


def upload_ok(client, data: bytes, name: str = "scan.png", model: str = "") -> str:  # type: ignore[no-untyped-def]
    r = upload(client, data, name, model)
    assert r.status_code == 303, r.text[:800]
    return r.headers["location"].rsplit("/", 1)[-1]


def api_token(client) -> str:  # type: ignore[no-untyped-def]
    tok = csrf(client.get("/tokens").text)
    r = client.post("/tokens", data={"csrf_token": tok, "name": "script"})
    assert r.status_code == 200
    m = re.search(r'id="new-token" class="token" readonly value="(mlt_[^"]+)"', r.text)
    assert m, "new token not shown"
    return m.group(1)


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A real, valid 1-bit PNG of ``width x height`` black pixels (about 50 kB on disk)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
        )

    row = b"\x00" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    raw = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def tiny_dicom(
    patient_name: str = "Doe^Jane", patient_id: str = "MRN-0042-XYZ", size: int = 48
) -> bytes:
    """A small valid DICOM (Part 10) with identifying attributes set, a private tag included."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.InstitutionName = "St Elsewhere Hospital"
    ds.ReferringPhysicianName = "House^Gregory"
    ds.AccessionNumber = "ACC-998877"
    ds.StudyDate = "20240102"
    ds.Modality = "DX"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    yy, xx = np.mgrid[0:size, 0:size]
    ds.PixelData = ((xx + yy) * (4095 // (2 * size))).astype(np.uint16).tobytes()
    block = ds.private_block(0x0009, "ACME IMAGING", create=True)
    block.add_new(0x10, "LO", "Jane Doe private copy")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def make_zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def wait_for_job(client, job_id: str, timeout: float = 90.0) -> dict:  # type: ignore[no-untyped-def]
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        s = client.get(f"/batch/{job_id}/status").json()
        if s["status"] not in ("queued", "running"):
            return s
        time.sleep(0.2)
    raise AssertionError(f"batch {job_id} did not finish: {s}")


def app_routes() -> list[tuple[str, set[str]]]:
    """(path, methods) of every page and API route, read from the app's routers themselves.

    The API docs router is left out: it serves a fixed page and a package's static files, and
    holds no one's data.
    """
    from medlens.serve import docs
    from medlens.serve.app import ROUTERS

    return [
        (r.path, set(r.methods))
        for router in ROUTERS
        if router is not docs.router
        for r in router.routes
        if hasattr(r, "methods")
    ]


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def small_pngs(n: int, size: int = 32, seed: int = 0) -> list[bytes]:
    """``n`` distinct grey PNGs of ``size`` pixels (batch and queue tests)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def account_with_token(state, username: str = "batcher") -> tuple[Any, str]:  # type: ignore[no-untyped-def]
    """A clinician account and an API token, made directly in the service's database."""
    from medlens.serve import accounts

    with state.db() as db:
        user = accounts.create_user(db, username, PASSWORD, role=None, min_password_length=10)
        _, token = accounts.create_api_token(db, user, "tests")
    return user, token


def queue_batch(state, user, pngs: list[bytes]) -> str:  # type: ignore[no-untyped-def]
    """Queue a batch of PNGs for ``user`` through the intake path; the job id."""
    from medlens.serve import batch
    from medlens.serve.uploads import BatchEntry

    entries = [BatchEntry(f"img{i:04d}.png", data) for i, data in enumerate(pngs)]
    with state.db() as db:
        db_user = db.merge(user)
        job = batch.create_job(state, db, db_user, entries, next(iter(state.models)).key)
        return job.id


def job_audit(state, job_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """What happened to every file of a batch, and which workspace files no row refers to."""
    from sqlalchemy import func, select

    from medlens.serve.db import BatchItem, BatchJob, Result, StoredImage

    ws = state.workspace
    with state.db() as db:
        job = db.get(BatchJob, job_id)
        items = list(db.scalars(select(BatchItem).where(BatchItem.job_id == job_id)).unique())
        results = db.scalars(select(Result.id).where(Result.batch_id == job_id)).all()
        keys = set(db.scalars(select(StoredImage.storage_key)).all())
        owners = set(db.scalars(select(StoredImage.id)).all()) | set(
            db.scalars(select(Result.id)).all()
        )
        per_image = db.execute(
            select(Result.image_id, func.count()).group_by(Result.image_id)
        ).all()
    on_disk = {f"{p.parent.name}/{p.name}" for p in ws.images.glob("*/*") if p.is_file()}
    linked = [it.result_id for it in items if it.result_id is not None]
    return {
        "status": job.status,
        "done": job.done,
        "failed": job.failed,
        "items": {it.status for it in items},
        "n_items": len(items),
        "with_result": sum(it.result_id is not None for it in items),
        "with_error": sum(it.error is not None for it in items),
        "results": len(results),
        "distinct_results": len(set(results)),
        "items_sharing_result": len(linked) - len(set(linked)),
        "max_results_per_image": max((n for _, n in per_image), default=0),
        "reclaimed": sum(it.attempts > 1 for it in items),
        "orphan_images": sorted(on_disk - keys),
        "orphan_derived": sorted(
            p.name for p in ws.derived.iterdir() if p.is_dir() and p.name not in owners
        ),
        "staged_left": sorted(str(p) for p in ws.staging.rglob("*") if p.is_file()),
        "partials": sorted(str(p) for p in ws.root.rglob(".part-*")),
    }
