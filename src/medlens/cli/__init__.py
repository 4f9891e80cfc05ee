"""The ``medlens`` command, one module per command group.

- :mod:`._app`: the Typer app, consoles, ``--version`` and :func:`main` (error handling: usage
  errors and :class:`~medlens.errors.MedlensError` are a short message and exit status 2, never a
  traceback; an interrupted training run is resumed by running the same command again);
- :mod:`.cmd_data`: ``phantoms``, ``audit``, ``split``, ``slices``;
- :mod:`.cmd_train`: ``train``, ``compare``, ``demo``, ``report``, ``leaderboard``, ``promote``;
- :mod:`.cmd_predict`: ``predict``, ``explain``, ``evaluate``;
- :mod:`.cmd_export`: ``export`` (ONNX graphs, checked, into the bundle);
- :mod:`.cmd_serve`: ``serve``, ``serve-admin``, ``models``;
- :mod:`.summaries`: what a finished run or evaluation prints.

Importing the command modules registers their commands; each imports its heavy dependencies
when it runs, so ``medlens --help`` stays fast.
"""

from __future__ import annotations

from medlens.cli._app import app, main

# The order of these imports is the order in which `medlens --help` lists the commands.
# isort: off
from medlens.cli import cmd_data  # noqa: F401
from medlens.cli import cmd_train  # noqa: F401
from medlens.cli import cmd_predict  # noqa: F401
from medlens.cli import cmd_export  # noqa: F401
from medlens.cli import cmd_serve  # noqa: F401
# isort: on

__all__ = ["app", "main"]
