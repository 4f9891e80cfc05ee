"""What a first user of the web service trips on (issue 14, items 2 and 16-20): percentages that
never claim certainty, demonstration models that say so, bundles told apart, the PDF's
threshold marks, test figures, accession and sign-off, worklist thumbnails, the 404 page's
navigation, account administration (web and ``serve-admin`` functions), the local API docs page,
and the start-up warm-up."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from tests.test_serve_heads import pdf_text
from tests.test_serve_support import (
    PASSWORD,
    csrf,
    make_app,
    make_zip,
    new_client,
    signup,
    token_of,
    upload_ok,
    wait_for_job,
)

pytestmark = pytest.mark.timeout(300)
NEW_PASSWORD = "a brand new passphrase 42"


@pytest.fixture(scope="module")
def env(tmp_path_factory, serve_bundles, database_url):
    b = serve_bundles
    ws = tmp_path_factory.mktemp("ws_pages")
    app = make_app(ws, [b["a"], b["b"]], database_url=database_url)
    with new_client(app):
        admin = signup(app, "admin_pages")
        dora = signup(app, "dora")
        yield {
            "app": app,
            "admin": admin,
            "dora": dora,
            "pngs": sorted(b["images"].glob("*.png")),
            "bundles": b,
        }


def _set_probabilities(env, rid: str, probs: dict[str, float], decision: str) -> None:
    from medlens.serve.db import Result

    with env["app"].state.medlens.db() as db:
        r = db.get(Result, rid)
        r.probabilities, r.decision, r.label = probs, decision, decision
        r.confidence, r.decision_threshold = probs[decision], None
        db.commit()


# -- item 2 -----------------------------------------------------------------------------------


def test_pct_never_rounds_to_certainty():
    from medlens.serve.formatting import pct

    assert pct(0.996) == ">99%" and pct(0.9996, 1) == ">99.9%"
    assert pct(0.996, 1) == "99.6%" and pct(0.42) == "42%"
    assert pct(1.0) == "100%" and pct(0.0) == "0%"
    assert pct(0.004) == "<1%" and pct(0.0004, 1) == "<0.1%"
    assert pct(float("nan")) == "n/a" and pct(None) == "n/a"


def test_a_996_probability_is_never_shown_as_100_percent(env):
    dora = env["dora"]
    rid = upload_ok(dora, env["pngs"][0].read_bytes(), "sure.png")
    _set_probabilities(
        env, rid, {"normal": 0.996, "pneumonia": 0.003, "tuberculosis": 0.001}, "normal"
    )
    html = dora.get(f"/results/{rid}").text
    assert "<strong>&gt;99%</strong>" in html  # the headline
    assert "99.6%" in html  # the bar's figure
    assert "100%" not in html and "100.0%" not in html
    text = pdf_text(dora.get(f"/results/{rid}/report.pdf").content)
    assert ">99%" in text and "99.6%" in text and "100%" not in text
    history = dora.get("/history").text
    assert "&gt;99%" in history and "100%" not in history


# -- item 16 ----------------------------------------------------------------------------------


def test_bundle_records_what_it_was_trained_on(env):
    from medlens.bundle import load_bundle

    b = load_bundle(env["bundles"]["a"])
    meta = json.loads((env["bundles"]["a"] / "bundle.json").read_text())
    assert meta["training_data"]["synthetic"] is True  # written into bundle.json itself
    td = b.training_data
    assert td["source"] == "phantoms" and td["n_images"] == meta["data_fingerprint"]["n_samples"]
    assert "phantoms" in td["origin"] and b.synthetic
    models = env["app"].state.medlens.models
    assert all(m.synthetic for m in models)
    api_model = {m.key: m.describe() for m in models}
    assert all(d["training_data"]["synthetic"] for d in api_model.values())


def test_demonstration_model_says_so_on_every_page_and_the_pdf(env):
    from medlens.inference import DEMO_NOTICE

    dora = env["dora"]
    rid = upload_ok(dora, env["pngs"][1].read_bytes(), "demo.png")
    for url in ("/upload", "/history", f"/results/{rid}", "/batch", "/tokens", "/account"):
        assert DEMO_NOTICE in dora.get(url).text, url
    assert DEMO_NOTICE in env["admin"].get("/admin").text
    assert DEMO_NOTICE in new_client(env["app"]).get("/login").text
    text = pdf_text(dora.get(f"/results/{rid}/report.pdf").content)
    assert text.count(DEMO_NOTICE) >= 2  # at the top and in the page footer
    assert dora.get("/api/v1/health").status_code == 200


def test_two_bundles_of_one_recipe_are_told_apart_in_menus(env):
    models = list(env["app"].state.medlens.models)
    html = env["dora"].get("/upload").text
    options = re.findall(r'<option value="([^"]+)"[^>]*>([^<]+)</option>', html)
    labels = {key: label for key, label in options if key != "__all__"}
    assert len(labels) == 2 and len(set(labels.values())) == 2
    for m in models:
        label = labels[m.key]
        assert m.sha256[:8] in label and re.search(r"\d{4}-\d{2}-\d{2}", label)
        assert "synthetic" in label


# -- item 17 ----------------------------------------------------------------------------------


def test_pdf_draws_and_labels_the_thresholds_it_mentions():
    from datetime import UTC, datetime

    from medlens.serve.pdf import ReportData, render_pdf

    def report(thresholds: dict[str, float]) -> bytes:
        return render_pdf(
            ReportData(
                result_id="r" * 32,
                display_name="x.png",
                created_at=datetime(2026, 1, 2, tzinfo=UTC),
                model_name="m (small_cnn)",
                bundle_name="m",
                bundle_sha256="0" * 64,
                intended_use="tests",
                decision="tuberculosis",
                label="normal",
                confidence_decision=0.35,
                decision_threshold=0.3,
                calibrated=True,
                probabilities={"normal": 0.55, "pneumonia": 0.1, "tuberculosis": 0.35},
                thresholds=thresholds,
                summary=[],
                borderline=[],
                original_png=None,
                preprocessed_png=None,
                heatmap_png=None,
                heatmap_method="Grad-CAM",
                heatmap_note=None,
            )
        )

    with_marks = report({"tuberculosis": 0.3, "pneumonia": 0.45, "normal": 1.0})
    text = pdf_text(with_marks)
    assert "threshold 30%" in text and "threshold 45%" in text  # each mark labelled on its bar
    assert "thresholds (tuberculosis 30%, pneumonia 45%)" in text
    assert "threshold 100%" not in text  # a threshold that cannot fire is not drawn
    without = pdf_text(report({}))
    assert "Vertical marks" not in without and "No policy threshold applies" in without


def test_pdf_has_test_figures_accession_and_sign_off(env):
    from medlens.serve.db import StoredImage

    dora = env["dora"]
    tok = token_of(dora)
    r = dora.post(
        "/upload",
        data={"csrf_token": tok, "model": "", "accession": "ACC-2026-0042"},
        files={"file": ("acc.png", env["pngs"][2].read_bytes(), "image/png")},
    )
    assert r.status_code == 303
    rid = r.headers["location"].rsplit("/", 1)[-1]
    assert "ACC-2026-0042" in dora.get(f"/results/{rid}").text
    text = pdf_text(dora.get(f"/results/{rid}/report.pdf").content)
    assert "ACC-2026-0042" in text
    assert "Reviewer sign-off" in text and "Reviewed by" in text and "Signature" in text
    model = env["app"].state.medlens.models.get(None)
    metrics = json.loads((env["bundles"]["a"] / "metrics.json").read_text())
    figures = dict(model.test_figures())
    assert "Model performance on held-out test data" in text
    assert f"({metrics['n']} images, 95 % intervals)" in text
    auc = metrics["intervals"]["overall"]["macro_roc_auc"]
    assert figures["macro ROC-AUC"].startswith(f"{auc['value']:.3f}")
    for name, value in figures.items():
        assert f"{name} {value}" in text, name
    # Stored only if given: an upload without one leaves the column empty.
    plain = upload_ok(dora, env["pngs"][3].read_bytes(), "no-acc.png")
    with env["app"].state.medlens.db() as db:
        from medlens.serve.db import Result

        assert db.get(Result, plain).image.accession is None
        assert db.get(Result, rid).image.accession == "ACC-2026-0042"
        assert db.query(StoredImage).filter(StoredImage.accession.is_not(None)).count() == 1
    too_long = dora.post(
        "/upload",
        data={"csrf_token": token_of(dora), "accession": "x" * 80},
        files={"file": ("a.png", env["pngs"][4].read_bytes(), "image/png")},
    )
    assert too_long.status_code == 400 and "at most 64" in too_long.text


# -- item 18 ----------------------------------------------------------------------------------


def test_worklist_shows_thumbnails(env):
    from PIL import Image

    dora = env["dora"]
    entries = {f"w{i}.png": p.read_bytes() for i, p in enumerate(env["pngs"][5:8])}
    r = dora.post(
        "/batch",
        data={"csrf_token": token_of(dora)},
        files=[("files", ("w.zip", make_zip(entries), "application/zip"))],
    )
    job = r.headers["location"].rsplit("/", 1)[-1]
    wait_for_job(dora, job)
    html = dora.get(f"/batch/{job}").text
    thumbs = re.findall(r'<img src="(/results/[0-9a-f]{32}/thumb\.png)"', html)
    assert len(thumbs) == 3
    img = dora.get(thumbs[0])
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert max(Image.open(io.BytesIO(img.content)).size) <= 96
    assert env["admin"].get(thumbs[0]).status_code == 200  # admins see everyone's
    other = signup(env["app"], "eve_thumbs")
    assert other.get(thumbs[0]).status_code == 404


def test_404_page_keeps_the_navigation(env):
    page = env["dora"].get("/results/" + "0" * 32)
    assert page.status_code == 404 and "Not found" in page.text
    assert 'aria-label="Main"' in page.text and 'href="/history"' in page.text
    assert "Signed in as <strong>dora</strong>" in page.text
    missing = env["dora"].get("/no/such/page")
    assert missing.status_code == 404 and 'aria-label="Main"' in missing.text
    anon = new_client(env["app"]).get("/no/such/page")
    assert anon.status_code == 404 and 'aria-label="Main"' not in anon.text


def _login(app, username: str, password: str):  # type: ignore[no-untyped-def]
    c = new_client(app)
    tok = csrf(c.get("/login").text)
    r = c.post("/login", data={"csrf_token": tok, "username": username, "password": password})
    return c, r.status_code


def _user_id(app, username: str) -> int:
    from medlens.serve.db import User

    with app.state.medlens.db() as db:
        return db.query(User).filter(User.username == username).one().id


def test_admin_resets_a_password_and_disables_a_user_from_the_ui(env):
    app, admin = env["app"], env["admin"]
    frank = signup(app, "frank")
    uid = _user_id(app, "frank")
    assert "frank" in admin.get("/admin").text
    weak = admin.post(
        f"/admin/users/{uid}/password", data={"csrf_token": token_of(admin), "password": "short"}
    )
    assert weak.status_code == 400 and "too short" in weak.text
    r = admin.post(
        f"/admin/users/{uid}/password",
        data={"csrf_token": token_of(admin), "password": NEW_PASSWORD},
    )
    assert r.status_code == 303
    assert frank.get("/history").status_code == 303  # the reset ended frank's session
    assert _login(app, "frank", PASSWORD)[1] == 401
    frank, code = _login(app, "frank", NEW_PASSWORD)
    assert code == 303 and frank.get("/history").status_code == 200

    r = admin.post(
        f"/admin/users/{uid}/active", data={"csrf_token": token_of(admin), "active": "0"}
    )
    assert r.status_code == 303 and "disabled" in admin.get("/admin").text
    assert frank.get("/history").status_code == 303  # signed out at once
    assert _login(app, "frank", NEW_PASSWORD)[1] == 401
    admin.post(f"/admin/users/{uid}/active", data={"csrf_token": token_of(admin), "active": "1"})
    assert _login(app, "frank", NEW_PASSWORD)[1] == 303
    # An admin cannot lock themselves out, and clinicians cannot reach these routes.
    me = _user_id(app, "admin_pages")
    r = admin.post(f"/admin/users/{me}/active", data={"csrf_token": token_of(admin)})
    assert r.status_code == 400 and "your own account" in r.text
    dora = env["dora"]
    r = dora.post(
        f"/admin/users/{uid}/password",
        data={"csrf_token": token_of(dora), "password": NEW_PASSWORD + "x"},
    )
    assert r.status_code == 404


def test_serve_admin_functions_manage_accounts_without_the_ui(tmp_path):
    from medlens.errors import MedlensError
    from medlens.serve import create_account, list_accounts, reset_password, set_user_active
    from medlens.serve.accounts import authenticate
    from medlens.serve.db import make_engine, session_factory

    ws = tmp_path / "ws"
    create_account("root_admin", PASSWORD, workspace=ws)
    create_account("nurse", PASSWORD, role="clinician", workspace=ws)
    reset_password("nurse", NEW_PASSWORD, workspace=ws)
    with pytest.raises(MedlensError, match="too short"):
        reset_password("nurse", "short", workspace=ws)
    with pytest.raises(MedlensError, match="no account named 'ghost'"):
        reset_password("ghost", NEW_PASSWORD, workspace=ws)
    set_user_active("nurse", False, workspace=ws)
    with pytest.raises(MedlensError, match="last active administrator"):
        set_user_active("root_admin", False, workspace=ws)
    rows = {a["username"]: a for a in list_accounts(workspace=ws)}
    assert rows["nurse"]["active"] is False and rows["root_admin"]["role"] == "admin"
    engine = make_engine(f"sqlite:///{(ws / 'medlens.db').resolve()}")
    with session_factory(engine)() as db:
        assert authenticate(db, "nurse", NEW_PASSWORD) is None  # disabled
    set_user_active("nurse", True, workspace=ws)
    with session_factory(engine)() as db:
        assert authenticate(db, "nurse", NEW_PASSWORD) is not None
        assert authenticate(db, "nurse", PASSWORD) is None
    engine.dispose()


def test_user_changes_their_own_password(env):
    app = env["app"]
    grace = signup(app, "grace")
    other_session, _ = _login(app, "grace", PASSWORD)
    assert "Change password" in grace.get("/account").text

    def change(current: str, new: str, repeat: str | None = None):  # type: ignore[no-untyped-def]
        return grace.post(
            "/account/password",
            data={
                "csrf_token": token_of(grace),
                "current": current,
                "password": new,
                "password2": new if repeat is None else repeat,
            },
        )

    r = change("wrong password here", NEW_PASSWORD)
    assert r.status_code == 400 and "current password is wrong" in r.text
    r = change(PASSWORD, NEW_PASSWORD, "something else entirely")
    assert r.status_code == 400 and "differ" in r.text
    r = change(PASSWORD, NEW_PASSWORD)
    assert r.status_code == 303
    assert "Password changed" in grace.get(r.headers["location"]).text  # this session stays
    assert other_session.get("/history").status_code == 303  # the other one ended
    assert _login(app, "grace", PASSWORD)[1] == 401
    assert _login(app, "grace", NEW_PASSWORD)[1] == 303


# -- item 19 ----------------------------------------------------------------------------------


def test_api_docs_page_is_served_from_a_package_under_the_csp(env):
    pytest.importorskip("swagger_ui_bundle", reason="needs swagger-ui-bundle")
    from medlens.serve.security import CSP

    c = new_client(env["app"])
    page = c.get("/api/v1/docs")
    assert page.status_code == 200 and page.headers["content-security-policy"] == CSP
    html = page.text
    srcs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert srcs and all(s.startswith("/") for s in srcs)  # nothing from another host
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html) and "style=" not in html
    for s in srcs:
        asset = c.get(s)
        assert asset.status_code == 200 and len(asset.content) > 100, s
    assert "SwaggerUIBundle" in c.get("/api/v1/docs/swagger-ui-bundle.js").text
    assert c.get("/api/v1/docs/index.html").status_code == 404  # only the listed files
    assert c.get("/api/v1/docs/..%2F..%2Fsecurity.py").status_code == 404


# -- item 20 ----------------------------------------------------------------------------------


def test_models_are_warmed_before_the_server_listens(tmp_path, serve_bundles, caplog):
    with caplog.at_level(logging.INFO, logger="medlens.serve"):
        app = make_app(tmp_path / "ws", [serve_bundles["a"]])
    (model,) = list(app.state.medlens.models)
    assert model.warm_seconds is not None and model.warm_seconds >= 0
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("model ") and "ready" in m and model.sha256[:8] in m for m in messages)
    assert any(m.startswith("medlens ready: 1 model(s)") for m in messages)
    app.state.medlens.jobs.stop()
    cold = make_app(tmp_path / "ws2", [serve_bundles["a"]], warm_models=False)
    assert next(iter(cold.state.medlens.models)).warm_seconds is None
    cold.state.medlens.jobs.stop()
