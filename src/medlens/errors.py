"""Errors meant for people.

Every error medlens raises on bad input is a :class:`MedlensError`: one message that names the
file or field at fault and says what would fix it. The CLI prints it without a traceback.
"""

from __future__ import annotations

from pathlib import Path


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
