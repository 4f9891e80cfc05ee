"""The clinician's path in a real browser: sign up, upload, result with heatmap, PDF, history,
log out - headless Chromium (Debian's /usr/bin/chromium) driven by Playwright against a uvicorn
server started in-process on 127.0.0.1 and stopped at the end."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.test_serve_support import PASSWORD, make_app, trained_bundles

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
def server(tmp_path_factory):
    uvicorn = pytest.importorskip("uvicorn")
    b = trained_bundles(tmp_path_factory)
    app = make_app(tmp_path_factory.mktemp("ws_browser"), [b["a"]])
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
        yield {"url": f"http://127.0.0.1:{port}", "image": sorted(b["images"].glob("*.png"))[0]}
    finally:
        srv.should_exit = True
        thread.join(15)


def test_signup_upload_result_pdf_history_logout(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    url = server["url"]
    problems: list[str] = []
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            accept_downloads=True,
            viewport={"width": 1280, "height": 900},
        )
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
