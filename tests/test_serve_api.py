"""The clinician web service and its REST API, through FastAPI's TestClient on a real bundle."""

from __future__ import annotations

import csv
import io
import re
import sys

import pytest

from tests.test_serve_support import (
    PASSWORD,
    api_token,
    csrf,
    make_app,
    make_zip,
    new_client,
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
    ws = tmp_path_factory.mktemp("ws_api")
    app = make_app(ws, [b["a"], b["b"]], database_url=database_url)
    with new_client(app):  # runs the lifespan: the batch worker is stopped at the end
        admin = signup(app, "admin_user")
        alice = signup(app, "alice")
        pngs = sorted(b["images"].glob("*.png"))
        yield {"app": app, "ws": ws, "admin": admin, "alice": alice, "pngs": pngs}


def test_first_account_is_admin_later_ones_clinicians(env):
    from medlens.serve.db import User

    state = env["app"].state.medlens
    with state.db() as db:
        roles = {u.username: u.role for u in db.query(User).all()}
    assert roles["admin_user"] == "admin"
    assert roles["alice"] == "clinician"
    assert "Admin" in env["admin"].get("/upload").text
    assert env["alice"].get("/admin").status_code == 404


def test_login_and_logout(env):
    c = new_client(env["app"])
    assert c.get("/history").status_code == 303  # not logged in: to the login page
    tok = csrf(c.get("/login").text)
    bad = c.post(
        "/login", data={"csrf_token": tok, "username": "alice", "password": "nope-nope-nope"}
    )
    assert bad.status_code == 401 and "Wrong username or password" in bad.text
    r = c.post("/login", data={"csrf_token": tok, "username": "alice", "password": PASSWORD})
    assert r.status_code == 303
    assert c.get("/history").status_code == 200
    r = c.post("/logout", data={"csrf_token": token_of(c)})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert c.get("/history").status_code == 303


def test_upload_result_page_images_and_pdf(env):
    alice = env["alice"]
    rid = upload_ok(alice, env["pngs"][0].read_bytes(), "chest 1.png")
    page = alice.get(f"/results/{rid}")
    assert page.status_code == 200
    html = page.text
    # Decision first, how sure, which model, threshold rule, disclaimer, summary.
    assert html.index("Decision") < html.index("Probabilities") < html.index("Images")
    assert "tiny_cxr (small_cnn)" in html
    assert re.search(r"<strong>\d+%</strong> calibrated probability", html)
    assert "threshold" in html.lower()
    assert "a clinician reviews the image and decides" in html
    assert "What to check" in html and "Who decides" in html
    for cls in ("normal", "pneumonia", "tuberculosis"):
        assert f'<th scope="row">{cls}' in html
    assert "chest 1.png" in html
    for suffix in ("original.png", "preprocessed.png", "heatmap.png?method=gradcam%2B%2B"):
        r = alice.get(f"/results/{rid}/{suffix}")
        assert r.status_code == 200 and r.content.startswith(b"\x89PNG"), suffix
    # Another heatmap method on request.
    r = alice.get(f"/results/{rid}?method=eigencam")
    assert 'src="/results/' + rid + '/heatmap.png?method=eigencam"' in r.text
    pdf = alice.get(f"/results/{rid}/report.pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    assert pdf.headers["content-type"] == "application/pdf"


def test_heatmap_unavailable_does_not_break_the_page(env, monkeypatch):
    alice = env["alice"]
    rid = upload_ok(alice, env["pngs"][1].read_bytes(), "no-heatmap.png")
    monkeypatch.setitem(sys.modules, "medlens.explain", None)  # import now fails
    page = alice.get(f"/results/{rid}?method=layercam")
    assert page.status_code == 200
    assert "heatmap unavailable" in page.text
    assert alice.get(f"/results/{rid}/report.pdf").content.startswith(b"%PDF")


def test_dicom_upload_is_read_like_training(env):
    alice = env["alice"]
    rid = upload_ok(alice, tiny_dicom(), "study.dcm")
    html = alice.get(f"/results/{rid}").text
    assert "DICOM (de-identified)" in html


def test_other_models_and_side_by_side(env):
    alice = env["alice"]
    r = upload(alice, env["pngs"][2].read_bytes(), "compare.png", model="__all__")
    assert r.status_code == 303 and r.headers["location"].endswith("/compare")
    rid = r.headers["location"].split("/")[2]
    state = env["app"].state.medlens
    assert len(state.models) == 2
    r = alice.post(
        f"/results/{rid}/model", data={"csrf_token": token_of(alice), "model": "__all__"}
    )
    assert r.status_code == 303 and r.headers["location"].endswith("/compare")
    page = alice.get(r.headers["location"])
    assert page.status_code == 200
    assert "tiny_cxr (small_cnn)" in page.text and "tiny_cxr_second (small_cnn)" in page.text
    assert page.text.count("a clinician reviews the image and decides") >= 2


def test_history_search_and_delete_only_own(env):
    alice, admin = env["alice"], env["admin"]
    rid = upload_ok(alice, env["pngs"][3].read_bytes(), "findme-xyz.png")
    own = upload_ok(admin, env["pngs"][4].read_bytes(), "admins-own.png")
    h = alice.get("/history?q=findme").text
    assert "findme-xyz.png" in h and "admins-own.png" not in h
    assert "admins-own.png" not in alice.get("/history").text
    # The admin sees everyone's results, with the owner.
    ha = admin.get("/history").text
    assert "findme-xyz.png" in ha and "admins-own.png" in ha and "alice" in ha
    r = alice.post(f"/results/{rid}/delete", data={"csrf_token": token_of(alice)})
    assert r.status_code == 303
    assert alice.get(f"/results/{rid}").status_code == 404
    assert "findme-xyz.png" not in alice.get("/history").text
    assert admin.get(f"/results/{own}").status_code == 200


def test_batch_zip_worklist_ordering_and_csv(env):
    alice = env["alice"]
    entries = {f"case_{i:02d}.png": p.read_bytes() for i, p in enumerate(env["pngs"][5:13])}
    entries["notes.png"] = b"this is not an image"
    entries["../../escape.png"] = env["pngs"][13].read_bytes()
    entries["=HYPERLINK(1).png"] = env["pngs"][14].read_bytes()
    r = alice.post(
        "/batch",
        data={"csrf_token": token_of(alice)},
        files=[("files", ("cases.zip", make_zip(entries), "application/zip"))],
    )
    assert r.status_code == 303, r.text[:500]
    job_id = r.headers["location"].rsplit("/", 1)[-1]
    status = wait_for_job(alice, job_id)
    assert status == {"status": "done", "done": 11, "total": 11, "failed": 1}
    page = alice.get(f"/batch/{job_id}")
    assert "escape.png" in page.text and "not a png, jpeg or dicom" in page.text.lower()

    state = env["app"].state.medlens
    from medlens.serve import batch
    from medlens.serve.db import User

    with state.db() as db:
        job = batch.get_job(db, User(id=0, role="admin"), job_id)
        items = batch.worklist(db, job)
        keys = [(it.result.priority_rank, -it.result.risk) for it in items if it.result]
        assert keys == sorted(keys)
        assert items[-1].result is None and items[-1].display_name == "notes.png"

    body = alice.get(f"/batch/{job_id}/worklist.csv")
    assert body.status_code == 200 and body.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(body.text)))
    assert len(rows) == 11
    assert [int(x["rank"]) for x in rows] == list(range(1, 12))
    assert rows[-1]["error"] and rows[-1]["file"] == "notes.png"
    assert any(x["file"] == "'=HYPERLINK(1).png" for x in rows)  # formula neutralised
    assert {"p_normal", "p_pneumonia", "p_tuberculosis", "model", "bundle_sha256"} <= set(rows[0])
    assert all("clinician" in x["disclaimer"] for x in rows)
    assert not list(env["ws"].rglob("escape.png"))


