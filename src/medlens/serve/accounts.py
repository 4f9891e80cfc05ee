"""Accounts, sessions and API tokens: create, authenticate, change or reset a password, disable.

Every change that should end someone's access ends it at once: a password reset or a disabled
account deletes that user's server-side sessions (and a disabled account's API tokens stop
working, since :func:`bearer_user` checks the account). The last active administrator cannot be
disabled or demoted, so a server is never left without one.

Who can create accounts: the very first account of a new server (it becomes the administrator;
servers that must not let the first visitor do that create it with ``medlens serve-admin``),
then administrators (Administration page, ``serve-admin``). Open self-service sign-up is off by
default - a hospital knows its staff, and open sign-up necessarily tells a stranger that a
username is taken. When an administrator opens it, that one answer is all it reveals: the
password is checked before the username is looked up, a refused username costs the same argon2
hash as a created account, and every attempt counts against the client's sign-up limit.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from medlens.serve import security
from medlens.serve.db import ApiToken, User, UserSession, utcnow
from medlens.serve.state import NotFound, Refused, get_setting

ROLES = ("admin", "clinician")


def signup_open(db: Session, default: bool) -> bool:
    if db.scalar(select(func.count()).select_from(User)) == 0:
        return True  # the first account (the admin) can always be created
    value = get_setting(db, "signup_open")
    return default if value is None else value == "1"


def find_user(db: Session, username: str) -> User | None:
    return db.scalar(select(User).where(func.lower(User.username) == username.strip().lower()))


def list_users(db: Session) -> list[User]:
    return list(db.scalars(select(User).order_by(User.created_at)).all())


def create_user(
    db: Session,
    username: str,
    password: str,
    *,
    role: str | None,
    min_password_length: int,
    min_password_score: int = 3,
) -> User:
    """Create an account. ``role=None``: the first account becomes admin, later ones clinician."""
    username = username.strip()
    if problem := security.username_problem(username):
        raise Refused(400, problem)
    if problem := security.password_problem(
        password, username, min_password_length, min_password_score
    ):
        raise Refused(400, problem)
    password_hash = security.hash_password(password)  # paid whether or not the name is free
    if find_user(db, username) is not None:
        raise Refused(409, "That username cannot be used: choose another.")
    if role is None:
        role = "admin" if db.scalar(select(func.count()).select_from(User)) == 0 else "clinician"
    if role not in ROLES:
        raise Refused(400, "role must be admin or clinician")
    user = User(username=username, password_hash=password_hash, role=role)
    db.add(user)
    db.commit()
    return user


def authenticate(db: Session, username: str, password: str) -> User | None:
    user = find_user(db, username)
    ok = security.verify_password(user.password_hash if user else None, password)
    if not ok or user is None or not user.is_active:
        return None
    if security.needs_rehash(user.password_hash):
        user.password_hash = security.hash_password(password)
    user.last_login_at = utcnow()
    db.commit()
    return user


def _set_password(db: Session, user: User, password: str, min_password_length: int) -> None:
    if problem := security.password_problem(password, user.username, min_password_length):
        raise Refused(400, problem)
    user.password_hash = security.hash_password(password)


def change_password(
    db: Session,
    user: User,
    current: str,
    new: str,
    *,
    min_password_length: int,
    keep_session: str | None = None,
) -> None:
    """The user's own change: the current password is required; other sessions end."""
    if not security.verify_password(user.password_hash, current):
        raise Refused(400, "The current password is wrong.")
    _set_password(db, user, new, min_password_length)
    end_sessions(db, user, keep=keep_session)


def reset_password(db: Session, user: User, new: str, *, min_password_length: int) -> None:
    """An administrator sets a new password; every session of that user ends."""
    _set_password(db, user, new, min_password_length)
    end_sessions(db, user)


def _active_admins(db: Session) -> int:
    stmt = select(func.count()).select_from(User).where(User.role == "admin", User.is_active)
    return int(db.scalar(stmt) or 0)


def set_active(db: Session, user: User, active: bool, *, actor: User | None = None) -> None:
    """Enable or disable an account. Disabling ends its sessions; an administrator cannot
    disable their own account, nor the last active administrator."""
    if not active:
        if actor is not None and actor.id == user.id:
            raise Refused(400, "You cannot disable your own account.")
        if user.is_admin and user.is_active and _active_admins(db) <= 1:
            raise Refused(400, "This is the last active administrator: it cannot be disabled.")
    user.is_active = active
    db.commit()
    if not active:
        end_sessions(db, user)


def create_session(db: Session, user: User, hours: float) -> str:
    token = security.new_token()
    now = utcnow()
    db.add(
        UserSession(
            token_hash=security.token_hash(token),
            user_id=user.id,
            created_at=now,
            last_seen_at=now,
            expires_at=now + timedelta(hours=hours),
        )
    )
    db.execute(delete(UserSession).where(UserSession.expires_at < now))
    db.commit()
    return token


def session_user(db: Session, token: str | None) -> User | None:
    if not token or len(token) > 200:
        return None
    row = db.scalar(select(UserSession).where(UserSession.token_hash == security.token_hash(token)))
    now = utcnow()
    if row is None or row.expires_at < now or not row.user.is_active:
        return None
    if (now - row.last_seen_at).total_seconds() > 60:
        row.last_seen_at = now
        db.commit()
    return row.user


def end_session(db: Session, token: str | None) -> None:
    if token:
        db.execute(delete(UserSession).where(UserSession.token_hash == security.token_hash(token)))
        db.commit()


def end_sessions(db: Session, user: User, keep: str | None = None) -> None:
    """End every session of ``user`` except the one whose cookie is ``keep``."""
    stmt = delete(UserSession).where(UserSession.user_id == user.id)
    if keep:
        stmt = stmt.where(UserSession.token_hash != security.token_hash(keep))
    db.execute(stmt)
    db.commit()


def create_api_token(db: Session, user: User, name: str) -> tuple[ApiToken, str]:
    """A new token; the plaintext is returned once and never stored."""
    name = (name or "").strip()[:80] or "API token"
    token = security.new_token("mlt_")
    row = ApiToken(
        user_id=user.id, name=name, token_hash=security.token_hash(token), prefix=token[:10]
    )
    db.add(row)
    db.commit()
    return row, token


def list_tokens(db: Session, user: User) -> list[ApiToken]:
    stmt = select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.created_at.desc())
    return list(db.scalars(stmt).all())


def bearer_user(db: Session, token: str | None) -> User | None:
    if not token or not token.startswith("mlt_") or len(token) > 200:
        return None
    row = db.scalar(select(ApiToken).where(ApiToken.token_hash == security.token_hash(token)))
    if row is None or row.revoked or not row.user.is_active:
        return None
    row.last_used_at = utcnow()
    db.commit()
    return row.user


def revoke_token(db: Session, user: User, token_id: int) -> None:
    row = db.get(ApiToken, token_id)
    if row is None or row.user_id != user.id:
        raise NotFound
    row.revoked = True
    db.commit()
