"""Errors meant for people.

Every error medlens raises on bad input is a :class:`MedlensError`: one message that names the
file or field at fault and says what would fix it. The CLI prints it without a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class MedlensError(Exception):
    """Base class: a problem the user can fix, described in one message."""


class ImageReadError(MedlensError):
    """An image or mask file could not be read; the message names the path and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


class RecipeError(MedlensError):
    """A recipe file is invalid; the message names the file and the key."""


class DataError(MedlensError):
    """A data set, manifest or split is unusable as given."""


class BundleError(MedlensError):
    """A model bundle is missing, changed, truncated or incompatible."""


def require(module: str, extra: str) -> Any:
    """Import an optional dependency, or raise one message saying which extra installs it.

    Optional parts (MONAI networks, the classical baselines, the server) are imported where they
    are used, so the core imports without them; this turns a missing one into an instruction.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MedlensError(
            f"{module.split('.')[0]!r} is not installed; install it with: "
            f'pip install "medlens[{extra}]"'
        ) from None
