"""``medlens serve``: the clinician web service and its REST API.

Run it::

    from medlens.serve import run
    run([Path("runs/chest_xray/bundle")], host="127.0.0.1", port=8000)   # http://127.0.0.1:8000

State lives in the workspace folder (default ``./medlens-workspace``: SQLite database, stored
images, derived PNGs, staged batch files) and the database; ``DATABASE_URL`` (or
``database_url=``) selects PostgreSQL instead (``postgresql://user:pw@host/db``: psycopg 3, which
the ``serve`` extra installs). The schema is migrated at start-up by the package's Alembic
scripts. Nothing lives only in one process - sessions, login throttling and the batch queue are
database rows - so ``run(..., workers=N)`` (``medlens serve --workers N``) runs N web processes
and :func:`run_worker` (``medlens worker``) adds batch workers; a killed worker's files are taken
over after their lease. The first account of a new server may sign up and becomes the
administrator; after that sign-up is closed unless an administrator opens it, and accounts are
made on the Administration page or with :func:`create_account` (``medlens serve-admin``).

Pages: ``/login`` ``/signup`` ``/logout`` ``/account`` ``/upload`` ``/results/{id}`` (+
``original.png``, ``thumb.png``, ``preprocessed.png``, ``heatmap.png?method=``, ``report.pdf``,
``compare``, ``model``, ``delete``, ``rewrite``, ``dicom-sr.dcm``, ``dicom-pdf.dcm``) ``/history`` ``/batch`` ``/batch/{id}`` (+
``status``, ``worklist.csv``, ``delete``) ``/tokens`` ``/admin`` (+ ``users/{id}/password``,
``users/{id}/active``). REST API (Bearer token): ``/api/v1/health`` ``/models`` ``/predict``
``/batch`` ``/batch/{id}`` ``/results`` ``/results/{id}`` (+ ``explain``, ``report.pdf``,
``dicom-sr.dcm``, ``dicom-pdf.dcm``); errors are ``{"error": {code, message, field}}``; schema
at ``/api/v1/openapi.json``, interactive page at ``/api/v1/docs``. Accounts can also be managed
without the UI: :func:`create_account`, :func:`reset_password`, :func:`set_user_active`,
:func:`list_accounts` (``medlens serve-admin``).

Optional dependencies (``pip install medlens[serve]``): FastAPI, uvicorn, SQLAlchemy, Alembic,
psycopg (PostgreSQL), Jinja2, python-multipart, argon2-cffi, zxcvbn (password strength),
reportlab, swagger-ui-bundle (the API page). They are
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
    "run_worker": "worker",
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
