"""App factory and entry points: ``create_app(settings)``, ``run(bundles, ...)`` and
``create_account(...)`` for headless set-up.

Start-up is all-or-nothing: the workspace is created (owner-only), the database migrated with the
package's Alembic scripts, every bundle verified, loaded and warmed with one prediction (the
log says when each model is ready); any failure stops the server before it listens. Nothing else
has to run: SQLite is the default database and a batch worker runs as a thread of each web
process (``batch_worker``). Nothing lives only in this process - sessions, throttling and the
batch queue are in the database - so ``run(..., workers=N)`` starts N uvicorn processes, and
``medlens worker`` adds batch workers on other machines.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from medlens.serve import (
    accounts,
    api,
    docs,
    security,
    web,
    web_accounts,
    web_batch,
    web_dicom,
)
from medlens.serve.admin import create_account
from medlens.serve.db import User, make_engine, migrate
from medlens.serve.deps import SESSION_COOKIE, CsrfFailed, LoginRequired
from medlens.serve.jobs import Worker, sweep_orphans
from medlens.serve.problems import error_body
from medlens.serve.settings import MB, ServeSettings
from medlens.serve.state import NotFound, Refused, open_state
from medlens.serve.storage import Workspace
from medlens.serve.templating import login_redirect, render

__all__ = ["create_account", "create_app", "run"]

log = logging.getLogger("medlens.serve")
HERE = Path(__file__).parent
# Every route of the service: pages (CSRF-checked, not in the schema), the REST API, its docs.
ROUTERS = (
    web_accounts.router,
    web.router,
    web_batch.router,
    web_dicom.router,
    api.router,
    docs.router,
)


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _visitor(request: Request) -> User | None:
    """The signed-in user, so an error page keeps the navigation (None if not signed in)."""
    with contextlib.suppress(Exception), request.app.state.medlens.db() as db:
        return accounts.session_user(db, request.cookies.get(SESSION_COOKIE))
    return None


def _error(
    request: Request,
    status: int,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    if _is_api(request):
        return JSONResponse(error_body(status, message, field), status_code=status, headers=headers)
    try:
        return render(
            request,
            "error.html",
            {"status": status, "message": message},
            user=_visitor(request),
            status=status,
            headers=headers,
        )
    except Exception:  # never fail while reporting a failure
        return PlainTextResponse(message, status_code=status)


def create_app(settings: ServeSettings) -> FastAPI:
    """Build the ASGI app: migrate the database, load the bundles, wire routes and hardening."""
    from PIL import Image

    state = open_state(settings)
    # Pillow refuses (DecompressionBombError) anything over twice this, warns above it.
    Image.MAX_IMAGE_PIXELS = settings.max_pixels
    sweep_orphans(state)
    if settings.batch_worker:
        state.jobs = Worker(state)
        state.jobs.start()
    if settings.warm_explanations:
        # The CAM library takes seconds to import; pay that now, not on the first result page.
        threading.Thread(target=_warm_explanations, name="medlens-warm", daemon=True).start()
    models = state.models
    log.info(
        "medlens ready: %d model(s) loaded and warmed (%s)",
        len(models),
        "; ".join(m.menu_label for m in models),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if state.jobs is not None:
            state.jobs.stop()
        if state.engine is not None:
            state.engine.dispose()

    from medlens import __version__

    app = FastAPI(
        title="medlens",
        version=str(__version__),
        description="Decision support for image review. Every result names the model that "
        "produced it and how sure it is; a clinician decides.",
        docs_url=None,  # FastAPI's page loads a CDN and an inline script: see serve/docs.py
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
        lifespan=lifespan,
    )
    app.state.medlens = state
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    batch_limit = settings.max_batch_bytes + MB
    upload_limit = settings.max_upload_bytes + MB

    def limit_for(path: str) -> int:
        if path in ("/batch", "/api/v1/batch"):
            return batch_limit
        if path in ("/upload", "/api/v1/predict"):
            return upload_limit
        return MB

    app.add_middleware(security.BodyLimitMiddleware, limit_for=limit_for)
    app.add_middleware(security.SecurityHeadersMiddleware)

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired) -> Response:
        if _is_api(request):
            return _error(request, 401, "authentication required")
        return login_redirect(exc.next_path)

    @app.exception_handler(CsrfFailed)
    async def _csrf(request: Request, exc: CsrfFailed) -> Response:
        return _error(
            request,
            403,
            "The form was refused: its security token is missing or expired (CSRF check). "
            "Reload the page and submit it again.",
        )

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> Response:
        return _error(request, 404, "Not found.")

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> Response:
        return _error(request, exc.status, exc.message, exc.field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return _error(request, exc.status_code, message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        fields = [".".join(str(p) for p in e.get("loc", ())) or "request" for e in errors]
        problems = "; ".join(f"{f}: {e.get('msg')}" for f, e in zip(fields, errors, strict=True))
        return _error(request, 422, f"Invalid request: {problems}", fields[0] if fields else None)

    return app


def _warm_explanations() -> None:
    from medlens.inference import load_explanations

    try:
        load_explanations()
    except Exception as exc:
        log.warning("heatmaps unavailable: the explanation library did not load (%s)", exc)
    else:
        log.info("heatmaps ready")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


SETTINGS_ENV = "MEDLENS_SERVE_SETTINGS"


def app_from_env() -> FastAPI:
    """The app factory each uvicorn worker process calls (``run(..., workers=N)``): settings
    arrive as JSON in ``$MEDLENS_SERVE_SETTINGS``, since a process cannot inherit objects."""
    logging.basicConfig(level=logging.INFO)
    return create_app(ServeSettings.model_validate_json(os.environ[SETTINGS_ENV]))


def run(
    bundles: Sequence[Path],
    host: str = "127.0.0.1",
    port: int = 8000,
    database_url: str | None = None,
    workspace: Path = Path("medlens-workspace"),
    *,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
    log_level: str = "info",
    workers: int = 1,
    **opts: Any,
) -> None:
    """Serve ``bundles`` with uvicorn, in ``workers`` processes.

    ``opts`` are :class:`ServeSettings` fields (``max_upload_mb``, ``signup_open``, ``llm_url``...).
    Binding anything but loopback without TLS is allowed (a TLS proxy may sit in front) but warned
    about, since session cookies would otherwise cross the network in clear text. With several
    workers the database is migrated once here, before they start; each worker process then
    loads the models itself.
    """
    import uvicorn

    settings = ServeSettings(
        bundles=[Path(b) for b in bundles],
        workspace=Path(workspace),
        database_url=database_url,
        **opts,
    )
    if not _loopback(host) and not ssl_certfile:
        log.warning(
            "serving on %s without TLS: put an HTTPS reverse proxy in front and start with "
            "cookie_secure=True",
            host,
        )
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "ssl_certfile": ssl_certfile,
        "ssl_keyfile": ssl_keyfile,
        "log_level": log_level,
        "proxy_headers": False,  # X-Forwarded-For would let a client dodge the login throttle
        "server_header": False,
    }
    if workers <= 1:
        uvicorn.run(create_app(settings), workers=1, **common)
        return
    Workspace(settings.workspace)  # the folder (and its SQLite file) exist before the workers
    engine = make_engine(settings.resolved_database_url())
    migrate(engine)
    engine.dispose()
    os.environ[SETTINGS_ENV] = json.dumps(settings.model_dump(mode="json"))
    uvicorn.run("medlens.serve.app:app_from_env", factory=True, workers=workers, **common)
