"""The workspace folder: stored images, derived display images, staged batch files, temporary
decode files.

Every path is built from random ids the server generated (hex), never from user input, and
resolved paths are checked to stay inside the workspace as a second line of defence. Files are
written owner-only (0600) and atomically (temporary file, then rename), so a crash never leaves
half an image under a real id.

Several processes share one workspace (web processes and batch workers), so nothing here deletes
a file just because this process does not know it: :meth:`Workspace.sweep` removes only files
that no database row refers to *and* that are older than a grace period (a file younger than
that may belong to another process's request whose row is not committed yet).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medlens.serve.formats import STORED_SUFFIXES

_SUFFIXES = "|".join(re.escape(s.lstrip(".")) for s in STORED_SUFFIXES)
_KEY_RE = re.compile(rf"^[0-9a-f]{{2}}/[0-9a-f]{{32}}\.({_SUFFIXES})$")
_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_STAGED_RE = re.compile(r"^[0-9a-f]{32}/[0-9]{1,6}\.bin$")
TMP_GRACE_S = 3600.0  # a decode file older than this was left by a crash


class Workspace:
    """Layout: ``images/ab/<id><stored suffix>`` (``.png`` or ``.dcm``, from the upload-format
    table), ``derived/<id>/*.png``, ``staging/<job id>/<position>.bin`` (a batch's files,
    de-identified, until a worker has processed them), ``tmp/``, ``medlens.db``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.images = self.root / "images"
        self.derived = self.root / "derived"
        self.staging = self.root / "staging"
        self.tmp = self.root / "tmp"
        for d in (self.root, self.images, self.derived, self.staging, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                os.chmod(d, 0o700)
        cutoff = time.time() - TMP_GRACE_S  # another process may be decoding a younger one
        for stale in self.tmp.iterdir():
            with contextlib.suppress(OSError):
                if stale.stat().st_mtime < cutoff:
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

    # -- staged batch files ---------------------------------------------------------------------

    def stage(self, job_id: str, position: int, data: bytes) -> str:
        """Keep one batch file (already de-identified) until a worker takes it; its key."""
        key = f"{job_id}/{int(position)}.bin"
        if not _STAGED_RE.match(key):
            raise ValueError("bad job id or position")
        self._write(self._inside(self.staging / key), data)
        return key

    def staged_path(self, key: str) -> Path:
        if not _STAGED_RE.match(key or ""):
            raise ValueError("bad staged key")
        return self._inside(self.staging / key)

    def unstage(self, key: str | None) -> None:
        if not key:
            return
        with contextlib.suppress(ValueError, OSError):
            p = self.staged_path(key)
            p.unlink(missing_ok=True)
            p.parent.rmdir()  # fails (ignored) while the job has other files waiting

    # -- orphans ----------------------------------------------------------------------------------

    def sweep(
        self,
        known_images: Callable[[list[str]], set[str]],
        known_owners: Callable[[list[str]], set[str]],
        known_staged: Callable[[list[str]], set[str]],
        grace_s: float,
    ) -> dict[str, int]:
        """Delete files no row refers to, if older than ``grace_s``; counts per kind.

        Each ``known_*`` callable gets a chunk of candidate names (storage keys, owner ids,
        staged keys) and returns those the database still refers to.
        """
        cutoff = time.time() - grace_s

        def old(p: Path) -> bool:
            try:
                return p.stat().st_mtime <= cutoff
            except OSError:
                return False

        removed = {"images": 0, "derived": 0, "staged": 0}
        images = {
            f"{p.parent.name}/{p.name}": p
            for p in self.images.glob("*/*")
            if p.is_file() and _KEY_RE.match(f"{p.parent.name}/{p.name}") and old(p)
        }
        partials = [p for p in self.root.glob("*/**/.part-*") if p.is_file() and old(p)]
        owners = {p.name: p for p in self.derived.iterdir() if _ID_RE.match(p.name) and old(p)}
        staged = {
            f"{p.parent.name}/{p.name}": p
            for p in self.staging.glob("*/*")
            if p.is_file() and old(p)
        }
        for kind, found, known in (
            ("images", images, known_images),
            ("derived", owners, known_owners),
            ("staged", staged, known_staged),
        ):
            names = sorted(found)
            for i in range(0, len(names), 500):
                chunk = names[i : i + 500]
                keep = known(chunk)
                for name in chunk:
                    if name in keep:
                        continue
                    p = found[name]
                    with contextlib.suppress(OSError):
                        shutil.rmtree(p) if p.is_dir() else p.unlink()
                        removed[kind] += 1
        for p in partials:  # half-written files of a crash mid-write
            with contextlib.suppress(OSError):
                p.unlink()
        for d in self.staging.iterdir():
            with contextlib.suppress(OSError):
                d.rmdir()  # empty job folders only
        return removed


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
