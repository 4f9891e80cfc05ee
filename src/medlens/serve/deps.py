"""Request dependencies shared by the pages and the REST API: app state, a DB session, the
signed-in user (session cookie for pages, Bearer token for the API) and the CSRF check.

Every page router is made by :func:`page_router`, which attaches :func:`csrf_protect` to every
route, so a new state-changing page cannot forget it. The API never reads cookies, which is why
it needs no CSRF token: a browser on another site cannot attach a Bearer header.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from medlens.serve import accounts, security
from medlens.serve.db import User
from medlens.serve.services import NotFound, ServeState

SESSION_COOKIE = "medlens_session"
PRE_COOKIE = "medlens_pre"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class LoginRequired(Exception):
    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


class CsrfFailed(Exception):
    pass


def state_of(request: Request) -> ServeState:
    return request.app.state.medlens


def get_db(request: Request) -> Iterator[Session]:
    """One session per request, closed however the request ends."""
    db = state_of(request).db()
    try:
        yield db
    finally:
        db.close()


DB = Annotated[Session, Depends(get_db)]


def csrf_source(request: Request) -> str | None:
    """The cookie a CSRF token is bound to: the session, or the pre-session cookie."""
    return request.cookies.get(SESSION_COOKIE) or request.cookies.get(PRE_COOKIE)


async def csrf_protect(request: Request) -> None:
    """Refuse any state-changing request without a valid CSRF token (form field or header)."""
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise CsrfFailed
    token = request.headers.get("x-csrf-token")
    ctype = request.headers.get("content-type", "")
    if token is None and ctype.startswith(
        ("multipart/form-data", "application/x-www-form-urlencoded")
    ):
        form = await request.form()
        value = form.get("csrf_token")
        token = value if isinstance(value, str) else None
    if not security.csrf_valid(state_of(request).secret, csrf_source(request), token):
        raise CsrfFailed


def page_router() -> APIRouter:
    """A router for HTML pages: CSRF-checked, left out of the OpenAPI schema."""
    return APIRouter(dependencies=[Depends(csrf_protect)], include_in_schema=False)


def optional_user(request: Request, db: DB) -> User | None:
    return accounts.session_user(db, request.cookies.get(SESSION_COOKIE))


def require_user(request: Request, db: DB) -> User:
    user = accounts.session_user(db, request.cookies.get(SESSION_COOKIE))
    if user is None:
        raise LoginRequired(request.url.path)
    return user


def require_admin(user: Annotated[User, Depends(require_user)]) -> User:
    if not user.is_admin:
        raise NotFound
    return user


CurrentUser = Annotated[User, Depends(require_user)]
AdminUser = Annotated[User, Depends(require_admin)]

bearer = HTTPBearer(auto_error=False, description="Personal API token (mlt_...)")


def api_user(
    db: DB, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> User:
    user = accounts.bearer_user(db, creds.credentials if creds else None)
    if user is None:
        raise HTTPException(
            401, "missing or invalid API token", headers={"WWW-Authenticate": "Bearer"}
        )
    return user


ApiUser = Annotated[User, Depends(api_user)]
