"""The workspace folder: stored images, derived display images, temporary decode files.

Every path is built from random ids the server generated (hex), never from user input, and
resolved paths are checked to stay inside the workspace as a second line of defence. Files are
written owner-only (0600) and atomically (temporary file, then rename), so a crash never leaves
half an image under a real id.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from medlens.serve.formats import STORED_SUFFIXES

_SUFFIXES = "|".join(re.escape(s.lstrip(".")) for s in STORED_SUFFIXES)
_KEY_RE = re.compile(rf"^[0-9a-f]{{2}}/[0-9a-f]{{32}}\.({_SUFFIXES})$")
_ID_RE = re.compile(r"^[0-9a-f]{32}$")


class Workspace:
    """Layout: ``images/ab/<id><stored suffix>`` (``.png`` or ``.dcm``, from the upload-format
    table), ``derived/<id>/*.png``, ``tmp/``, ``medlens.db``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.images = self.root / "images"
        self.derived = self.root / "derived"
        self.tmp = self.root / "tmp"
        for d in (self.root, self.images, self.derived, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                os.chmod(d, 0o700)
        for stale in self.tmp.iterdir():  # decode files left by a crash
            with contextlib.suppress(OSError):
                stale.unlink() if stale.is_file() else shutil.rmtree(stale)

    def _inside(self, p: Path) -> Path:
        rp = p.resolve()
        if self.root not in rp.parents:
            raise ValueError("path outside the workspace")
        return rp

    def _write(self, target: Path, data: bytes) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def store_image(self, image_id: str, data: bytes, suffix: str) -> str:
        if not _ID_RE.match(image_id) or suffix not in STORED_SUFFIXES:
            raise ValueError("bad image id or suffix")
        key = f"{image_id[:2]}/{image_id}{suffix}"
        self._write(self._inside(self.images / key), data)
        return key

    def image_path(self, key: str) -> Path:
        if not _KEY_RE.match(key):
            raise ValueError("bad storage key")
        return self._inside(self.images / key)

    def derived_path(self, owner_id: str, name: str) -> Path:
        if not _ID_RE.match(owner_id) or not re.match(r"^[a-z0-9+_.-]{1,60}\.png$", name):
            raise ValueError("bad derived name")
        return self._inside(self.derived / owner_id / name)

    def write_derived(self, owner_id: str, name: str, data: bytes) -> Path:
        p = self.derived_path(owner_id, name)
        self._write(p, data)
        return p

    def delete_image(self, key: str, image_id: str) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.image_path(key).unlink(missing_ok=True)
        self.delete_derived(image_id)

    def delete_derived(self, owner_id: str) -> None:
        if _ID_RE.match(owner_id):
            shutil.rmtree(self.derived / owner_id, ignore_errors=True)


def png_bytes(img: np.ndarray, max_side: int | None = 768) -> bytes:
    """A float [0, 1] (or uint8) H x W [x 3] array as PNG, shrunk to ``max_side`` for display."""
    from PIL import Image

    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = np.rint(np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    im = Image.fromarray(a)
    if max_side and max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
