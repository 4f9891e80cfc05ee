"""Per-file records: what the audit keeps of one image (hashes, a thumbnail, a few numbers).

Every file is read once with :func:`~medlens.data.io.read_image` (in a pool of worker processes
for larger sets) and reduced to a :class:`_Record`: the SHA-256 of its bytes, a digest of its
decoded pixels, four 64-bit perceptual hashes, a 64 x 64 grey thumbnail (4 kB, used to verify
near-identical copies) and about twenty numbers. The image itself is never kept, so memory grows
by a few kilobytes per file whatever the image size. Exact digests: identical bytes (SHA-256), or
identical decoded pixels (a BLAKE2 digest of the image quantised at its own bit depth; RGB with
three equal channels counts as grey), which catches a JPEG re-saved losslessly as PNG.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medlens.common import file_sha256
from medlens.data.io import LoadedImage, read_image
from medlens.data.manifest import Manifest, Sample
from medlens.errors import ImageReadError

# Rec. 601 luma, as in medlens.preprocess, so "grey" means the same everywhere.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_JPEG_MAGIC = b"\xff\xd8\xff"
THUMB = 64  # side of the grey thumbnail the perceptual hashes are computed on
_FLAT_STD = 1.0  # thumbnail std (grey levels) below which an image counts as blank
_STATS_SIDE = 128  # intensity statistics use the image subsampled to about this side
_POOL_MIN_FILES = 300  # below this, a worker pool costs more than it saves
_COLOUR_DIFF = 0.02  # mean |R-G|+|G-B| above which an RGB image is colour, not grey-in-RGB
#: How far the hashes of a JPEG's reduced-scale decode (:func:`_jpeg_thumb`) may lie from those
#: of its full decode: median pHash + dHash distance (of 128 bits), the share of images within
#: the near-copy candidate threshold, and the most any one 64-bit hash may differ.
REDUCED_DECODE_TOLERANCE = {"median_bits": 5, "within_threshold_share": 0.97, "max_bits_one": 12}


@dataclass(slots=True)
class _Record:
    """What the audit keeps of one file: hashes and a few numbers, never the pixels."""

    index: int
    ok: bool = False
    reason: str = ""
    size: int | None = None
    sha256: str = ""
    pixels: str = ""
    phash: int = 0
    phash_f: int = 0
    dhash: int = 0
    dhash_f: int = 0
    flat: bool = False
    fmt: str = ""
    mode: str = ""
    bit_depth: int = 0
    width: int = 0
    height: int = 0
    channels: int = 0
    suffix_ok: bool = True
    has_stats: bool = False
    mean: float = 0.0
    std: float = 0.0
    p1: float = 0.0
    p5: float = 0.0
    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    exposure: str = ""  # the absolute (radiograph) rule of medlens.preprocess.exposure_check
    border: float = 0.0
    colour: bool = False  # RGB whose channels differ (microscopy, Doppler), not grey in RGB
    thumb: bytes = b""  # THUMB x THUMB uint8 grey thumbnail, to verify near-identical copies


# (index, path, npz_key, npz_index, with_stats)
_Task = tuple[int, str, str | None, int | None, bool]

_NPZ_CACHE: dict[tuple[str, str], np.ndarray] = {}


def _file_digest(path: Path) -> tuple[str, int, bytes]:
    """SHA-256 (:func:`medlens.common.file_sha256`, chunked), size and first bytes of a file."""
    with path.open("rb") as fh:
        head = fh.read(8)
    return file_sha256(path), path.stat().st_size, head


def _npz_image(path: str, key: str, index: int) -> LoadedImage:
    """One image of an ``.npz`` array; the array is loaded once per worker, not once per image."""
    from medlens.data.io import read_npz_image

    arr = _NPZ_CACHE.get((path, key))
    if arr is None:
        # Validate (and get the documented scaling) through the public reader once ...
        first = read_npz_image(path, key, index)
        with np.load(path, allow_pickle=False) as archive:
            arr = np.asarray(archive[key])
        if arr.ndim == 4 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        _NPZ_CACHE.clear()
        _NPZ_CACHE[(path, key)] = arr
        return first
    if not 0 <= index < len(arr):
        raise ImageReadError(path, f"index {index} out of range for array {key!r}")
    item = arr[index]
    if item.dtype == np.uint8:
        out, bits = item.astype(np.float32) / 255.0, 8
    elif item.dtype == np.uint16:
        out, bits = item.astype(np.float32) / 65535.0, 16
    else:  # rare dtypes: the public reader knows every rule
        return read_npz_image(path, key, index)
    return LoadedImage(out, "npz", "RGB" if item.ndim == 3 else "L", bits, {})


def _hash_bits(h: Any) -> int:
    """An ``imagehash.ImageHash`` as a Python int (row-major bits, first bit most significant)."""
    return int.from_bytes(np.packbits(np.asarray(h.hash, dtype=bool).ravel()).tobytes(), "big")


def _thumb_from_grey(grey: np.ndarray) -> Any:
    from PIL import Image

    u8 = np.clip(grey * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(u8).resize((THUMB, THUMB), Image.Resampling.BOX)


def _jpeg_thumb(path: Path) -> tuple[Any, tuple[int, int]]:
    """Grey 64 px thumbnail of a JPEG decoded at reduced scale (``draft``), and its stored size.

    Decoding at reduced scale is 3-4x faster than a full decode.

    The JPEG decoder scales in the DCT domain (an area average) to the smallest of 1/1..1/8
    that keeps 64 px, and decodes luma only, which is the Rec. 601 grey used elsewhere. The
    thumbnail is not bit-identical to the one made from the fully decoded image (edges differ
    by resampling), so its hashes agree with the full decode's within
    :data:`REDUCED_DECODE_TOLERANCE` (measured on 224-px brain-MRI JPEGs, real and phantom:
    pHash + dHash distance median 3-4 of 128 bits, 99th percentile 7-11, all but ~1 % within
    the near-copy candidate threshold of 12). The audit and ``duplicate_groups`` both hash the
    reduced decode, so they always agree with each other exactly.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            size = img.size
            if img.mode in ("L", "RGB", "YCbCr"):
                img.draft("L", (THUMB, THUMB))
            img.load()
            oriented = ImageOps.exif_transpose(img)
            grey = oriented.convert("L") if oriented.mode != "L" else oriented
            return grey.resize((THUMB, THUMB), Image.Resampling.BOX), size
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError on bad data
        if isinstance(exc, MemoryError):
            raise
        raise ImageReadError(path, f"truncated or corrupt JPEG data: {exc}") from exc


