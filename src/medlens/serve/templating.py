"""Rendering pages: the Jinja2 environment, its shared names, and the response helpers every
page router uses (render with a CSRF token, redirects, cookies)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from medlens.inference import DISCLAIMER
from medlens.serve import formats, security
from medlens.serve.db import User
from medlens.serve.deps import PRE_COOKIE, csrf_source, state_of
from medlens.serve.engine import DEMO_NOTICE, METHOD_LABELS, METHODS
from medlens.serve.formatting import pct

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
TEMPLATES.env.globals.update(
    disclaimer=DISCLAIMER,
    demo_notice=DEMO_NOTICE,
    method_labels=METHOD_LABELS,
    methods=METHODS,
    pct=pct,
    upload_formats=formats.names_text(),
    upload_accept=formats.accept_attribute(),
)


def set_cookie(request: Request, resp: Response, name: str, value: str, max_age: int) -> None:
    secure = state_of(request).settings.cookie_secure
    if secure is None:
        secure = request.url.scheme == "https"
    resp.set_cookie(
        name, value, max_age=max_age, httponly=True, samesite="lax", secure=secure, path="/"
    )


def render(
    request: Request,
    name: str,
    ctx: dict[str, Any] | None = None,
    *,
    user: User | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    """A page with the signed-in user's navigation, a CSRF token and the loaded models."""
    st = state_of(request)
    src = csrf_source(request)
    new_pre = None
    if src is None:
        new_pre = src = security.new_token()
    context = {
        "user": user,
        "csrf_token": security.csrf_token(st.secret, src),
        "models": list(st.models),
        **(ctx or {}),
    }
    resp = TEMPLATES.TemplateResponse(request, name, context, status_code=status, headers=headers)
    if new_pre:
        set_cookie(request, resp, PRE_COOKIE, new_pre, max_age=12 * 3600)
    return resp


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def safe_next(value: str | None) -> str:
    """Only same-site relative paths: no open redirects."""
    if value and value.startswith("/") and not value.startswith(("//", "/\\")):
        return value
    return "/upload"


def login_redirect(next_path: str) -> RedirectResponse:
    return redirect(f"/login?next={quote(next_path)}")


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"
