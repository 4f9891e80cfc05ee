"""Security of the web service: ownership on every id, CSRF on every form, rate-limited login,
argon2id, hostile uploads (traversal names, pixel bombs, fake PNGs, zip bombs), DICOM
de-identification, cookies and headers."""

from __future__ import annotations

import re

import pytest

from tests.test_serve_support import (
    PASSWORD,
    api_token,
    app_routes,
    csrf,
    files_under,
    make_app,
    make_zip,
    new_client,
    png_bomb,
    signup,
    tiny_dicom,
    token_of,
    upload,
    upload_ok,
    wait_for_job,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def env(tmp_path_factory, serve_bundles, database_url):
    b = serve_bundles
    ws = tmp_path_factory.mktemp("ws_sec")
    app = make_app(ws, [b["a"]], max_upload_mb=1, database_url=database_url)
    with new_client(app):
        alice = signup(app, "alice")  # first account: admin
        bob = signup(app, "bob")
        carol = signup(app, "carol")
        yield {
            "app": app,
            "ws": ws,
            "alice": alice,
            "bob": bob,
            "carol": carol,
            "pngs": sorted(b["images"].glob("*.png")),
        }


def test_every_route_with_an_id_refuses_another_users_id(env):
    """Enumerates the app's routes, so a new route with an id is covered automatically."""
    app, bob, carol = env["app"], env["bob"], env["carol"]
    rid = upload_ok(bob, env["pngs"][0].read_bytes(), "bobs-scan.png")
    r = bob.post(
        "/batch",
        data={"csrf_token": token_of(bob)},
        files=[("files", ("one.png", env["pngs"][1].read_bytes(), "image/png"))],
    )
    job_id = r.headers["location"].rsplit("/", 1)[-1]
    wait_for_job(bob, job_id)
    bob_token = api_token(bob)
    from medlens.serve.db import ApiToken

    with app.state.medlens.db() as db:
        token_id = db.query(ApiToken).filter(ApiToken.prefix == bob_token[:10]).one().id
    from medlens.serve.db import User

    with app.state.medlens.db() as db:
        bob_id = db.query(User).filter(User.username == "bob").one().id
    ids = {
        "result_id": rid,
        "job_id": job_id,
        "token_id": str(token_id),
        "user_id": str(bob_id),
        "modality": "mri",  # not an id: a fusion result's per-modality heatmap is still Bob's
    }

    carol_api = new_client(app, headers={"Authorization": f"Bearer {api_token(carol)}"})
    checked = []
    for path, methods in app_routes():
        params = re.findall(r"{(\w+)}", path)
        if not params:
            continue
        url = path
        for p in params:
            assert p in ids, f"route {path} takes an id this test does not know: {p}"
            url = url.replace("{" + p + "}", ids[p])
        client = carol_api if path.startswith("/api/") else carol
        for method in sorted(methods - {"HEAD"}):
            kw = {"data": {"csrf_token": token_of(carol)}} if method == "POST" else {}
            resp = client.request(method, url, **kw)
            assert resp.status_code == 404, f"{method} {url}: {resp.status_code}"
            assert "bobs-scan" not in resp.text
            checked.append(f"{method} {path}")
    assert len(checked) >= 15, checked
    # Bob's objects are untouched and still his.
    assert bob.get(f"/results/{rid}").status_code == 200
    assert bob.get(f"/batch/{job_id}").status_code == 200
    bob_api = new_client(app, headers={"Authorization": f"Bearer {bob_token}"})
    assert bob_api.get("/api/v1/models").status_code == 200
    # Unknown and malformed ids look the same as other people's.
    assert carol.get("/results/" + "0" * 32).status_code == 404
    assert carol.get("/results/../../etc/passwd").status_code == 404


def test_anonymous_visitors_see_no_results(env):
    rid = upload_ok(env["bob"], env["pngs"][2].read_bytes(), "private.png")
    anon = new_client(env["app"])
    for url in ("/", "/history", f"/results/{rid}", f"/results/{rid}/original.png", "/upload"):
        r = anon.get(url)
        assert r.status_code in (303, 401), url
        assert "private.png" not in r.text
    assert anon.get("/login").status_code == 200


def test_forms_without_csrf_token_are_refused(env):
    bob = env["bob"]
    rid = upload_ok(bob, env["pngs"][3].read_bytes(), "csrf.png")
    post_routes = [p for p, m in app_routes() if "POST" in m and not p.startswith("/api/")]
    assert {"/login", "/signup", "/logout", "/upload", "/batch", "/tokens"} <= set(post_routes)
    for path in post_routes:
        url = path.replace("{result_id}", rid).replace("{job_id}", "0" * 32)
        url = url.replace("{token_id}", "1").replace("{user_id}", "1")
        for data in ({}, {"csrf_token": "forged"}):
            r = bob.post(url, data=data)
            assert r.status_code == 403, f"POST {url} {data}: {r.status_code}"
            assert "CSRF" in r.text
    # A valid token from another session does not work either.
    other = token_of(env["carol"])
    assert bob.post(f"/results/{rid}/delete", data={"csrf_token": other}).status_code == 403
    # Cross-site Origin is refused even with a valid token.
    r = bob.post(
        f"/results/{rid}/delete",
        data={"csrf_token": token_of(bob)},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403
    assert bob.get(f"/results/{rid}").status_code == 200  # still there
    # Pages never embed inline scripts or styles (the CSP forbids them anyway).
    for url in ("/upload", f"/results/{rid}", "/history", "/batch", "/tokens", "/login"):
        html = bob.get(url).text
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), url
        assert " style=" not in html and "<style" not in html, url
        assert not re.search(r"\son[a-z]+=", html), url


def test_login_throttle_is_per_user_and_client_with_backoff(tmp_path, serve_bundles):
    """Failures slow down the (user, client) pair that makes them - 1, 2, 4 s... - and an
    address that sprays many usernames; the right password from another client still works
    (the lock-out case is tests/test_serve_accounts.py)."""
    b = serve_bundles
    app = make_app(tmp_path / "ws", [b["a"]], login_free_failures=2, login_max_per_ip=6)
    signup(app, "victim")
    c = new_client(app, client=("203.0.113.9", 4000))
    tok = csrf(c.get("/login").text)

    def attempt(client, user: str, pw: str):  # type: ignore[no-untyped-def]
        return client.post("/login", data={"csrf_token": tok, "username": user, "password": pw})

    assert [attempt(c, "victim", "wrong-password-x").status_code for _ in range(3)] == [401] * 3
    blocked = attempt(c, "victim", PASSWORD)  # this client guessed: it waits, even when right
    assert blocked.status_code == 429 and "Too many failed attempts" in blocked.text
    assert int(blocked.headers["retry-after"]) >= 1
    assert attempt(c, "VICTIM", PASSWORD).status_code == 429  # usernames are case-insensitive
    other = new_client(app, client=("198.51.100.7", 4000))
    tok2 = csrf(other.get("/login").text)
    ok = other.post("/login", data={"csrf_token": tok2, "username": "victim", "password": PASSWORD})
    assert ok.status_code == 303
    # Per address: failures on many usernames from one address are capped as well.
    codes = [attempt(c, f"nobody{i}", "wrong-password-x").status_code for i in range(5)]
    assert codes[0] == 401 and codes[-1] == 429
    app.state.medlens.jobs.stop()


def test_password_hashes_are_argon2id_and_never_stored_plain(env):
    from medlens.serve.db import User

    with env["app"].state.medlens.db() as db:
        hashes = [u.password_hash for u in db.query(User).all()]
    assert hashes and all(h.startswith("$argon2id$") for h in hashes)
    assert len(set(hashes)) == len(hashes)  # same password, different salts
    db_bytes = b"".join(p.read_bytes() for p in env["ws"].glob("medlens.db*"))
    assert PASSWORD.encode() not in db_bytes


def test_session_cookie_flags_and_https(tmp_path, serve_bundles):
    b = serve_bundles
    app = make_app(tmp_path / "ws", [b["a"]])
    c = new_client(app, base_url="https://testserver")
    tok = csrf(c.get("/signup").text)
    r = c.post(
        "/signup",
        data={"csrf_token": tok, "username": "sec", "password": PASSWORD, "password2": PASSWORD},
    )
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and "session" in v)
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" in cookie
    assert "strict-transport-security" in c.get("/upload").headers
    # Over plain HTTP the cookie is not Secure (it would be dropped), unless configured.
    plain = new_client(app)
    tok = csrf(plain.get("/signup").text)
    r = plain.post(
        "/signup",
        data={"csrf_token": tok, "username": "sec2", "password": PASSWORD, "password2": PASSWORD},
    )
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and "session" in v)
    assert "HttpOnly" in cookie and "Secure" not in cookie
    # The session token is stored hashed only.
    token = re.search(r"medlens_session=([^;]+)", cookie).group(1)
    db_bytes = b"".join(p.read_bytes() for p in (tmp_path / "ws").glob("medlens.db*"))
    assert token.encode() not in db_bytes
    app.state.medlens.jobs.stop()