def _perceptual(thumb: Any) -> tuple[int, int, int, int, bool]:
    """pHash, mirrored pHash, dHash, mirrored dHash of the thumbnail, and "is it blank"."""
    import imagehash
    from PIL import Image

    mirror = thumb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    flat = float(np.asarray(thumb, dtype=np.float32).std()) < _FLAT_STD
    return (
        _hash_bits(imagehash.phash(thumb)),
        _hash_bits(imagehash.phash(mirror)),
        _hash_bits(imagehash.dhash(thumb)),
        _hash_bits(imagehash.dhash(mirror)),
        flat,
    )


def _pixel_digest(arr: np.ndarray, bit_depth: int) -> str:
    """Digest of the decoded pixels at the file's precision, so re-encoded lossless copies match."""
    if bit_depth <= 8:
        q = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
    else:
        q = np.clip(arr * 65535.0 + 0.5, 0, 65535).astype(np.uint16)
    if (
        q.ndim == 3
        and np.array_equal(q[..., 0], q[..., 1])
        and np.array_equal(q[..., 0], q[..., 2])
    ):
        q = q[..., 0]  # RGB with three equal channels is the grey image
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(q.shape).encode())
    h.update(np.ascontiguousarray(q).tobytes())
    return h.hexdigest()


def _fill_stats(rec: _Record, grey: np.ndarray) -> None:
    """Intensity, exposure and border figures, on the image subsampled to about 128 px.

    Subsampling keeps these summary numbers (not pixel-exact measurements) cheap: percentiles
    of 16 k pixels instead of millions. The mean is taken on the full image.
    """
    from medlens.preprocess import crop_black_border, exposure_check

    h, w = grey.shape
    step = max(1, math.ceil(max(h, w) / _STATS_SIDE))
    g = grey[::step, ::step]
    gh, gw = g.shape
    cropped, (y0, y1, x0, x1) = crop_black_border(g)
    rec.border = float(1.0 - ((y1 - y0) * (x1 - x0)) / float(gh * gw))
    rec.exposure = exposure_check(cropped).status
    rec.mean = float(grey.mean())
    rec.std = float(g.std())
    rec.p1, rec.p5, rec.p50, rec.p95, rec.p99 = (
        float(v) for v in np.percentile(g, [1, 5, 50, 95, 99])
    )
    rec.has_stats = True


