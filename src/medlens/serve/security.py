"""Passwords, tokens, CSRF, login rate limits and the HTTP hardening every response gets.

Why each choice:

* **argon2id** (argon2-cffi's RFC 9106 low-memory profile) for passwords: memory-hard, salted per
  hash, parameters stored in the hash so they can be raised later (``needs_rehash``). Unknown
  usernames are verified against a dummy hash so response time does not reveal who has an account.
* **Random tokens, stored hashed.** Session cookies and API tokens are 256-bit random strings; the
  database keeps only their SHA-256, so a leaked database opens no session. (A fast hash is right
  here: the input is random, not a guessable password.)
* **CSRF**: synchroniser tokens ``HMAC(secret, cookie)``, bound to the session cookie (or to a
  pre-session cookie on the login and sign-up forms), checked on every state-changing request of
  the web routes, plus an ``Origin`` check when the browser sends one. The REST API takes Bearer
  tokens only - never cookies - so it cannot be driven cross-site.
* **Passwords are checked for strength with zxcvbn** (Dropbox's estimator: dictionaries, names,
  keyboard patterns, repeats, sequences, dates, l33t), not only a length rule and a short list:
  ``aaaaaaaaaa`` and ``0123456789`` pass a length rule and are guessed at once. The username is
  given to it as a word to avoid.
* **Login throttling** lives in the database, per user *and* client, so it holds across
  processes and cannot be turned into a lock-out: see :mod:`.throttle`.
* **Headers**: a Content-Security-Policy without inline scripts or styles, no framing, no
  sniffing, no referrer, and ``Cache-Control: no-store`` so results never sit in shared caches.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher()  # argon2id, RFC 9106 low-memory parameters
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,39}$")
MAX_PASSWORD_LENGTH = 1024  # argon2 hashes anything, but a megabyte "password" is an attack
ZXCVBN_MAX_CHARS = 100  # zxcvbn's cost grows with length; beyond this, length alone is strength


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant-shape check: an unknown user still costs one argon2 verification."""
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _HASHER.check_needs_rehash(password_hash)


def password_problem(
    password: str, username: str, min_length: int, min_score: int = 3
) -> str | None:
    """Why a new password is refused, or None: length (NIST 800-63B: length over composition
    rules), then zxcvbn's guessability score (0-4) against ``min_score``, with its advice."""
    if len(password) < min_length:
        return f"Password too short: use at least {min_length} characters."
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"Password too long: at most {MAX_PASSWORD_LENGTH} characters."
    if password.strip().lower() == username.strip().lower():
        return "Password too easy to guess: it is your username."
    from zxcvbn import zxcvbn

    verdict = zxcvbn(password[:ZXCVBN_MAX_CHARS], user_inputs=[username, "medlens"])
    if verdict["score"] >= min_score:
        return None
    feedback = verdict.get("feedback") or {}
    why = (feedback.get("warning") or "").strip()
    advice = " ".join(feedback.get("suggestions") or []) or "Use a longer phrase of unusual words."
    return f"Password too easy to guess{': ' + why if why else '.'} {advice}".strip()


def username_problem(username: str) -> str | None:
    if not USERNAME_RE.match(username):
        return (
            "Username must be 3-40 characters: letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        )
    return None


def new_token(prefix: str = "") -> str:
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_id() -> str:
    """A random, unguessable identifier for stored objects (128 bits, hex)."""
    return secrets.token_hex(16)


def csrf_token(secret: bytes, cookie_value: str) -> str:
    return hmac.new(secret, b"csrf:" + cookie_value.encode(), hashlib.sha256).hexdigest()


def csrf_valid(secret: bytes, cookie_value: str | None, submitted: str | None) -> bool:
    if not cookie_value or not submitted:
        return False
    return hmac.compare_digest(csrf_token(secret, cookie_value), submitted)


CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; object-src 'none'"
)

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes browsers send Origin: null
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict]], Callable], Awaitable[None]]


class SecurityHeadersMiddleware:
    """Pure ASGI middleware: adds the headers above (and HSTS over HTTPS) to every response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = scope.get("scheme") == "https"
        is_static = scope.get("path", "").startswith("/static/")

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                for k, v in SECURITY_HEADERS.items():
                    if k.lower().encode() not in present:
                        headers.append((k.lower().encode(), v.encode()))
                if b"cache-control" not in present:
                    cc = b"public, max-age=3600" if is_static else b"no-store"
                    headers.append((b"cache-control", cc))
                if https:
                    headers.append((b"strict-transport-security", b"max-age=31536000"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimitMiddleware:
    """Refuse request bodies over a size limit with 413, before any parser buffers them.

    The declared ``Content-Length`` is checked first (cheap refusal); chunked bodies are counted
    as they stream. ``limit_for(path)`` lets batch routes accept more than single uploads.
    """

    def __init__(self, app: Any, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    declared = -1
                if declared < 0 or declared > limit:
                    await _too_large(send, limit, scope)
                    return
        seen = 0
        refused = False
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    refused = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            # A parser that turned our exception into its own error response is overridden.
            nonlocal started
            if refused:
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _too_large(send, limit, scope)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if not started:
                await _too_large(send, limit, scope)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Any, limit: int, scope: dict[str, Any]) -> None:
    from medlens.serve.problems import error_body

    text = f"Request too large: the limit is {limit / 1024 / 1024:.0f} MB."
    if scope.get("path", "").startswith("/api/"):
        body, ctype = json.dumps(error_body(413, text)).encode(), b"application/json"
    else:
        body, ctype = text.encode(), b"text/plain; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