def test_triage_orders_by_policy_priority_then_risk_and_flags_borderline():
    from medlens.evaluate.policy import DecisionPolicy
    from medlens.inference import Predictor
    from medlens.serve.engine import triage

    prio = ["tuberculosis", "pneumonia"]
    thr = {"tuberculosis": 0.30, "pneumonia": 0.45}
    classes = ["normal", "pneumonia", "tuberculosis"]
    predictor = Predictor.__new__(Predictor)  # the borderline rule needs only the policy
    predictor.policy = DecisionPolicy(classes, prio, thr)

    def near(p: dict[str, float]) -> list[str]:
        return predictor.borderline(p, 0.05)

    cases = {
        "tb_low": ({"normal": 0.6, "pneumonia": 0.05, "tuberculosis": 0.35}, "tuberculosis"),
        "tb_high": ({"normal": 0.1, "pneumonia": 0.1, "tuberculosis": 0.8}, "tuberculosis"),
        "pn": ({"normal": 0.2, "pneumonia": 0.7, "tuberculosis": 0.1}, "pneumonia"),
        "normal_risky": ({"normal": 0.7, "pneumonia": 0.28, "tuberculosis": 0.02}, "normal"),
        "normal_safe": ({"normal": 0.95, "pneumonia": 0.03, "tuberculosis": 0.02}, "normal"),
    }
    t = {k: triage(p, d, prio, near(p)) for k, (p, d) in cases.items()}
    order = sorted(t, key=lambda k: (t[k].priority_rank, -t[k].risk))
    assert order == ["tb_high", "tb_low", "pn", "normal_risky", "normal_safe"]
    assert t["tb_low"].borderline == ["p(tuberculosis) = 0.350, threshold 0.30"]
    assert not t["tb_high"].borderline and not t["normal_safe"].borderline
    # A threshold of 1.0 never fires, so nothing is "near" it.
    predictor.policy = DecisionPolicy(["a", "b"], ["a"], {"a": 1.0})
    assert not near({"a": 0.97, "b": 0.03})


