"""The server's state object, the two refusals every layer raises, and run-time settings kept in
the database (sign-up open, the CSRF secret)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from medlens.serve import security
from medlens.serve.db import AppSetting
from medlens.serve.engine import ModelRegistry
from medlens.serve.settings import ServeSettings
from medlens.serve.storage import Workspace


class NotFound(Exception):
    """No such object for this user (it may exist and belong to someone else)."""


class Refused(Exception):
    """A request the user may not make, with the reason shown to them."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


@dataclass
class ServeState:
    settings: ServeSettings
    sessions: sessionmaker
    workspace: Workspace
    models: ModelRegistry
    secret: bytes
    limiter: security.RateLimiter
    jobs: Any = None  # medlens.serve.jobs.BatchRunner

    def db(self) -> Session:
        return self.sessions()


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
    """The server's CSRF HMAC key: random on first start, kept in the database after."""
    value = get_setting(db, "csrf_secret")
    if value is None:
        value = secrets.token_hex(32)
        set_setting(db, "csrf_secret", value)
    return bytes.fromhex(value)
