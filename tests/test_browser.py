"""The clinician's path in a real browser: sign up, upload, result with heatmap, PDF, history,
log out; then what issue 14 asked of the pages (percentages, the demonstration-model notice,
bundles told apart, accession and the PDF's contents, worklist thumbnails, the 404 page's
navigation, password change, account administration, the API docs page under the CSP) -
headless Chromium (Debian's /usr/bin/chromium) driven by Playwright against a uvicorn server
started in-process on 127.0.0.1 and stopped at the end."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.test_serve_support import PASSWORD, make_app

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path("/tmp/medlens_result.png")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory, serve_bundles):
    uvicorn = pytest.importorskip("uvicorn")
    from medlens.serve import create_account

    b = serve_bundles
    ws = tmp_path_factory.mktemp("ws_browser")
    create_account("chief", PASSWORD, workspace=ws)  # the administrator, made without the UI
    app = make_app(ws, [b["a"]])
    port = _free_port()
    srv = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "server did not start"
    try:
        images = sorted(b["images"].glob("*.png"))
        yield {"url": f"http://127.0.0.1:{port}", "image": images[0], "images": images, "app": app}
    finally:
        srv.should_exit = True
        thread.join(15)


def test_signup_upload_result_pdf_history_logout(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    url = server["url"]
    problems: list[str] = []
    with sync_api.sync_playwright() as pw:
        ctx = _launch(pw, tmp_path)
        try:
            page = ctx.new_page()
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.on("pageerror", lambda e: problems.append(str(e)))

            page.goto(f"{url}/signup")
            page.get_by_label("Username").fill("dr_browser")
            page.get_by_label("Password", exact=True).fill(PASSWORD)
            page.get_by_label("Repeat password").fill(PASSWORD)
            page.get_by_role("button", name="Create account").click()
            page.wait_for_url(f"{url}/upload")

            page.get_by_label("Image file (PNG, JPEG or DICOM)").set_input_files(
                str(server["image"])
            )
            page.get_by_role("button", name="Analyse").click()
            page.wait_for_url(f"{url}/results/*", timeout=120_000)

            heading = page.locator("h1.decision-h")
            assert heading.inner_text().strip().split()[0].lower() in (
                "normal",
                "pneumonia",
                "tuberculosis",
            )
            assert "tiny_cxr (small_cnn)" in page.inner_text("main")
            assert "a clinician reviews the image and decides" in page.inner_text("main")
            heat = page.locator("img[src*='heatmap.png']")
            heat.wait_for()
            page.wait_for_function(
                "() => [...document.images].every(i => i.complete && i.naturalWidth > 0)"
            )
            assert heat.evaluate("i => i.naturalWidth") > 0
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            # Another heatmap method through the keyboard-usable form.
            page.get_by_label("Heatmap method").select_option("eigencam")
            page.get_by_role("button", name="Show").click()
            page.wait_for_url("**method=eigencam")
            assert page.locator("img[src*='method=eigencam']").evaluate("i => i.naturalWidth") > 0

            with page.expect_download() as dl:
                page.get_by_role("link", name="Download PDF report").click()
            pdf = Path(dl.value.path()).read_bytes()
            assert pdf.startswith(b"%PDF")

            page.get_by_role("navigation", name="Main").get_by_role("link", name="History").click()
            page.wait_for_url(f"{url}/history")
            assert page.locator("table.list tbody tr").count() == 1
            assert server["image"].name in page.inner_text("table.list")

            page.get_by_role("button", name="Log out").click()
            page.wait_for_url(f"{url}/login")
            page.goto(f"{url}/history")
            assert "/login" in page.url  # the session is gone
        finally:
            ctx.close()
    assert not problems, problems  # no CSP violations or script errors
    assert SCREENSHOT.stat().st_size > 10_000
    shutil.copy(SCREENSHOT, tmp_path / SCREENSHOT.name)


def _launch(pw, tmp_path: Path):  # type: ignore[no-untyped-def]
    return pw.chromium.launch_persistent_context(
        str(tmp_path / "profile"),
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_ARGS,
        accept_downloads=True,
        viewport={"width": 1280, "height": 900},
    )


def _set_probabilities(app, rid: str, probs: dict[str, float], decision: str) -> None:  # type: ignore[no-untyped-def]
    from medlens.serve.db import Result

    with app.state.medlens.db() as db:
        r = db.get(Result, rid)
        r.probabilities, r.decision, r.label = probs, decision, decision
        r.confidence, r.decision_threshold = probs[decision], None
        db.commit()


def test_issue14_pages_in_a_browser(server, tmp_path):
    """Items 2 and 16-19 as a clinician and an administrator meet them."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    from medlens.inference import DEMO_NOTICE
    from tests.test_serve_heads import pdf_text

    url, app = server["url"], server["app"]
    (model,) = list(app.state.medlens.models)
    problems: list[str] = []
    new_password = "another long passphrase 7"

    def collect(msg) -> None:  # type: ignore[no-untyped-def]
        # The 404 page is visited on purpose: its own status line is not a page error.
        if msg.type == "error" and "status of 404" not in msg.text:
            problems.append(msg.text)

    with sync_api.sync_playwright() as pw:
        ctx = _launch(pw, tmp_path)
        try:
            page = ctx.new_page()
            page.on("console", collect)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("dialog", lambda d: d.accept())  # data-confirm questions

            page.goto(f"{url}/signup")
            page.get_by_label("Username").fill("dr_pages")
            page.get_by_label("Password", exact=True).fill(PASSWORD)
            page.get_by_label("Repeat password").fill(PASSWORD)
            page.get_by_role("button", name="Create account").click()
            page.wait_for_url(f"{url}/upload")

            # 16: the demonstration notice on the page; the menu tells bundles apart.
            assert DEMO_NOTICE in page.locator(".demo-banner").inner_text()
            option = page.locator("#model option").first.inner_text()
            assert model.sha256[:8] in option and model.created in option
            assert "synthetic" in option

            # 17: the optional accession number travels with the upload.
            page.get_by_label("Image file (PNG, JPEG or DICOM)").set_input_files(
                str(server["image"])
            )
            page.get_by_label("Accession / study number (optional)").fill("ACC-BROWSER-7")
            page.get_by_role("button", name="Analyse").click()
            page.wait_for_url(f"{url}/results/*", timeout=120_000)
            rid = page.url.rsplit("/", 1)[-1]
            main = page.inner_text("main")
            assert "ACC-BROWSER-7" in main and "Demonstration model" in main

            # 2: a 99.6 % probability is never headlined as 100 %.
            probs = {"normal": 0.996, "pneumonia": 0.003, "tuberculosis": 0.001}
            _set_probabilities(app, rid, probs, "normal")
            page.reload()
            assert page.locator(".decision .sure strong").inner_text() == ">99%"
            assert "99.6%" in page.inner_text("table.bars")
            assert "100%" not in page.inner_text("main")

            # 17: the PDF: notice, accession, test figures with intervals, sign-off.
            with page.expect_download() as dl:
                page.get_by_role("link", name="Download PDF report").click()
            text = pdf_text(Path(dl.value.path()).read_bytes())
            assert DEMO_NOTICE in text and "ACC-BROWSER-7" in text
            assert "Model performance on held-out test data" in text and "[" in text
            assert "Reviewer sign-off" in text and ">99%" in text and "100%" not in text

            # 18: worklist thumbnails.
            page.goto(f"{url}/batch")
            page.locator("#files").set_input_files([str(p) for p in server["images"][1:3]])
            page.get_by_role("button", name="Start batch").click()
            page.wait_for_url(f"{url}/batch/*")
            page.wait_for_selector("text=Done: 2 of 2 processed", timeout=120_000)
            thumbs = page.locator("td.thumb img")
            assert thumbs.count() == 2
            page.wait_for_function(
                "() => [...document.querySelectorAll('td.thumb img')]"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )

            # 18: the 404 page keeps the navigation.
            page.goto(f"{url}/results/{'0' * 32}")
            nav = page.get_by_role("navigation", name="Main")
            assert "Not found" in page.inner_text("h1") and nav.is_visible()
            nav.get_by_role("link", name="History").click()
            page.wait_for_url(f"{url}/history")

            # 18: a user changes their password.
            page.get_by_role("link", name="Account").click()
            page.get_by_label("Current password").fill(PASSWORD)
            page.get_by_label("New password", exact=True).fill(new_password)
            page.get_by_label("Repeat new password").fill(new_password)
            page.get_by_role("button", name="Change password").click()
            page.wait_for_url(f"{url}/account?changed=1")
            assert "Password changed" in page.inner_text("main")
            page.get_by_role("button", name="Log out").click()

            # 18: the administrator resets that password and disables the account.
            page.goto(f"{url}/login")
            page.get_by_label("Username").fill("chief")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url(f"{url}/upload")
            page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin").click()
            page.get_by_label("New password for dr_pages").fill("reset by the admin 123")
            page.get_by_role("button", name="Reset password of dr_pages").click()
            page.wait_for_url(f"{url}/admin?done=password")
            page.get_by_role("button", name="Disable dr_pages").click()
            page.wait_for_url(f"{url}/admin?done=active")
            row = page.locator("tr", has_text="dr_pages")
            assert "disabled" in row.inner_text().lower() and "Enable" in row.inner_text()
            assert DEMO_NOTICE in page.inner_text("body")

            # 19: the API docs page renders from local files with the CSP intact.
            page.goto(f"{url}/api/v1/docs")
            page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
            assert "medlens" in page.inner_text(".swagger-ui .info .title")
            page.get_by_text("/api/v1/predict", exact=True).first.wait_for()
        finally:
            ctx.close()
    assert not problems, problems  # no CSP violations or script errors anywhere


