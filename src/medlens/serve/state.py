"""The server's state object (shared by the web app and ``medlens worker``), the two refusals
every layer raises, and run-time settings kept in the database (sign-up open, the server secret).

Nothing that must hold across processes lives in this object: sessions, throttling counters and
the batch queue are rows in the database, files are in the workspace. What is here is per
process and rebuilt at start: the engine, the loaded models, the secret read from the database.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from medlens.serve import pixelbudget
from medlens.serve.db import AppSetting, make_engine, migrate, session_factory
from medlens.serve.engine import ModelRegistry
from medlens.serve.settings import ServeSettings
from medlens.serve.storage import Workspace
from medlens.serve.throttle import Counters, LoginThrottle

log = logging.getLogger("medlens.serve")


class NotFound(Exception):
    """No such object for this user (it may exist and belong to someone else)."""


class Refused(Exception):
    """A request the user may not make, with the reason shown to them."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        self.status = status
        self.message = message
        self.field = field
        super().__init__(message)


@dataclass
class ServeState:
    settings: ServeSettings
    sessions: sessionmaker
    workspace: Workspace
    models: ModelRegistry
    secret: bytes
    counters: Counters
    login: LoginThrottle
    engine: Engine | None = None
    jobs: Any = None  # medlens.serve.jobs.Worker when this process runs one

    def db(self) -> Session:
        return self.sessions()

    def wake_workers(self) -> None:
        """A batch was queued: this process's worker starts at once (others poll)."""
        if self.jobs is not None:
            self.jobs.wake()


def open_state(settings: ServeSettings) -> ServeState:
    """Workspace, migrated database, loaded (and warmed) models, secret: what a web process and a
    worker both need before they serve."""
    workspace = Workspace(settings.workspace)
    engine = make_engine(settings.resolved_database_url())
    migrate(engine)
    sessions = session_factory(engine)
    models = ModelRegistry(list(settings.bundles), device=settings.device, settings=settings)
    # every decode of this process shares one pixel budget (serve/pixelbudget.py)
    pixelbudget.shared(settings.pixel_budget, settings.decode_wait_s)
    if settings.warm_models:
        models.warm_up()  # the first upload must not pay for library set-up
    with sessions() as db:
        secret = load_secret(db)
    counters = Counters(sessions, secret)
    counters.prune(older_than_s=24 * 3600)
    return ServeState(
        settings=settings,
        sessions=sessions,
        workspace=workspace,
        models=models,
        secret=secret,
        counters=counters,
        login=LoginThrottle(counters, settings),
        engine=engine,
    )


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
    """The server's HMAC key (CSRF tokens, device cookies, throttle keys): random on first
    start, kept in the database after. Two processes starting on a new database agree: the
    second one's insert fails and it reads the first one's key."""
    value = get_setting(db, "csrf_secret")
    if value is None:
        try:
            set_setting(db, "csrf_secret", secrets.token_hex(32))
        except IntegrityError:
            db.rollback()
        value = get_setting(db, "csrf_secret")
    assert value is not None
    return bytes.fromhex(value)
