"""App factory and entry points: ``create_app(settings)``, ``run(bundles, ...)`` and
``create_account(...)`` for headless set-up.

Start-up is all-or-nothing: the workspace is created (owner-only), the database migrated with the
package's Alembic scripts, every bundle verified and loaded; any failure stops the server before
it listens. Nothing else has to run: SQLite is the default database and the batch worker is a
thread of this process.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from medlens.serve import api, security, services, web
from medlens.serve.db import make_engine, migrate, session_factory
from medlens.serve.engine import ModelRegistry
from medlens.serve.jobs import BatchRunner
from medlens.serve.settings import MB, ServeSettings
from medlens.serve.storage import Workspace

log = logging.getLogger("medlens.serve")
HERE = Path(__file__).parent


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def _error(request: Request, status: int, message: str) -> Response:
    if _is_api(request):
        return JSONResponse({"detail": message}, status_code=status)
    try:
        return web.render(
            request, "error.html", {"status": status, "message": message}, status=status
        )
    except Exception:  # never fail while reporting a failure
        return PlainTextResponse(message, status_code=status)


def create_app(settings: ServeSettings) -> FastAPI:
    """Build the ASGI app: migrate the database, load the bundles, wire routes and hardening."""
    from PIL import Image

    workspace = Workspace(settings.workspace)
    engine = make_engine(settings.resolved_database_url())
    migrate(engine)
    sessions = session_factory(engine)
    models = ModelRegistry(list(settings.bundles), device=settings.device)
    with sessions() as db:
        secret = services.load_secret(db)
    # Pillow refuses (DecompressionBombError) anything over twice this, warns above it.
    Image.MAX_IMAGE_PIXELS = settings.max_pixels
    state = services.ServeState(
        settings=settings,
        sessions=sessions,
        workspace=workspace,
        models=models,
        secret=secret,
        limiter=security.RateLimiter(settings.login_window_s),
    )
    state.jobs = BatchRunner(state)
    state.jobs.mark_interrupted()
    if settings.warm_explanations:
        # The CAM library takes seconds to import; pay that now, not on the first result page.
        threading.Thread(target=_warm_explanations, name="medlens-warm", daemon=True).start()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        state.jobs.stop()
        engine.dispose()

    from medlens import __version__

    app = FastAPI(
        title="medlens",
        version=str(__version__),
        description="Decision support for image review. Every result names the model that "
        "produced it and how sure it is; a clinician decides.",
        docs_url=None,  # Swagger UI loads scripts from a CDN, which the CSP forbids
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
        lifespan=lifespan,
    )
    app.state.medlens = state
    app.include_router(web.router)
    app.include_router(api.router)
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

    @app.exception_handler(web.LoginRequired)
    async def _login(request: Request, exc: web.LoginRequired) -> Response:
        if _is_api(request):
            return JSONResponse({"detail": "authentication required"}, status_code=401)
        return web.login_redirect(exc.next_path)

    @app.exception_handler(web.CsrfFailed)
    async def _csrf(request: Request, exc: web.CsrfFailed) -> Response:
        return _error(
            request,
            403,
            "The form was refused: its security token is missing or expired (CSRF check). "
            "Reload the page and submit it again.",
        )

    @app.exception_handler(services.NotFound)
    async def _not_found(request: Request, exc: services.NotFound) -> Response:
        return _error(request, 404, "Not found.")

    @app.exception_handler(services.Refused)
    async def _refused(request: Request, exc: services.Refused) -> Response:
        return _error(request, exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if _is_api(request):
            return JSONResponse(
                {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
            )
        return _error(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
            for e in exc.errors()
        )
        return _error(request, 422, f"Invalid request: {problems}")

    return app


def _warm_explanations() -> None:
    with contextlib.suppress(Exception):
        import medlens.explain.cam  # noqa: F401  (imports pytorch-grad-cam)


def create_account(
    username: str,
    password: str,
    *,
    role: str = "admin",
    workspace: Path = Path("medlens-workspace"),
    database_url: str | None = None,
    min_password_length: int = 10,
) -> None:
    """Create an account without the web form (e.g. ``medlens serve-admin``), for servers whose
    sign-up is closed or that must not let the first visitor become admin."""
    settings_url = ServeSettings.model_construct(
        bundles=[], workspace=Path(workspace), database_url=database_url
    ).resolved_database_url()
    Workspace(Path(workspace))
    engine = make_engine(settings_url)
    try:
        migrate(engine)
        with session_factory(engine)() as db:
            services.create_user(
                db, username, password, role=role, min_password_length=min_password_length
            )
    except services.Refused as exc:
        from medlens.errors import MedlensError

        raise MedlensError(exc.message) from None
    finally:
        engine.dispose()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    **opts: Any,
) -> None:
    """Serve ``bundles`` with uvicorn (one process: the batch worker and rate limits live in it).

    ``opts`` are :class:`ServeSettings` fields (``max_upload_mb``, ``signup_open``, ``llm_url``...).
    Binding anything but loopback without TLS is allowed (a TLS proxy may sit in front) but warned
    about, since session cookies would otherwise cross the network in clear text.
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
    app = create_app(settings)
    uvicorn.run(
        app,
        host=host,
        port=port,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        log_level=log_level,
        proxy_headers=False,  # X-Forwarded-For would let a client dodge the login rate limit
        server_header=False,
        workers=1,
    )
