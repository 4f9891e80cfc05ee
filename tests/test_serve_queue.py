"""The durable batch queue: claims, leases, two workers on one queue, and kill -9 of the server
and a worker in the middle of a 200-file batch. Runs on SQLite and (when configured) PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from tests.test_serve_support import (
    account_with_token,
    job_audit,
    make_app,
    make_zip,
    queue_batch,
    small_pngs,
)

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def queue_app(tmp_path, serve_bundles, fresh_database_url):
    """An app whose web process runs no worker: the tests drive the workers themselves."""
    app = make_app(
        tmp_path / "ws",
        [serve_bundles["a"]],
        database_url=fresh_database_url,
        batch_worker=False,
        warm_models=False,
        orphan_grace_s=0,
    )
    yield app
    if app.state.medlens.engine is not None:
        app.state.medlens.engine.dispose()


def test_two_workers_on_one_queue_process_each_item_once(queue_app):
    from medlens.serve.jobs import Worker

    st = queue_app.state.medlens
    user, _ = account_with_token(st)
    job_id = queue_batch(st, user, small_pngs(40))
    workers = [Worker(st, name=f"w{i}", poll_s=0.05) for i in range(2)]
    threads = [threading.Thread(target=w.run, kwargs={"until_idle": True}) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    audit = job_audit(st, job_id)
    assert sum(w.processed for w in workers) == 40  # each item claimed by exactly one worker
    assert audit["status"] == "done" and audit["items"] == {"done"}
    assert audit["done"] == 40 and audit["failed"] == 0
    assert audit["with_result"] == audit["results"] == audit["distinct_results"] == 40
    assert audit["items_sharing_result"] == 0 and audit["max_results_per_image"] == 1
    assert audit["reclaimed"] == 0
    assert audit["staged_left"] == [] and audit["orphan_images"] == []


def test_an_expired_lease_is_taken_over_and_the_slow_worker_keeps_nothing(queue_app, monkeypatch):
    """Worker A claims a file and stalls past its lease; B takes it over. Whether A notices
    before it starts or only when it commits, A's work is discarded: one result, from B."""
    from sqlalchemy import update

    from medlens.serve import jobs
    from medlens.serve.db import BatchItem

    st = queue_app.state.medlens
    s = st.settings
    user, _ = account_with_token(st)
    job_id = queue_batch(st, user, small_pngs(2))
    with st.db() as db:
        first = jobs.claim(db, "A", s.lease_s, s.max_attempts)
        second = jobs.claim(db, "A", s.lease_s, s.max_attempts)
    with st.db() as db:  # both leases run out
        db.execute(update(BatchItem).values(lease_until=jobs.utcnow() - timedelta(seconds=1)))
        db.commit()
    with st.db() as db:
        assert jobs.claim(db, "B", s.lease_s, s.max_attempts) == first
    assert jobs.process(st, first, "A") == "lost"  # noticed before starting
    assert jobs.process(st, first, "B") == "done"

    # The second item: B takes it over while A is already running it.
    real = jobs.validate_upload

    def takeover_during(*args, **kwargs):  # type: ignore[no-untyped-def]
        with st.db() as db:
            assert jobs.claim(db, "B", s.lease_s, s.max_attempts) == second
        return real(*args, **kwargs)

    monkeypatch.setattr(jobs, "validate_upload", takeover_during)
    assert jobs.process(st, second, "A") == "lost"  # its commit found the claim gone
    monkeypatch.setattr(jobs, "validate_upload", real)
    assert jobs.process(st, second, "B") == "done"
    audit = job_audit(st, job_id)
    assert audit["status"] == "done" and audit["results"] == audit["with_result"] == 2
    assert audit["max_results_per_image"] == 1 and audit["orphan_images"] == []


