"""Service and registry commands: ``serve``, ``worker``, ``serve-admin`` and ``models``."""

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
    signup_open: Annotated[
        bool,
        typer.Option(
            "--signup-open/--signup-closed",
            help="self-service sign-up (default closed: an administrator creates accounts; "
            "the first account of a new server may always sign up and becomes administrator)",
        ),
    ] = False,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="web processes (uvicorn workers)")
    ] = 1,
    batch_worker: Annotated[
        bool,
        typer.Option(
            "--batch-worker/--no-batch-worker",
            help="process batches inside the web processes too (off when `medlens worker` "
            "processes do it)",
        ),
    ] = True,
) -> None:
    """Start the clinician web service (FastAPI + SQLite/PostgreSQL) on the given bundles."""
    run = _serve_module().run
    run(
        bundle,
        host=host,
        port=port,
        database_url=database_url,
        workspace=workspace,
        max_upload_mb=max_upload_mb,
        signup_open=signup_open,
        workers=workers,
        batch_worker=batch_worker,
    )


def _serve_module():  # type: ignore[no-untyped-def]
    try:
        import medlens.serve as serve
        from medlens.serve import app as _app  # noqa: F401  (fails without the extras)
    except ImportError as exc:
        raise MedlensError(
            f"the web service needs its extras: pip install 'medlens[serve]' ({exc})"
        ) from None
    return serve


@app.command()
def worker(
    bundle: Annotated[list[Path], typer.Option(help="bundle folder (the same as `serve`)")],
    workspace: Annotated[Path, typer.Option(help="the service's workspace")] = Path(
        "medlens-workspace"
    ),
    database_url: Annotated[
        str | None,
        typer.Option(envvar="DATABASE_URL", help="the service's database (default: SQLite)"),
    ] = None,
    until_idle: Annotated[
        bool, typer.Option(help="exit when the queue is empty instead of waiting for more")
    ] = False,
    lease_s: Annotated[
        float, typer.Option(min=1.0, help="seconds before a dead worker's item is taken over")
    ] = 300.0,
    poll_s: Annotated[float, typer.Option(min=0.05, help="seconds between idle polls")] = 1.0,
    orphan_grace_s: Annotated[
        float, typer.Option(min=0.0, help="only sweep unreferenced files older than this")
    ] = 600.0,
) -> None:
    """Process batch jobs from the service's database (run any number, on any machine that
    shares the workspace folder). SIGTERM/Ctrl-C: finish the current file, then stop."""
    _serve_module()
    from medlens.serve.worker import run_worker

    n = run_worker(
        bundle,
        workspace=workspace,
        database_url=database_url,
        until_idle=until_idle,
        lease_s=lease_s,
        worker_poll_s=poll_s,
        orphan_grace_s=orphan_grace_s,
    )
    console.print(f"worker stopped after {n} file(s)")


@app.command("serve-admin")
def serve_admin(
    username: Annotated[
        str | None, typer.Argument(help="account name (not needed with --list)")
    ] = None,
    workspace: Annotated[Path, typer.Option(help="the service's workspace")] = Path(
        "medlens-workspace"
    ),
    database_url: Annotated[str | None, typer.Option(envvar="DATABASE_URL")] = None,
    role: Annotated[str, typer.Option(help="admin or clinician (new accounts)")] = "admin",
    reset_password: Annotated[
        bool, typer.Option("--reset-password", help="set a new password; their sessions end")
    ] = False,
    disable: Annotated[
        bool, typer.Option("--disable", help="disable the account; sessions and tokens stop")
    ] = False,
    enable: Annotated[bool, typer.Option("--enable", help="re-enable a disabled account")] = False,
    list_: Annotated[bool, typer.Option("--list", help="list the accounts")] = False,
) -> None:
    """Administer the web service's accounts without the web UI.

    With a username only: create the account (password asked for, never echoed).
    """
    from medlens.serve import admin

    actions = [reset_password, disable, enable, list_]
    if sum(actions) > 1:
        raise MedlensError("give one of --reset-password, --disable, --enable, --list")
    where = {"workspace": workspace, "database_url": database_url}
    if list_:
        rows = admin.list_accounts(**where)
        for r in rows:
            state = "active" if r["active"] else "disabled"
            console.print(
                f"{r['username']}\t{r['role']}\t{state}\tcreated {r['created']}\t"
                f"last login {r['last_login'] or 'never'}",
                highlight=False,
            )
        if not rows:
            console.print("no accounts yet")
        return
    if not username:
        raise MedlensError("serve-admin: give a USERNAME (or --list)")
    if disable or enable:
        admin.set_user_active(username, enable, **where)
        console.print(f"account {username!r} {'enabled' if enable else 'disabled'}")
        return
    password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    if reset_password:
        admin.reset_password(username, password, **where)
        console.print(f"password of {username!r} reset; their sessions have ended")
        return
    admin.create_account(username, password, role=role, **where)
    console.print(f"account {username!r} ({role}) created")


@app.command()
def models(
    pattern: Annotated[str | None, typer.Argument(help="wildcard, e.g. 'resnet*'")] = None,
) -> None:
    """List model names the registry can build (medlens's own, then timm's)."""
    from medlens.models import list_models

    for name in list_models(pattern):
        console.print(name)
