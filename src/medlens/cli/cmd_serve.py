"""Service and registry commands: ``serve``, ``serve-admin`` and ``models``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medlens.cli._app import app, console
from medlens.errors import MedlensError


@app.command()
def serve(
    bundle: Annotated[list[Path], typer.Option(help="bundle folder (repeat for several models)")],
    host: Annotated[str, typer.Option(help="address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    workspace: Annotated[Path, typer.Option(help="database, uploads and results")] = Path(
        "medlens-workspace"
    ),
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="DATABASE_URL", help="SQLAlchemy URL (default: SQLite in the workspace)"
        ),
    ] = None,
    max_upload_mb: Annotated[int, typer.Option(help="largest upload accepted")] = 20,
    signup_closed: Annotated[bool, typer.Option(help="start with sign-up closed")] = False,
) -> None:
    """Start the clinician web service (FastAPI + SQLite/PostgreSQL) on the given bundles."""
    try:
        from medlens.serve import run
    except ImportError as exc:
        raise MedlensError(
            f"the web service needs its extras: pip install 'medlens[serve]' ({exc})"
        ) from None
    run(
        bundle,
        host=host,
        port=port,
        database_url=database_url,
        workspace=workspace,
        max_upload_mb=max_upload_mb,
        signup_open=not signup_closed,
    )


@app.command("serve-admin")
def serve_admin(
    username: Annotated[str, typer.Argument(help="account name")],
    workspace: Annotated[Path, typer.Option(help="the service's workspace")] = Path(
        "medlens-workspace"
    ),
    database_url: Annotated[str | None, typer.Option(envvar="DATABASE_URL")] = None,
    role: Annotated[str, typer.Option(help="admin or clinician")] = "admin",
) -> None:
    """Create an account for the web service (password asked for, never echoed)."""
    from medlens.serve import create_account

    password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    create_account(username, password, role=role, workspace=workspace, database_url=database_url)
    console.print(f"account {username!r} ({role}) created")


@app.command()
def models(
    pattern: Annotated[str | None, typer.Argument(help="wildcard, e.g. 'resnet*'")] = None,
) -> None:
    """List model names the registry can build (medlens's own, then timm's)."""
    from medlens.models import list_models

    for name in list_models(pattern):
        console.print(name)
