"""Account administration without the web UI, for ``medlens serve-admin``: create an account,
reset a password, disable or re-enable an account, list accounts.

Each function opens the service's database (the workspace's SQLite file, or ``database_url``),
migrates it to the current schema and applies one change through the same rules as the
Administration page (:mod:`medlens.serve.accounts`). A refusal (weak password, unknown user,
the last administrator) raises :class:`medlens.errors.MedlensError` with the reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from medlens.errors import MedlensError
from medlens.serve import accounts
from medlens.serve.db import User, make_engine, migrate, session_factory
from medlens.serve.settings import ServeSettings
from medlens.serve.state import Refused
from medlens.serve.storage import Workspace

DEFAULT_WORKSPACE = Path("medlens-workspace")


@contextlib.contextmanager
def _database(workspace: Path, database_url: str | None) -> Iterator[Session]:
    url = ServeSettings.model_construct(
        bundles=[], workspace=Path(workspace), database_url=database_url
    ).resolved_database_url()
    Workspace(Path(workspace))
    engine = make_engine(url)
    try:
        migrate(engine)
        with session_factory(engine)() as db:
            yield db
    except Refused as exc:
        raise MedlensError(exc.message) from None
    finally:
        engine.dispose()


def _user(db: Session, username: str) -> User:
    user = accounts.find_user(db, username)
    if user is None:
        raise MedlensError(f"no account named {username!r} (list them with --list)")
    return user


def create_account(
    username: str,
    password: str,
    *,
    role: str = "admin",
    workspace: Path = DEFAULT_WORKSPACE,
    database_url: str | None = None,
    min_password_length: int = 10,
) -> None:
    """Create an account, for servers whose sign-up is closed or that must not let the first
    visitor become admin."""
    with _database(workspace, database_url) as db:
        accounts.create_user(
            db, username, password, role=role, min_password_length=min_password_length
        )


def reset_password(
    username: str,
    password: str,
    *,
    workspace: Path = DEFAULT_WORKSPACE,
    database_url: str | None = None,
    min_password_length: int = 10,
) -> None:
    """Set a new password for ``username``; their open sessions end."""
    with _database(workspace, database_url) as db:
        accounts.reset_password(
            db, _user(db, username), password, min_password_length=min_password_length
        )


def set_user_active(
    username: str,
    active: bool,
    *,
    workspace: Path = DEFAULT_WORKSPACE,
    database_url: str | None = None,
) -> None:
    """Disable (``active=False``: sessions end, tokens stop working) or re-enable an account."""
    with _database(workspace, database_url) as db:
        accounts.set_active(db, _user(db, username), active)


def list_accounts(
    *, workspace: Path = DEFAULT_WORKSPACE, database_url: str | None = None
) -> list[dict[str, Any]]:
    """``[{username, role, active, created, last_login}]``, oldest first."""
    with _database(workspace, database_url) as db:
        return [
            {
                "username": u.username,
                "role": u.role,
                "active": u.is_active,
                "created": u.created_at.isoformat(timespec="seconds"),
                "last_login": u.last_login_at.isoformat(timespec="seconds")
                if u.last_login_at
                else None,
            }
            for u in accounts.list_users(db)
        ]
