"""Batch throughput of one vs two ``medlens worker`` processes on one queue, printed as JSON.

    python benchmarks/bench_workers.py [--n 500] [--size 32] [--bundle DIR]
                                       [--database-url postgresql://...]

Without ``--bundle`` a tiny chest X-ray bundle is trained first (about 20 s, from
bench_serve.py). For each worker count a fresh workspace and database are made, the workers are
started and wait until ready (imports and model loading are not timed), then one batch of
``--n`` ``--size``-pixel PNGs is queued through the intake path (checked, de-identified,
staged) and the clock runs until the job is done. Each worker is its own process (its own
interpreter: no shared GIL), so two workers can use two cores; the queue is the database
(SQLite file by default, PostgreSQL with ``--database-url``, one fresh database per run).
Figures depend on the cores free at the time: read them next to ``cpu_count``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pngs(n: int, size: int) -> list[bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def fresh_pg(base: str) -> tuple[str, Any]:
    import secrets

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from medlens.serve.db import normalise_url

    name = f"medlens_bench_{secrets.token_hex(4)}"
    admin = create_engine(normalise_url(base), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(base).set(database=name).render_as_string(hide_password=False), drop


def run(n_workers: int, bundle: Path, images: list[bytes], root: Path, base_url: str | None):
    from medlens.serve import ServeSettings, accounts, batch
    from medlens.serve.db import BatchJob
    from medlens.serve.state import open_state
    from medlens.serve.uploads import BatchEntry

    ws = root / f"ws{n_workers}"
    url, drop = fresh_pg(base_url) if base_url else (None, None)
    st = open_state(ServeSettings(bundles=[bundle], workspace=ws, database_url=url))
    with st.db() as db:
        user = accounts.create_user(
            db, "bench", "benchmark passphrase 123", role=None, min_password_length=10
        )
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs, logs = [], []
    for i in range(n_workers):
        log = root / f"worker{n_workers}-{i}.log"
        cmd = [sys.executable, "-m", "medlens", "worker", "--bundle", str(bundle)]
        cmd += ["--workspace", str(ws), "--poll-s", "0.1"]
        if url:
            cmd += ["--database-url", url]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        )
        logs.append(log)
    try:
        while not all("ready" in p.read_text(errors="replace") for p in logs):
            if any(p.poll() is not None for p in procs):
                raise SystemExit("a worker exited during start-up:\n" + logs[0].read_text())
            time.sleep(0.2)
        t_intake = time.perf_counter()
        entries = [BatchEntry(f"img{i:04d}.png", d) for i, d in enumerate(images)]
        with st.db() as db:
            job_id = batch.create_job(st, db, db.merge(user), entries, next(iter(st.models)).key).id
        t0 = time.perf_counter()
        while True:
            with st.db() as db:
                job = db.get(BatchJob, job_id)
                if job.status == "done":
                    done, failed = job.done, job.failed
                    break
            time.sleep(0.05)
        seconds = time.perf_counter() - t0
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(60)
        if st.engine is not None:
            st.engine.dispose()
        if drop is not None:
            drop()
    return {
        "workers": n_workers,
        "intake_s": round(t0 - t_intake, 3),
        "processing_s": round(seconds, 3),
        "files_per_s": round(len(images) / seconds, 2),
        "done": done,
        "failed": failed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--database-url", default=os.environ.get("MEDLENS_TEST_DATABASE_URL"))
    ap.add_argument("--sqlite", action="store_true", help="ignore $MEDLENS_TEST_DATABASE_URL")
    args = ap.parse_args()
    base_url = None if args.sqlite else args.database_url
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle = args.bundle
        if bundle is None:
            from bench_serve import tiny_bundle

            bundle, _ = tiny_bundle(root / "train")
        images = pngs(args.n, args.size)
        runs = [run(k, bundle, images, root, base_url) for k in (1, 2)]
    one, two = runs
    print(
        json.dumps(
            {
                "benchmark": "batch workers",
                "files": args.n,
                "size_px": args.size,
                "database": "postgresql" if base_url else "sqlite",
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
                "runs": runs,
                "speedup_2_vs_1": round(one["processing_s"] / two["processing_s"], 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