def test_an_image_with_no_information_is_not_assessed_in_the_browser(server, tmp_path):
    """Issue 11: a constant (blank) image gets no decision, no priority and no heatmap - the
    page says plainly that it was not assessed and why."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    import numpy as np
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((96, 96), 128, dtype=np.uint8)).save(blank)
    url = server["url"]
    problems: list[str] = []
    with sync_api.sync_playwright() as pw:
        ctx = _launch(pw, tmp_path)
        try:
            page = ctx.new_page()
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(f"{url}/login")
            page.get_by_label("Username").fill("chief")
            page.get_by_label("Password", exact=True).fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url(f"{url}/upload")
            page.get_by_label("Image file (PNG, JPEG or DICOM)").set_input_files(str(blank))
            page.get_by_role("button", name="Analyse").click()
            page.wait_for_url(f"{url}/results/*", timeout=120_000)
            heading = page.locator("h1.decision-h").inner_text()
            assert heading.startswith("Not assessed") and "ungradable" in heading.lower()
            main = page.inner_text("main")
            assert "constant" in main.lower() or "no information" in main.lower(), main[:600]
            assert page.locator("img[src*='heatmap.png']").count() == 0
            assert page.locator(".badge.danger").count() == 0  # no "priority finding" flag
            assert "no decision, priority or heatmap is shown" in main
            assert "a clinician" in main.lower()
        finally:
            ctx.close()
    assert not problems, problems