def test_a_file_that_keeps_killing_workers_is_failed_not_retried_for_ever(queue_app):
    from sqlalchemy import update

    from medlens.serve import jobs
    from medlens.serve.db import BatchItem

    st = queue_app.state.medlens
    user, _ = account_with_token(st)
    job_id = queue_batch(st, user, small_pngs(1))
    with st.db() as db:  # claimed max_attempts times, its last worker died (lease passed)
        db.execute(
            update(BatchItem).values(
                status="running",
                claimed_by="dead",
                attempts=st.settings.max_attempts,
                lease_until=jobs.utcnow() - timedelta(seconds=1),
            )
        )
        db.commit()
    with st.db() as db:
        assert jobs.claim(db, "w", 60, st.settings.max_attempts) is None
    audit = job_audit(st, job_id)
    assert audit["status"] == "done" and audit["items"] == {"failed"} and audit["failed"] == 1
    with st.db() as db:
        item = db.query(BatchItem).one()
        assert "stopped 3 times" in item.error


def test_refused_files_fail_at_intake_and_nothing_identifying_is_staged(queue_app):
    """A batch file is checked and de-identified before it is written: junk fails at once (with
    its reason), a PNG's text chunks never reach the staging folder."""
    from medlens.serve.db import BatchItem

    st = queue_app.state.medlens
    user, _ = account_with_token(st)
    png = small_pngs(1)[0]
    tagged = png[:33] + _text_chunk(b"Patient", b"Doe^Jane MRN-0042") + png[33:]
    job_id = queue_batch(st, user, [tagged, b"not an image at all"])
    staged = [p.read_bytes() for p in st.workspace.staging.rglob("*.bin")]
    assert len(staged) == 1 and b"Doe^Jane" not in staged[0] and b"tEXt" not in staged[0]
    with st.db() as db:
        items = {it.position: it for it in db.query(BatchItem).filter_by(job_id=job_id)}
    assert items[0].status == "queued" and items[1].status == "failed"
    assert "Not a PNG, JPEG or DICOM image" in items[1].error


