"""Accounts: throttling that a stranger cannot turn into a lock-out, shared by every process;
password strength from zxcvbn; sign-up closed by default with accounts made by an admin."""

from __future__ import annotations

import pytest

from tests.test_serve_support import PASSWORD, csrf, make_app, new_client, signup, token_of

pytestmark = pytest.mark.timeout(300)
STRANGER = ("203.0.113.9", 4000)


def _login(client, username: str, password: str):  # type: ignore[no-untyped-def]
    tok = csrf(client.get("/login").text)
    return client.post(
        "/login", data={"csrf_token": tok, "username": username, "password": password}
    )


@pytest.fixture
def app(tmp_path, serve_bundles, fresh_database_url):
    a = make_app(
        tmp_path / "ws",
        [serve_bundles["a"]],
        database_url=fresh_database_url,
        login_free_failures=3,
        login_max_per_ip=50,
        warm_models=False,
        batch_worker=False,
    )
    yield a
    a.state.medlens.engine.dispose()


def test_a_stranger_cannot_lock_a_clinician_out(app):
    """Ten wrong passwords for 'victim' from a stranger slow the stranger down only: the
    clinician gets in from their own browser (device cookie) even behind the same address,
    and from any other address."""
    victim = signup(app, "victim")  # signed in once: this browser holds a device cookie
    victim.post("/logout", data={"csrf_token": token_of(victim)})
    stranger = new_client(app, client=STRANGER)
    codes = [_login(stranger, "victim", f"guess-{i}-wrong").status_code for i in range(10)]
    assert codes[:3] == [401] * 3 and set(codes[3:]) <= {401, 429} and 429 in codes
    assert _login(stranger, "victim", PASSWORD).status_code == 429  # the guesser waits

    # The clinician's own browser, from the stranger's address (a shared hospital NAT).
    same_nat = new_client(app, client=STRANGER, cookies=dict(victim.cookies))
    assert _login(same_nat, "victim", PASSWORD).status_code == 303
    # And a fresh browser at another address.
    elsewhere = new_client(app, client=("198.51.100.7", 4000))
    assert _login(elsewhere, "victim", PASSWORD).status_code == 303


def test_backoff_doubles_per_failure_and_is_capped(app):
    from medlens.serve.throttle import Client

    st = app.state.medlens
    throttle, counters = st.login, st.counters
    client = Client("ip:192.0.2.1", "192.0.2.1", device=False)
    waits = []
    for _ in range(6):
        throttle.failed("someone", client)
        waits.append(round(throttle.wait("someone", client)))
    assert waits[:3] == [0, 0, 0]  # the free failures
    assert waits[3:] == [1, 2, 4]  # then 1, 2, 4 s...
    for _ in range(20):
        throttle.failed("someone", client)
    assert throttle.wait("someone", client) <= st.settings.login_backoff_max_s
    throttle.succeeded("someone", client)
    assert throttle.wait("someone", client) == 0
    # Keys are HMAC'd: neither the username nor the address is stored readable.
    from medlens.serve.db import Throttle

    with st.db() as db:
        keys = [t.key for t in db.query(Throttle).all()]
    assert keys and not any("someone" in k or "192.0.2.1" in k for k in keys)
    assert counters.key("ip:192.0.2.1") in keys


def test_throttling_holds_across_two_server_processes(app, tmp_path, serve_bundles):
    """Two app instances on one database (two web processes): failures made on one count on
    the other, so adding processes does not multiply an attacker's guesses."""
    url = app.state.medlens.settings.database_url
    other = make_app(
        tmp_path / "ws",  # same workspace: same SQLite file when url is None
        [serve_bundles["a"]],
        database_url=url,
        login_free_failures=3,
        login_max_per_ip=50,
        warm_models=False,
        batch_worker=False,
    )
    signup(app, "shared")
    a = new_client(app, client=STRANGER)
    b = new_client(other, client=STRANGER)
    assert [_login(a, "shared", "wrong-password-1").status_code for _ in range(3)] == [401] * 3
    assert _login(a, "shared", "wrong-password-2").status_code == 401  # 4th: blocked after
    blocked = _login(b, "shared", PASSWORD)  # the other process knows
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
    # A session made on one process is valid on the other (sessions are rows, not memory).
    c = new_client(app)
    assert _login(c, "shared", PASSWORD).status_code == 303
    d = new_client(other, cookies=dict(c.cookies))
    assert d.get("/history").status_code == 200
    other.state.medlens.engine.dispose()


@pytest.mark.parametrize("weak", ["aaaaaaaaaa", "0123456789", "password123!", "qwertyuiop12"])
def test_guessable_passwords_are_refused_with_advice(weak):
    from medlens.serve.security import password_problem

    problem = password_problem(weak, "alice", 10)
    assert problem is not None and "too easy to guess" in problem
    assert password_problem(PASSWORD, "alice", 10) is None
    assert "username" in password_problem("alice-alice", "alice-alice", 10)


def test_signup_is_closed_by_default_and_admins_create_accounts(tmp_path, serve_bundles):
    from medlens.serve import ServeSettings, create_app

    app = create_app(
        ServeSettings(
            bundles=[serve_bundles["a"]],
            workspace=tmp_path / "ws",
            warm_models=False,
            warm_explanations=False,
            batch_worker=False,
        )
    )
    admin = signup(app, "first_admin")  # the first account of a new server may sign up
    c = new_client(app)
    assert c.get("/signup").status_code == 403  # then it is closed
    assert "Sign up" not in c.get("/login").text
    weak = admin.post(
        "/admin/users",
        data={"csrf_token": token_of(admin), "username": "nurse", "password": "aaaaaaaaaa"},
    )
    assert weak.status_code == 400 and "too easy to guess" in weak.text
    made = admin.post(
        "/admin/users",
        data={"csrf_token": token_of(admin), "username": "nurse", "password": PASSWORD},
    )
    assert made.status_code == 303
    again = admin.post(
        "/admin/users",
        data={"csrf_token": token_of(admin), "username": "NURSE", "password": PASSWORD},
    )
    assert again.status_code == 409 and "cannot be used" in again.text
    assert _login(new_client(app), "nurse", PASSWORD).status_code == 303


def test_open_signup_says_only_what_it_must(app):
    """With sign-up opened, a taken name is refused with a neutral message, only after the
    password passed (so weak-password probes reveal nothing), and every try is counted."""
    signup(app, "first")
    c = new_client(app)

    def attempt(username: str, password: str):  # type: ignore[no-untyped-def]
        tok = csrf(c.get("/signup").text)
        return c.post(
            "/signup",
            data={
                "csrf_token": tok,
                "username": username,
                "password": password,
                "password2": password,
            },
        )

    weak_taken, weak_free = attempt("first", "aaaaaaaaaa"), attempt("nobody_yet", "aaaaaaaaaa")
    assert weak_taken.status_code == weak_free.status_code == 400  # identical answers
    taken = attempt("first", PASSWORD)
    assert taken.status_code == 409 and "taken" not in taken.text
    assert "cannot be used" in taken.text