def test_logout_ends_the_server_side_session(env):
    c = signup(env["app"], "leaver")
    cookie = c.cookies.get("medlens_session")
    c.post("/logout", data={"csrf_token": token_of(c)})
    replay = new_client(env["app"], cookies={"medlens_session": cookie})
    assert replay.get("/history").status_code == 303


def test_login_next_is_not_an_open_redirect(env):
    for evil in ("//evil.example/x", "https://evil.example", "/\\evil.example"):
        c = new_client(env["app"])
        tok = csrf(c.get("/login").text)
        r = c.post(
            "/login",
            data={"csrf_token": tok, "username": "carol", "password": PASSWORD, "next": evil},
        )
        assert r.headers["location"] == "/upload", evil


def test_security_headers(env):
    r = env["bob"].get("/upload")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "same-origin"
    assert r.headers["cache-control"] == "no-store"
    assert "server" not in {
        k.lower() for k in r.headers
    }  # TestClient adds none; uvicorn is told not to


def test_traversal_file_name_is_stored_under_a_random_id(env, tmp_path, monkeypatch):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    before_outside = files_under(tmp_path)
    before_ws = files_under(env["ws"])
    rid = upload_ok(env["bob"], env["pngs"][4].read_bytes(), "../../etc/passwd")
    assert files_under(tmp_path) == before_outside  # nothing written outside the workspace
    assert not (tmp_path / "etc").exists()
    new = files_under(env["ws"]) - before_ws
    stored = [p for p in new if p.parent.parent.name == "images"]
    assert len(stored) == 1
    assert re.fullmatch(r"[0-9a-f]{32}\.png", stored[0].name)
    assert all("passwd" not in str(p) for p in files_under(env["ws"]))
    page = env["bob"].get(f"/results/{rid}").text
    assert "passwd" in page and "../" not in page  # kept only as sanitised display text