def _text_chunk(key: bytes, value: bytes) -> bytes:
    import struct
    import zlib

    payload = key + b"\0" + value
    crc = zlib.crc32(b"tEXt" + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + b"tEXt" + payload + struct.pack(">I", crc)


# --------------------------------------------------------------------------------------------
# kill -9 of the server and a worker mid-batch
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


SERVER = """
import sys
from pathlib import Path
from medlens.serve import run
run([Path(sys.argv[1])], port=int(sys.argv[2]), workspace=Path(sys.argv[3]),
    database_url=sys.argv[4] or None, lease_s=3.0, orphan_grace_s=0, worker_poll_s=0.2,
    warm_explanations=False, log_level="warning")
"""


def _start(kind: str, bundle: Path, ws: Path, url: str | None, port: int, log: Path):  # type: ignore[no-untyped-def]
    if kind == "server":
        cmd = [sys.executable, "-c", SERVER, str(bundle), str(port), str(ws), url or ""]
    else:
        medlens = [sys.executable, "-m", "medlens.cli"]
        cmd = [*medlens, "worker", "--bundle", str(bundle), "--workspace", str(ws)]
        cmd += ["--lease-s", "3", "--poll-s", "0.2", "--orphan-grace-s", "0"]
        if url:
            cmd += ["--database-url", url]
    return subprocess.Popen(cmd, env=_env(), stdout=log.open("ab"), stderr=subprocess.STDOUT)


def _wait_healthy(port: int, proc, timeout: float = 180.0) -> None:  # type: ignore[no-untyped-def]
    import httpx2 as httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, "the server exited during start-up"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("the server did not start")


@pytest.mark.slow
def test_kill_9_of_server_and_worker_mid_batch_loses_nothing(
    tmp_path, serve_bundles, fresh_database_url
):
    """200 files; kill -9 the web process (it runs a worker thread) and a `medlens worker`
    once some are done; restart both: every file ends with a result or an error, none twice,
    and no file is left that no row refers to."""
    import httpx2 as httpx

    from medlens.serve import ServeSettings
    from medlens.serve.state import open_state

    bundle, ws, url = serve_bundles["a"], tmp_path / "ws", fresh_database_url
    settings = ServeSettings(
        bundles=[bundle], workspace=ws, database_url=url, warm_models=False, orphan_grace_s=0
    )
    st = open_state(settings)
    _, token = account_with_token(st)
    log = tmp_path / "processes.log"
    port = _free_port()
    figures: dict[str, float | int] = {"files": 200}
    procs = [_start("server", bundle, ws, url, port, log)]
    try:
        _wait_healthy(port, procs[0])
        procs.append(_start("worker", bundle, ws, url, port, log))
        zipped = make_zip({f"f{i:03d}.png": d for i, d in enumerate(small_pngs(200, seed=3))})
        t0 = time.monotonic()
        r = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/batch",
            headers={"Authorization": f"Bearer {token}"},
            files=[("files", ("batch.zip", zipped, "application/zip"))],
            timeout=120,
        )
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        while job_audit(st, job_id)["done"] < 40:
            assert time.monotonic() - t0 < 300, "the batch made no progress"
            time.sleep(0.05)
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait(30)
        figures["done_before_kill"] = job_audit(st, job_id)["done"]
        figures["seconds_before_kill"] = round(time.monotonic() - t0, 2)
        killed = job_audit(st, job_id)
        assert killed["status"] in ("queued", "running") and killed["done"] < 200

        t1 = time.monotonic()
        port = _free_port()
        procs = [_start("server", bundle, ws, url, port, log)]
        procs.append(_start("worker", bundle, ws, url, port, log))
        _wait_healthy(port, procs[0])
        while job_audit(st, job_id)["status"] != "done":
            assert time.monotonic() - t1 < 400, f"the batch did not resume: {job_audit(st, job_id)}"
            time.sleep(0.2)
        figures["seconds_to_finish_after_restart"] = round(time.monotonic() - t1, 2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
    audit = job_audit(st, job_id)
    figures["reclaimed_after_crash"] = audit["reclaimed"]
    figures["failed"] = audit["failed"]
    print("crash/resume figures:", json.dumps(figures))
    assert audit["n_items"] == 200 and audit["items"] <= {"done", "failed"}
    assert audit["with_result"] + audit["with_error"] == 200  # every file: a result or an error
    assert audit["done"] == 200
    assert audit["results"] == audit["with_result"] == audit["distinct_results"]  # none twice
    assert audit["max_results_per_image"] == 1 and audit["items_sharing_result"] == 0
    assert audit["failed"] == 0, "tiny PNGs of a healthy batch must all get results"
    assert audit["orphan_images"] == [] and audit["orphan_derived"] == []
    assert audit["staged_left"] == [] and audit["partials"] == []
    if st.engine is not None:
        st.engine.dispose()


@pytest.mark.slow
def test_serve_with_two_worker_processes_shares_sessions(tmp_path, serve_bundles):
    """`medlens serve --workers 2`: whichever process answers, a session made by one is valid,
    and the CSRF secret is one (both are in the database, not in a process)."""
    import re

    import httpx2 as httpx

    port = _free_port()
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "medlens", "serve", "--bundle", str(serve_bundles["a"])]
    cmd += ["--workspace", str(tmp_path / "ws"), "--port", str(port), "--workers", "2"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        _wait_healthy(port, proc)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, follow_redirects=False) as c:
            tok = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/signup").text)[1]
            r = c.post(
                "/signup",
                data={"csrf_token": tok, "username": "first", "password": "correct horse battery",
                      "password2": "correct horse battery"},
            )  # fmt: skip
            assert r.status_code == 303, r.text[:300]
            assert {c.get("/history").status_code for _ in range(12)} == {200}
        assert log.read_text().count("medlens ready") == 2  # two processes served
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
