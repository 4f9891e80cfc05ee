"""Login and sign-up throttling that every process shares (the ``throttle`` table), designed so
that a stranger cannot turn it into a lock-out.

The old rule - five wrong passwords for a username, then even the right one refused for five
minutes - let anyone who knew a username lock that clinician out. Here the unit is a **user and
a client**, after OWASP's "device cookie" scheme:

* A *client* is the browser's device cookie when it carries a valid one for this username (it is
  issued at every successful login: HMAC-signed, bound to the username), otherwise the client's
  address. A clinician who has logged in on this browser before is therefore a different client
  from any attacker, even behind the same hospital NAT.
* Each (user, client) pair may fail ``login_free_failures`` times; every failure after that blocks
  *that pair only* for 1, 2, 4 ... seconds, up to ``login_backoff_max_s``. The right password
  from any other client is never affected. A success clears the pair.
* Per address: ``login_max_per_ip`` failures a window (any usernames) stop that address from
  guessing further, except for clients with a device cookie (so a flood from a shared NAT does
  not stop the clinicians who have logged in there before).
* Per username: past ``login_max_per_user`` failures a window (a distributed guess), clients
  without a device cookie for that user get no free failures: one try, then backoff. Nobody is
  refused a first try.

Keys are HMAC'd with the server secret before they are stored, so the table holds neither the
usernames strangers typed nor client addresses. Counters use fixed windows and single atomic
``UPDATE`` statements, correct with any number of processes on SQLite or PostgreSQL.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from medlens.serve.db import Throttle, utcnow
from medlens.serve.settings import ServeSettings

DEVICE_COOKIE = "medlens_device"
DEVICE_MAX_AGE = 365 * 24 * 3600


class Counters:
    """Fixed-window counters and blocks under HMAC'd keys, in the ``throttle`` table."""

    def __init__(self, sessions: sessionmaker, secret: bytes) -> None:
        self.sessions = sessions
        self.secret = secret

    def key(self, logical: str) -> str:
        return hmac.new(self.secret, b"throttle:" + logical.encode(), hashlib.sha256).hexdigest()

    def _row(self, logical: str) -> Throttle | None:
        with self.sessions() as db:
            return db.get(Throttle, self.key(logical))

    def count(self, logical: str, window_s: float) -> int:
        row = self._row(logical)
        if row is None or row.window_start <= utcnow() - timedelta(seconds=window_s):
            return 0
        return row.count

    def window_left(self, logical: str, window_s: float) -> float:
        row = self._row(logical)
        if row is None:
            return 0.0
        end = row.window_start + timedelta(seconds=window_s)
        return max(0.0, (end - utcnow()).total_seconds())

    def blocked_for(self, logical: str) -> float:
        row = self._row(logical)
        if row is None or row.blocked_until is None:
            return 0.0
        return max(0.0, (row.blocked_until - utcnow()).total_seconds())

    def hit(self, logical: str, window_s: float) -> int:
        """Count one event (a new window if the last one has passed); the count now."""
        k = self.key(logical)
        for _ in range(5):
            now = utcnow()
            stale = Throttle.window_start <= now - timedelta(seconds=window_s)
            with self.sessions() as db:
                n = db.execute(
                    update(Throttle)
                    .where(Throttle.key == k)
                    .values(
                        count=case((stale, 1), else_=Throttle.count + 1),
                        window_start=case((stale, now), else_=Throttle.window_start),
                        updated_at=now,
                    )
                ).rowcount
                if not n:
                    db.add(Throttle(key=k, count=1, window_start=now, updated_at=now))
                try:
                    db.commit()
                except IntegrityError:  # another process inserted it first: count again
                    db.rollback()
                    continue
                return int(db.scalar(select(Throttle.count).where(Throttle.key == k)) or 1)
        return 1

    def block(self, logical: str, seconds: float) -> None:
        until: datetime = utcnow() + timedelta(seconds=seconds)
        with self.sessions() as db:
            db.execute(
                update(Throttle)
                .where(Throttle.key == self.key(logical))
                .values(blocked_until=until, updated_at=utcnow())
            )
            db.commit()

    def reset(self, logical: str) -> None:
        with self.sessions() as db:
            db.execute(delete(Throttle).where(Throttle.key == self.key(logical)))
            db.commit()

    def prune(self, older_than_s: float) -> None:
        cut = utcnow() - timedelta(seconds=older_than_s)
        with self.sessions() as db:
            db.execute(
                delete(Throttle).where(
                    Throttle.updated_at < cut,
                    (Throttle.blocked_until.is_(None)) | (Throttle.blocked_until < utcnow()),
                )
            )
            db.commit()


@dataclass(frozen=True)
class Client:
    """Who is trying: ``device`` is True when the browser proved a device cookie for the user."""

    id: str
    address: str
    device: bool


def _device_sig(secret: bytes, nonce: str, username: str) -> str:
    msg = f"device:{nonce}:{username.strip().lower()}".encode()
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()[:32]


def new_device_cookie(secret: bytes, username: str) -> str:
    nonce = secrets.token_urlsafe(12)
    return f"{nonce}.{_device_sig(secret, nonce, username)}"


def client_for(secret: bytes, username: str, address: str, cookie: str | None) -> Client:
    """The device cookie's id when it is valid for ``username``, else the address."""
    if cookie and len(cookie) < 100 and "." in cookie:
        nonce, sig = cookie.split(".", 1)
        if hmac.compare_digest(_device_sig(secret, nonce, username), sig):
            return Client(f"dev:{nonce}", address, True)
    return Client(f"ip:{address}", address, False)


class LoginThrottle:
    """The login rules described in the module docstring."""

    def __init__(self, counters: Counters, settings: ServeSettings) -> None:
        self.c = counters
        self.s = settings

    @property
    def _pair_window(self) -> float:
        return max(float(self.s.login_window_s), 4.0 * self.s.login_backoff_max_s)

    @staticmethod
    def _user(username: str) -> str:
        return username.strip().lower()[:200]

    def wait(self, username: str, client: Client) -> float:
        """Seconds before this client may try this username again (0: now)."""
        user = self._user(username)
        wait = self.c.blocked_for(f"pair:{user}|{client.id}")
        if not client.device:
            ip = f"ip:{client.address}"
            if self.c.count(ip, self.s.login_window_s) >= self.s.login_max_per_ip:
                wait = max(wait, self.c.window_left(ip, self.s.login_window_s), 1.0)
        return wait

    def failed(self, username: str, client: Client) -> None:
        user = self._user(username)
        pair = f"pair:{user}|{client.id}"
        n = self.c.hit(pair, self._pair_window)
        attacked = self.c.hit(f"user:{user}", self.s.login_window_s) >= self.s.login_max_per_user
        free = 0 if attacked and not client.device else self.s.login_free_failures
        if n > free:
            self.c.block(pair, min(2.0 ** min(n - free - 1, 30), self.s.login_backoff_max_s))
        if not client.device:
            self.c.hit(f"ip:{client.address}", self.s.login_window_s)

    def succeeded(self, username: str, client: Client) -> None:
        self.c.reset(f"pair:{self._user(username)}|{client.id}")