def test_summary_says_what_how_sure_what_to_check_who_decides():
    from medlens.serve.summary import SummaryInput, summary_text

    s = SummaryInput(
        model_name="cxr (convnext)",
        decision="tuberculosis",
        label="normal",
        probabilities={"normal": 0.55, "pneumonia": 0.1, "tuberculosis": 0.35},
        decision_threshold=0.3,
        calibrated=True,
        priority=["tuberculosis", "pneumonia"],
        borderline=["p(tuberculosis) = 0.35 is within 0.05 of its threshold 0.30"],
        preprocess_info={"clahe_applied": True, "exposure_status": "dark"},
    )
    text = summary_text(s)
    assert "cxr (convnext) suggests tuberculosis" in text
    assert "35%" in text and "30%" in text and "normal is more probable" in text
    assert "Borderline" in text and "CLAHE" in text
    assert "clinician reviews the image and decides" in text


def test_api_token_auth_and_endpoints(env):
    alice = env["alice"]
    token = api_token(alice)
    assert token not in alice.get("/tokens").text  # shown once only
    api = new_client(env["app"], headers={"Authorization": f"Bearer {token}"})
    models = api.get("/api/v1/models")
    assert models.status_code == 200 and len(models.json()) == 2
    assert models.json()[0]["classes"] == ["normal", "pneumonia", "tuberculosis"]

    r = api.post("/api/v1/predict", files={"file": ("x.png", env["pngs"][20].read_bytes())})
    assert r.status_code == 201, r.text
    res = r.json()
    assert res["model"] == "tiny_cxr (small_cnn)" and len(res["bundle"]["sha256"]) == 64
    assert "clinician" in res["disclaimer"] and res["decision"] in res["probabilities"]
    assert abs(sum(res["probabilities"].values()) - 1) < 1e-6

    assert api.get(f"/api/v1/results/{res['id']}").json()["id"] == res["id"]
    listing = api.get("/api/v1/results", params={"q": "x.png"}).json()
    assert any(x["id"] == res["id"] for x in listing["results"])
    heat = api.get(f"/api/v1/results/{res['id']}/explain", params={"method": "gradcam"})
    assert heat.status_code == 200 and heat.content.startswith(b"\x89PNG")
    nope = api.get(f"/api/v1/results/{res['id']}/explain?method=nope")
    assert nope.status_code == 422 and nope.json()["error"]["field"] == "query.method"
    assert api.get(f"/api/v1/results/{res['id']}/report.pdf").content.startswith(b"%PDF")

    zipped = make_zip({f"b{i}.png": p.read_bytes() for i, p in enumerate(env["pngs"][21:24])})
    job = api.post("/api/v1/batch", files=[("files", ("b.zip", zipped, "application/zip"))])
    assert job.status_code == 202
    wait_for_job(alice, job.json()["id"])
    done = api.get(f"/api/v1/batch/{job.json()['id']}").json()
    assert done["status"] == "done" and len(done["worklist"]) == 3

    assert api.delete(f"/api/v1/results/{res['id']}").status_code == 204
    assert api.get(f"/api/v1/results/{res['id']}").status_code == 404

    # Wrong, missing and revoked tokens; a session cookie is not accepted by the API.
    bad = new_client(env["app"], headers={"Authorization": "Bearer mlt_wrong"})
    assert bad.get("/api/v1/models").status_code == 401
    assert new_client(env["app"]).get("/api/v1/results").status_code == 401
    assert alice.get("/api/v1/results").status_code == 401
    from medlens.serve.db import ApiToken

    with env["app"].state.medlens.db() as db:
        tid = db.query(ApiToken).filter(ApiToken.prefix == token[:10]).one().id
    alice.post(f"/tokens/{tid}/revoke", data={"csrf_token": token_of(alice)})
    assert api.get("/api/v1/models").status_code == 401


