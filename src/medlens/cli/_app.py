"""The Typer application, the consoles and the entry point every command shares.

Usage errors (unknown option, missing argument, a value of the wrong type) are click's short
message and usage with exit status 2; a problem with the user's input raised by medlens
(:class:`~medlens.errors.MedlensError`) is one ``error:`` line with exit status 2; neither prints a
traceback. An interrupted run says how to resume and exits 130.

Only Typer and Rich are imported here, and every command imports what it needs when it runs, so
``medlens --help`` does not load torch, MLflow or FastAPI.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from medlens import __version__
from medlens.errors import MedlensError

app = typer.Typer(
    name="medlens",
    help="From a folder of labelled scans to a calibrated, explainable, verified screening model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

INTERRUPTED = "interrupted — run the same command again to resume from the last checkpoint"


def _show_version(value: bool) -> None:
    if value:
        console.print(f"medlens {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """From a folder of labelled scans to a calibrated, explainable, verified screening model."""


def setup_env() -> None:
    """Offline by default (hub downloads fail fast instead of hanging); no telemetry; quiet logs.

    medlens's own progress messages (``medlens.*`` loggers at INFO) reach the terminal as short
    lines; the libraries' INFO chatter (MLflow's database set-up, Alembic's migrations) does not.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for noisy in ("mlflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    ours = logging.getLogger("medlens")
    if not ours.handlers:
        from rich.logging import RichHandler

        handler = RichHandler(
            console=err_console,
            show_path=False,
            show_level=False,
            markup=False,
            log_time_format="[%X]",
        )
        handler.setLevel(logging.INFO)
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)  # still propagates: an embedding program's handlers see it


def progress_enabled(flag: bool | None) -> bool:
    """Progress bars by default only on a terminal (a log file gets no carriage-return spam)."""
    return sys.stderr.isatty() if flag is None else flag


def _click_exception_types() -> tuple[type[BaseException], type[BaseException]]:
    """click's ``ClickException`` and ``Abort`` as the running Typer uses them.

    Typer ships its own copy of click (``typer._click``) while older versions use ``click``
    itself; the classes are found from Typer's public ``BadParameter`` so either works.
    """
    mro = typer.BadParameter.__mro__
    click_exc = next(c for c in mro if c.__name__ == "ClickException")
    module = sys.modules[click_exc.__module__]
    return click_exc, getattr(module, "Abort", typer.Abort)


def main(argv: list[str] | None = None) -> None:
    """The console script ``medlens`` (also ``python -m medlens``)."""
    setup_env()
    click_exc, click_abort = _click_exception_types()
    try:
        code: Any = app(args=argv, prog_name="medlens", standalone_mode=False)
    except MedlensError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print(INTERRUPTED)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except click_exc as exc:  # usage errors: short message + usage, status 2
        exc.show()  # type: ignore[attr-defined]
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    except (click_abort, typer.Abort):
        err_console.print("aborted")
        sys.exit(1)
    # Without standalone mode Typer returns an Exit's code instead of raising it (Ctrl-C: 130).
    if isinstance(code, int) and code != 0:
        if code == 130:
            err_console.print(INTERRUPTED)
        sys.exit(code)
