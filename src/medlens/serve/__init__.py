"""``medlens serve``: the clinician web service and its REST API.

Run it::

    from medlens.serve import run
    run([Path("runs/chest_xray/bundle")], host="127.0.0.1", port=8000)   # http://127.0.0.1:8000

State lives in the workspace folder (default ``./medlens-workspace``: SQLite database, stored
images, derived PNGs); ``DATABASE_URL`` (or ``database_url=``) selects PostgreSQL instead
(install a driver such as ``psycopg[binary]``). The schema is migrated at start-up by the
package's Alembic scripts. The first account created through the sign-up page becomes the
administrator (who can then close sign-up); :func:`create_account` creates accounts without the
web form, for servers that must not let the first visitor become admin (start those with
``signup_open=False``).

Pages: ``/login`` ``/signup`` ``/logout`` ``/account`` ``/upload`` ``/results/{id}`` (+
``original.png``, ``thumb.png``, ``preprocessed.png``, ``heatmap.png?method=``, ``report.pdf``,
``compare``, ``model``, ``delete``, ``rewrite``) ``/history`` ``/batch`` ``/batch/{id}`` (+
``status``, ``worklist.csv``, ``delete``) ``/tokens`` ``/admin`` (+ ``users/{id}/password``,
``users/{id}/active``). REST API (Bearer token): ``/api/v1/health`` ``/models`` ``/predict``
``/batch`` ``/batch/{id}`` ``/results`` ``/results/{id}`` (+ ``explain``, ``report.pdf``); schema
at ``/api/v1/openapi.json``, interactive page at ``/api/v1/docs``. Accounts can also be managed
without the UI: :func:`create_account`, :func:`reset_password`, :func:`set_user_active`,
:func:`list_accounts` (``medlens serve-admin``).

Optional dependencies (``pip install medlens[serve]``): FastAPI, uvicorn, SQLAlchemy, Alembic,
Jinja2, python-multipart, argon2-cffi, reportlab, swagger-ui-bundle (the API page). They are
imported only when a name below is first used, so ``import medlens.serve`` is cheap and nothing
else in medlens imports this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ServeSettings": "settings",
    "create_app": "app",
    "create_account": "admin",
    "list_accounts": "admin",
    "reset_password": "admin",
    "set_user_active": "admin",
    "run": "app",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'medlens.serve' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"medlens.serve.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