def test_health_and_openapi(env):
    c = new_client(env["app"])
    assert c.get("/api/v1/health").json() == {"status": "ok", "models": 2, "database": "ok"}
    schema = c.get("/api/v1/openapi.json").json()
    for path in (
        "/api/v1/predict",
        "/api/v1/batch",
        "/api/v1/results",
        "/api/v1/results/{result_id}",
        "/api/v1/results/{result_id}/explain",
        "/api/v1/models",
        "/api/v1/health",
    ):
        assert path in schema["paths"], path
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert not any(p.startswith("/results") for p in schema["paths"])  # pages are not API


def test_admin_closes_signup(env):
    admin = env["admin"]
    r = admin.post("/admin/signup", data={"csrf_token": token_of(admin), "open": "0"})
    assert r.status_code == 303
    c = new_client(env["app"])
    assert c.get("/signup").status_code == 403
    tok = csrf(c.get("/login").text)
    r = c.post(
        "/signup",
        data={
            "csrf_token": tok,
            "username": "mallory",
            "password": PASSWORD,
            "password2": PASSWORD,
        },
    )
    assert r.status_code == 403
    admin.post("/admin/signup", data={"csrf_token": token_of(admin), "open": "1"})
    assert c.get("/signup").status_code == 200


def test_migrations_match_models_and_create_account(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from medlens.errors import MedlensError
    from medlens.serve import create_account
    from medlens.serve.db import Base, User, make_engine, migrate, session_factory

    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    migrate(engine)
    migrate(engine)  # idempotent
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()

    create_account("root_admin", PASSWORD, workspace=tmp_path / "ws")
    with pytest.raises(MedlensError, match="cannot be used"):
        create_account("root_admin", PASSWORD, workspace=tmp_path / "ws")
    engine = make_engine(f"sqlite:///{(tmp_path / 'ws' / 'medlens.db').resolve()}")
    with session_factory(engine)() as db:
        u = db.query(User).one()
        assert u.role == "admin" and u.password_hash.startswith("$argon2id$")
    engine.dispose()