def test_pixel_bomb_png_is_refused_from_its_header(env, monkeypatch):
    from medlens.serve import uploads

    bomb = png_bomb(20_000, 20_000)
    assert len(bomb) < 200_000  # small file, 400 megapixels
    before = files_under(env["ws"] / "images")
    decoded: list[str] = []
    real_decode = uploads.decode_image

    def spy(path):  # type: ignore[no-untyped-def]
        decoded.append(str(path))
        return real_decode(path)

    monkeypatch.setattr(uploads, "decode_image", spy)
    r = upload(env["bob"], bomb, "bomb.png")
    assert r.status_code == 413
    assert "20000 x 20000" in r.text and "megapixel" in r.text
    assert decoded == []  # refused from the header: not one row was decompressed
    assert files_under(env["ws"] / "images") == before
    assert not any((env["ws"] / "tmp").iterdir())
    assert upload(env["bob"], env["pngs"][5].read_bytes()).status_code == 303  # still serving
    assert len(decoded) == 1  # and a real image does go through the decoder
    from PIL import Image

    assert Image.MAX_IMAGE_PIXELS == 50_000_000


def test_text_file_named_png_and_other_junk_are_refused(env):
    bob = env["bob"]
    r = upload(bob, b"hello, I am a text file\n", "scan.png")
    assert r.status_code == 415 and "Not a PNG, JPEG or DICOM" in r.text
    r = upload(bob, b"", "empty.png")
    assert r.status_code == 400 and "empty" in r.text
    r = upload(bob, env["pngs"][6].read_bytes()[:300], "truncated.png")
    assert r.status_code == 422 and "could not be decoded" in r.text
    r = upload(bob, b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "noihdr.png")
    assert r.status_code == 400
    r = upload(bob, b"x" * (1024 * 1024 + 10), "big.png")  # limit here: 1 MB
    assert r.status_code == 413 and "too large" in r.text.lower()
    r = upload(bob, b"x" * (3 * 1024 * 1024), "huge.png")  # refused before parsing
    assert r.status_code == 413
    r = new_client(env["app"], headers={"Authorization": "Bearer x"}).post(
        "/api/v1/predict", files={"file": ("a.png", b"nope")}
    )
    assert r.status_code == 401


