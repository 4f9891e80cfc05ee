"""Account pages: log in, sign up, log out, change your password, API tokens, and the
administration page (create an account; sign-up open or closed; reset a password; disable or
re-enable an account).

The rules (password strength, the last administrator, which sessions end) live in
:mod:`.accounts`, login throttling in :mod:`.throttle`; these routes only read forms and render.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import Depends, Form, Path, Request
from fastapi.responses import Response
from sqlalchemy import func, select

from medlens.serve import accounts, security
from medlens.serve.db import Result, User
from medlens.serve.deps import (
    DB,
    PRE_COOKIE,
    SESSION_COOKIE,
    AdminUser,
    CurrentUser,
    optional_user,
    page_router,
    state_of,
)
from medlens.serve.services import NotFound, Refused
from medlens.serve.state import set_setting
from medlens.serve.templating import client_ip, redirect, render, safe_next, set_cookie
from medlens.serve.throttle import DEVICE_COOKIE, DEVICE_MAX_AGE, client_for, new_device_cookie

router = page_router()
Password = Annotated[str, Form(max_length=security.MAX_PASSWORD_LENGTH)]
RowId = Annotated[int, Path(ge=1, le=2**31 - 1)]  # never past the column range (422, not 500)


@router.get("/")
def home(user: Annotated[User | None, Depends(optional_user)]) -> Response:
    return redirect("/upload" if user else "/login")


@router.get("/login")
def login_page(request: Request, db: DB, next: str = "") -> Response:
    st = state_of(request)
    return render(
        request,
        "login.html",
        {"next": safe_next(next), "signup_open": accounts.signup_open(db, st.settings.signup_open)},
    )


def _signed_in(request: Request, user: User, db: Any, target: str) -> Response:
    st = state_of(request)
    s = st.settings
    token = accounts.create_session(db, user, s.session_hours)
    resp = redirect(target)
    set_cookie(request, resp, SESSION_COOKIE, token, max_age=int(s.session_hours * 3600))
    # The device cookie makes this browser a known client of this user (see throttle.py).
    set_cookie(
        request, resp, DEVICE_COOKIE, new_device_cookie(st.secret, user.username), DEVICE_MAX_AGE
    )
    resp.delete_cookie(PRE_COOKIE, path="/")
    return resp


@router.post("/login")
def login(
    request: Request,
    db: DB,
    username: Annotated[str, Form(max_length=200)] = "",
    password: Password = "",
    next: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    st = state_of(request)
    client = client_for(st.secret, username, client_ip(request), request.cookies.get(DEVICE_COOKIE))
    wait = st.login.wait(username, client)
    ctx = {
        "next": safe_next(next),
        "username": username,
        "signup_open": accounts.signup_open(db, st.settings.signup_open),
    }
    if wait > 0:
        seconds = math.ceil(wait)
        when = f"{seconds} second(s)" if seconds < 120 else f"{math.ceil(seconds / 60)} minute(s)"
        ctx["error"] = f"Too many failed attempts from this browser. Try again in {when}."
        return render(request, "login.html", ctx, status=429, headers={"Retry-After": str(seconds)})
    user = accounts.authenticate(db, username, password)
    if user is None:
        st.login.failed(username, client)
        ctx["error"] = "Wrong username or password."
        return render(request, "login.html", ctx, status=401)
    st.login.succeeded(username, client)
    return _signed_in(request, user, db, safe_next(next))


@router.get("/signup")
def signup_page(request: Request, db: DB) -> Response:
    st = state_of(request)
    is_open = accounts.signup_open(db, st.settings.signup_open)
    return render(
        request,
        "signup.html",
        {"signup_open": is_open, "min_len": st.settings.min_password_length},
        status=200 if is_open else 403,
    )


@router.post("/signup")
def signup(
    request: Request,
    db: DB,
    username: Annotated[str, Form(max_length=200)] = "",
    password: Password = "",
    password2: Password = "",
) -> Response:
    st = state_of(request)
    s = st.settings
    ctx: dict[str, Any] = {
        "signup_open": True,
        "min_len": s.min_password_length,
        "username": username,
    }
    if not accounts.signup_open(db, s.signup_open):
        ctx["signup_open"] = False
        return render(request, "signup.html", ctx, status=403)
    ip_key = f"signup:{client_ip(request)}"
    if st.counters.count(ip_key, s.login_window_s) >= s.login_max_per_ip:
        wait = max(1, math.ceil(st.counters.window_left(ip_key, s.login_window_s)))
        ctx["error"] = "Too many sign-up attempts from this address. Try again later."
        return render(request, "signup.html", ctx, status=429, headers={"Retry-After": str(wait)})
    # Every attempt counts: probing which usernames exist costs an attempt each.
    st.counters.hit(ip_key, s.login_window_s)
    if password != password2:
        ctx["error"] = "The two passwords differ."
        return render(request, "signup.html", ctx, status=400)
    try:
        user = accounts.create_user(
            db,
            username,
            password,
            role=None,
            min_password_length=s.min_password_length,
            min_password_score=s.min_password_score,
        )
    except Refused as exc:
        ctx["error"] = exc.message
        return render(request, "signup.html", ctx, status=exc.status)
    return _signed_in(request, user, db, "/upload")


@router.post("/logout")
def logout(request: Request, db: DB) -> Response:
    accounts.end_session(db, request.cookies.get(SESSION_COOKIE))
    resp = redirect("/login")
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


@router.get("/account")
def account_page(request: Request, user: CurrentUser, changed: int = 0) -> Response:
    s = state_of(request).settings
    ctx = {"min_len": s.min_password_length, "changed": changed}
    return render(request, "account.html", ctx, user=user)


@router.post("/account/password")
def account_password(
    request: Request,
    db: DB,
    user: CurrentUser,
    current: Password = "",
    password: Password = "",
    password2: Password = "",
) -> Response:
    s = state_of(request).settings
    ctx: dict[str, Any] = {"min_len": s.min_password_length}
    try:
        if password != password2:
            raise Refused(400, "The two new passwords differ.")
        accounts.change_password(
            db,
            user,
            current,
            password,
            min_password_length=s.min_password_length,
            keep_session=request.cookies.get(SESSION_COOKIE),
        )
    except Refused as exc:
        ctx["error"] = exc.message
        return render(request, "account.html", ctx, user=user, status=exc.status)
    return redirect("/account?changed=1")


@router.get("/tokens")
def tokens_page(request: Request, db: DB, user: CurrentUser) -> Response:
    return render(request, "tokens.html", {"tokens": accounts.list_tokens(db, user)}, user=user)


@router.post("/tokens")
def tokens_create(
    request: Request, db: DB, user: CurrentUser, name: Annotated[str, Form(max_length=80)] = ""
) -> Response:
    _, plaintext = accounts.create_api_token(db, user, name)
    ctx = {"tokens": accounts.list_tokens(db, user), "new_token": plaintext}
    return render(request, "tokens.html", ctx, user=user)


@router.post("/tokens/{token_id}/revoke")
def tokens_revoke(request: Request, db: DB, user: CurrentUser, token_id: RowId) -> Response:
    accounts.revoke_token(db, user, token_id)
    return redirect("/tokens")


def _admin_page(request: Request, db: Any, admin: User, status: int = 200, **ctx: Any) -> Response:
    st = state_of(request)
    counts = dict(db.execute(select(Result.user_id, func.count()).group_by(Result.user_id)).all())
    context = {
        "users": accounts.list_users(db),
        "counts": counts,
        "signup_open": accounts.signup_open(db, st.settings.signup_open),
        "min_len": st.settings.min_password_length,
        **ctx,
    }
    return render(request, "admin.html", context, user=admin, status=status)


@router.get("/admin")
def admin_page(request: Request, db: DB, admin: AdminUser, done: str = "") -> Response:
    notice = {
        "password": "Password reset.",
        "active": "Account updated.",
        "created": "Account created. Give the password to its owner in person; they can "
        "change it on their Account page.",
    }.get(done)
    return _admin_page(request, db, admin, notice=notice)


@router.post("/admin/signup")
def admin_signup(
    request: Request,
    db: DB,
    admin: AdminUser,
    open: Annotated[str, Form(max_length=1)] = "0",
) -> Response:
    set_setting(db, "signup_open", "1" if open == "1" else "0")
    return redirect("/admin")


@router.post("/admin/users")
def admin_create_user(
    request: Request,
    db: DB,
    admin: AdminUser,
    username: Annotated[str, Form(max_length=200)] = "",
    role: Annotated[str, Form(max_length=16)] = "clinician",
    password: Password = "",
) -> Response:
    s = state_of(request).settings
    try:
        accounts.create_user(
            db,
            username,
            password,
            role=role,
            min_password_length=s.min_password_length,
            min_password_score=s.min_password_score,
        )
    except Refused as exc:
        return _admin_page(request, db, admin, status=exc.status, error=exc.message)
    return redirect("/admin?done=created")


def _target(db: Any, user_id: int) -> User:
    target = db.get(User, user_id)
    if target is None:
        raise NotFound
    return target


@router.post("/admin/users/{user_id}/password")
def admin_reset_password(
    request: Request, db: DB, admin: AdminUser, user_id: RowId, password: Password = ""
) -> Response:
    s = state_of(request).settings
    target = _target(db, user_id)
    try:
        accounts.reset_password(db, target, password, min_password_length=s.min_password_length)
    except Refused as exc:
        return _admin_page(
            request, db, admin, status=exc.status, error=f"{target.username}: {exc.message}"
        )
    return redirect("/admin?done=password")


@router.post("/admin/users/{user_id}/active")
def admin_set_active(
    request: Request,
    db: DB,
    admin: AdminUser,
    user_id: RowId,
    active: Annotated[str, Form(max_length=1)] = "0",
) -> Response:
    target = _target(db, user_id)
    try:
        accounts.set_active(db, target, active == "1", actor=admin)
    except Refused as exc:
        return _admin_page(
            request, db, admin, status=exc.status, error=f"{target.username}: {exc.message}"
        )
    return redirect("/admin?done=active")
