"""The interactive API page at ``/api/v1/docs``: Swagger UI served from the files of an
installed package (``swagger-ui-bundle``), never a CDN, under the same Content-Security-Policy as
every page - no inline script or style: the page loads the bundle's script and stylesheet, and
``/static/swagger-init.js`` starts it on ``/api/v1/openapi.json``.

FastAPI's own docs page is switched off because it loads its scripts from a CDN and starts them
with an inline script, both of which the CSP forbids.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response

DOCS_PATH = "/api/v1/docs"
OPENAPI_PATH = "/api/v1/openapi.json"
# The only bundle files served, with their media types: nothing else under the package's folder.
ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>medlens REST API</title>
<link rel="icon" href="{DOCS_PATH}/favicon-32x32.png" type="image/png">
<link rel="stylesheet" href="{DOCS_PATH}/swagger-ui.css">
<script src="{DOCS_PATH}/swagger-ui-bundle.js" defer></script>
<script src="/static/swagger-init.js" defer></script>
</head>
<body>
<main id="swagger-ui" data-openapi="{OPENAPI_PATH}"></main>
</body>
</html>
"""

MISSING = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medlens REST API</title></head>
<body><h1>medlens REST API</h1>
<p>The interactive page needs the <code>swagger-ui-bundle</code> package
(<code>pip install 'medlens[serve]'</code>). The schema itself is at
<a href="{OPENAPI_PATH}">{OPENAPI_PATH}</a>.</p></body></html>
"""

router = APIRouter(include_in_schema=False)


def swagger_folder() -> Path | None:
    """The installed Swagger UI files, or None when the package is missing."""
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    folder = Path(swagger_ui_bundle.swagger_ui_path)
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


@router.get(DOCS_PATH)
def docs_page() -> Response:
    if swagger_folder() is None:
        return HTMLResponse(MISSING, status_code=503)
    return HTMLResponse(PAGE)


@router.get(DOCS_PATH + "/{asset}")
def docs_asset(asset: str) -> Response:
    folder = swagger_folder()
    media = ASSETS.get(asset)
    if folder is None or media is None:
        return Response("not found", status_code=404, media_type="text/plain")
    return FileResponse(folder / asset, media_type=media)