def test_api_refuses_bad_uploads_with_reasons(env):
    api = new_client(env["app"], headers={"Authorization": f"Bearer {api_token(env['bob'])}"})
    r = api.post("/api/v1/predict", files={"file": ("x.png", b"plain text")})
    assert r.status_code == 415 and "PNG, JPEG or DICOM" in r.json()["error"]["message"]
    r = api.post("/api/v1/predict", files={"file": ("b.png", png_bomb(12_000, 12_000))})
    assert r.status_code == 413 and "megapixel" in r.json()["error"]["message"]


def test_dicom_identifiers_are_not_stored(env):
    from pydicom import dcmread

    bob = env["bob"]
    before = files_under(env["ws"])
    rid = upload_ok(bob, tiny_dicom("Doe^Jane", "MRN-0042-XYZ"), "study.dcm")
    new = files_under(env["ws"]) - before
    dcm = [p for p in new if p.suffix == ".dcm"]
    assert len(dcm) == 1
    ds = dcmread(dcm[0])
    for kw in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "InstitutionName",
        "ReferringPhysicianName",
        "AccessionNumber",
        "StudyDate",
    ):
        assert kw not in ds, kw
    assert ds.PatientIdentityRemoved == "YES"
    assert not any(e.tag.is_private for e in ds)
    secrets_ = (b"Doe^Jane", b"Jane Doe", b"MRN-0042", b"19700101", b"St Elsewhere", b"ACC-998877")
    stored = b"".join(p.read_bytes() for p in files_under(env["ws"]))  # images, derived, db
    for s in secrets_:
        assert s not in stored, s
    page = bob.get(f"/results/{rid}").text
    assert "Doe" not in page and "MRN" not in page
    assert bob.get(f"/results/{rid}/original.png").content.startswith(b"\x89PNG")


def test_zip_batches_are_read_in_memory_safely(env, tmp_path, monkeypatch):
    bob = env["bob"]
    monkeypatch.chdir(tmp_path)
    bomb = b"\x00" * (30 * 1024 * 1024)  # compresses to ~30 kB, expands past the 1 MB limit
    zipped = make_zip(
        {
            "../../evil.png": env["pngs"][7].read_bytes(),
            "/abs/path.png": env["pngs"][8].read_bytes(),
            "bomb.png": bomb,
        }
    )
    assert len(zipped) < 200_000
    before_outside = files_under(tmp_path)
    r = bob.post(
        "/batch",
        data={"csrf_token": token_of(bob)},
        files=[("files", ("x.zip", zipped, "application/zip"))],
    )
    assert r.status_code == 303, r.text[:300]
    job_id = r.headers["location"].rsplit("/", 1)[-1]
    assert wait_for_job(bob, job_id)["failed"] == 1
    page = bob.get(f"/batch/{job_id}").text
    assert "evil.png" in page and "path.png" in page and "too large" in page
    assert files_under(tmp_path) == before_outside
    assert not list(env["ws"].rglob("evil.png")) and not list(env["ws"].rglob("bomb.png"))
    # Too many entries: refused from the archive's directory, before anything is read.
    many = make_zip({f"f{i}.png": b"x" for i in range(500)})
    r = bob.post(
        "/batch",
        data={"csrf_token": token_of(bob)},
        files=[("files", ("many.zip", many, "application/zip"))],
    )
    assert r.status_code == 413 and "Too many" in r.text
    r = bob.post(
        "/batch",
        data={"csrf_token": token_of(bob)},
        files=[("files", ("bad.zip", b"PK\x03\x04garbage", "application/zip"))],
    )
    assert r.status_code == 400


def test_png_text_chunks_and_jpeg_exif_are_not_stored(env):
    import io

    from PIL import Image, PngImagePlugin

    bob = env["bob"]
    src = Image.open(env["pngs"][9]).convert("L")
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "Patient Doe^Jane MRN-0042-XYZ")
    png = io.BytesIO()
    src.save(png, format="PNG", pnginfo=info)
    exif = Image.Exif()
    exif[0x013B] = "Doe^Jane"  # Artist
    jpg = io.BytesIO()
    src.save(jpg, format="JPEG", quality=95, exif=exif)
    assert b"Doe^Jane" in png.getvalue() and b"Doe^Jane" in jpg.getvalue()
    before = files_under(env["ws"])
    upload_ok(bob, png.getvalue(), "text-chunk.png")
    upload_ok(bob, jpg.getvalue(), "exif.jpg")
    new = files_under(env["ws"]) - before
    assert len([p for p in new if p.parent.parent.name == "images"]) == 2
    assert all(b"Doe^Jane" not in p.read_bytes() for p in new)