def _record(task: _Task) -> _Record:
    """Read one file and reduce it to a :class:`_Record` (runs in worker processes).

    With ``with_stats`` (the audit) the file is fully decoded by ``read_image``, which also
    proves it readable. Without (copy groups for a split) a JPEG is only decoded at reduced
    scale for its hashes. JPEG hashes come from the reduced decode in both cases, so the audit
    and ``duplicate_groups`` find the same groups.
    """
    index, path, npz_key, npz_index, with_stats = task
    rec = _Record(index)
    p = Path(path)
    loaded: LoadedImage | None = None
    try:
        if npz_key is None:
            thumb = None
            head = b""
            if p.is_file():
                rec.sha256, rec.size, head = _file_digest(p)
            jpeg = head.startswith(_JPEG_MAGIC)
            if with_stats or not jpeg:
                loaded = read_image(p)
            if jpeg:
                thumb, (rec.width, rec.height) = _jpeg_thumb(p)
        else:
            loaded = _npz_image(path, npz_key, int(npz_index or 0))
            thumb = None
    except ImageReadError as exc:
        rec.reason = exc.reason
        return rec
    except OSError as exc:
        rec.reason = f"cannot read file: {exc.strerror or exc}"
        return rec
    rec.ok = True
    grey = None
    if loaded is not None:
        arr = loaded.array
        grey = arr if arr.ndim == 2 else np.ascontiguousarray(arr @ _LUMA)
        rec.fmt, rec.mode, rec.bit_depth = loaded.source_format, loaded.mode, int(loaded.bit_depth)
        rec.height, rec.width = (int(v) for v in arr.shape[:2])
        rec.channels = 1 if arr.ndim == 2 else int(arr.shape[2])
        rec.suffix_ok = bool(loaded.meta.get("suffix_matches_content", True))
        rec.pixels = _pixel_digest(arr, rec.bit_depth)
        if arr.ndim == 3 and arr.shape[2] >= 3:
            step = max(1, math.ceil(max(arr.shape[:2]) / _STATS_SIDE))
            sub = arr[::step, ::step, :3]
            diff = np.abs(sub[..., 0] - sub[..., 1]) + np.abs(sub[..., 1] - sub[..., 2])
            rec.colour = bool(float(diff.mean()) > _COLOUR_DIFF)
        if with_stats:
            _fill_stats(rec, grey)
    if thumb is None:
        assert grey is not None  # every non-JPEG path above went through a reader
        thumb = _thumb_from_grey(grey)
    rec.phash, rec.phash_f, rec.dhash, rec.dhash_f, rec.flat = _perceptual(thumb)
    rec.thumb = np.asarray(thumb, dtype=np.uint8).tobytes()
    return rec


def _worker_init() -> None:
    """Keep each worker on one thread: the pool already uses the cores."""
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:  # cv2 is optional here; a worker without it still hashes
        pass


def _default_workers(n: int) -> int:
    if n < _POOL_MIN_FILES:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _pool_context() -> Any:
    """The safest start method here: fork when nothing risky is loaded, else forkserver/spawn.

    A forked copy of a process that runs threads (torch, OpenMP, a GUI) can deadlock, so such a
    parent gets forkserver (fresh workers that import only this module). Fork needs no
    ``if __name__ == "__main__":`` guard in the calling script; forkserver and spawn do.
    """
    import multiprocessing as mp
    import threading

    methods = mp.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1 and "torch" not in sys.modules:
        return mp.get_context("fork")
    if "forkserver" in methods:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["medlens.data.audit.records"])
        return ctx
    return mp.get_context("spawn")


def _compute_records(
    tasks: Sequence[_Task], workers: int | None, tick: Callable[[int], None] | None
) -> list[_Record]:
    n_workers = _default_workers(len(tasks)) if workers is None else max(1, int(workers))
    out: list[_Record] = []
    if n_workers > 1 and len(tasks) > 1:
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        chunk = max(4, min(64, len(tasks) // (n_workers * 8) or 1))
        try:
            with ProcessPoolExecutor(
                n_workers, mp_context=_pool_context(), initializer=_worker_init
            ) as ex:
                for rec in ex.map(_record, tasks, chunksize=chunk):
                    out.append(rec)
                    if tick:
                        tick(len(out))
            return out
        except BrokenProcessPool:
            # e.g. a script without a __main__ guard under spawn: carry on in this process
            print(
                "audit: worker processes failed to start; reading in one process instead",
                file=sys.stderr,
            )
    for rec in map(_record, tasks[len(out) :]):
        out.append(rec)
        if tick:
            tick(len(out))
    return out


def _ticker(
    progress: bool | Callable[[int, int], None], total: int, what: str
) -> Callable[[int], None] | None:
    """Progress as a callback ``(done, total)``, or lines on stderr every 10 % when True."""
    if callable(progress):
        return lambda done: progress(done, total)
    if not progress or total == 0:
        return None
    every = max(1, total // 10)

    def tick(done: int) -> None:
        if done % every == 0 or done == total:
            print(f"audit: {what} {done}/{total} files", file=sys.stderr, flush=True)

    return tick


# --------------------------------------------------------------------------------------------
# Entries: which file, which sample, which split
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Entries: which file, which sample, which split
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    sample: Sample
    key: str
    folder: str  # "data" or "against"
    split: str | None


def _entries(
    manifest: Manifest, assignment: dict[str, str], against: Manifest | None
) -> list[_Entry]:
    out = []
    for s in manifest.samples:
        k = manifest.key(s)
        out.append(_Entry(s, k, "data", assignment.get(k)))
    if against is not None:
        out.extend(_Entry(s, against.key(s), "against", None) for s in against.samples)
    return out


def _tasks(entries: Sequence[_Entry], stats_for: str | None) -> list[_Task]:
    return [
        (i, e.sample.path, e.sample.npz_key, e.sample.npz_index, e.folder == stats_for)
        for i, e in enumerate(entries)
    ]


def _member(e: _Entry) -> dict[str, Any]:
    return {
        "path": e.sample.path
        if e.sample.npz_key is None
        else f"{e.sample.path}::{e.sample.npz_key}[{e.sample.npz_index}]",
        "key": e.key,
        "label": e.sample.label,
        "split": e.split,
        "folder": e.folder,
        "patient_id": e.sample.patient_id,
    }
