"""Dataset audit: unreadable files, duplicates, label conflicts, leakage and shortcuts.

Why this module exists
----------------------
The systems medlens replaces reported 96-100 % accuracy that came from their data, not from the
images' anatomy: augmented copies written into the data folder before the split, the same image
saved under several names in train and test, labels that line up with the scanner or the file
format. None of that is visible in a training curve. :func:`audit` looks for it *before* training;
:func:`duplicate_groups` gives :func:`medlens.data.splits.make_splits` the copy groups it needs to
keep every copy in its original's split; :func:`split_leakage` checks an existing split.

How it works (streaming, bounded memory)
----------------------------------------
Every file is read once with :func:`~medlens.data.io.read_image` (in a pool of worker processes for
larger sets) and reduced to a small record: the SHA-256 of its bytes, a digest of its decoded
pixels, four 64-bit perceptual hashes and about twenty numbers. Images are never kept, so memory
grows by a few hundred bytes per file whatever the image size.

Duplicates
~~~~~~~~~~
* **exact**: identical file bytes (SHA-256), or identical decoded pixels (a BLAKE2 digest of the
  image quantised at its own bit depth; RGB with three equal channels counts as grey), which
  catches a JPEG re-saved losslessly as PNG.
* **near**: ``imagehash`` pHash and dHash of a 64 x 64 grey thumbnail (area-averaged, so a resized
  copy gives nearly the same thumbnail), and of its mirror image. The distance between two images
  is the smallest, over "as is" and "one of them mirrored", of pHash + dHash Hamming distance
  (0..128). Two images are near copies when it is at most ``near_threshold`` (default 12).
  Calibrated on the real folders in ``shared/data`` (brain MRI, blood smears, liver ultrasound)
  with planted copies: resized (0.5x, 1.5x) <= 11, JPEG quality 70 <= 7, mirrored <= 9, +10 %
  brightness <= 6 on MRI and ultrasound. On bright blood-smear photographs whose white background
  clips at +10 %, the median is 7 but the worst 5 % exceed 13: raise ``near_threshold`` to 16-20
  for such data (at the price of grouping more look-alike images). Below 12, the brain MRI set's
  pairs are almost all re-processed copies of one slice; from about 16, adjacent slices of one
  patient start to chain into large groups. Images under 64 px (MedMNIST's 28 px, say) carry
  less detail per hash bit and get two thirds of the threshold (8 by default): on
  PneumoniaMNIST, 12 would chain 510 of 2,698 look-alike X-rays into groups (largest 260), 8
  gives 30 small groups. Structureless (blank) images have no meaningful perceptual hash and are
  only matched exactly.
* Pairs are found by multi-index hashing: the 128 bits are cut into ``near_threshold + 1``
  pieces, and two codes within the threshold must agree exactly on at least one piece
  (pigeonhole), so only images sharing a bucket are compared, in vectorised numpy. Small sets, or
  sets where buckets would be too crowded, use a blocked vectorised all-pairs comparison instead.
  Both give the same pairs.
* Pairs are joined into groups by connected components (union-find): if A~B and B~C, A, B and C
  are one group and must share a split. Each group is classified: within one class, across
  classes (conflicting labels), across splits (leakage, when a split is given), across folders
  (leakage between a train folder and ``against``, e.g. its test folder).

Shortcuts
~~~~~~~~~
Two complementary checks on properties that carry no anatomy:

* **association**: for each categorical property (file format, colour mode, bit depth, whether
  the name's suffix matches the content, image size), a chi-square test and bias-corrected
  Cramér's V between the property and the class. Flagged when p < 0.001 and V >= 0.3 (warning)
  or V >= 0.5 (critical: the property nearly determines the class). This works on small sets.
* **probe**: a class-balanced random forest (30 trees) trained on format, mode, bit depth,
  width, height, file size, intensity mean/std/percentiles and black-border fraction only;
  stratified 5-fold cross-validated balanced accuracy (on at most 1,500 stratified rows, to bound
  the time). It is compared with chance (1/k) and with the same probe on label-shuffled data
  (5 shuffles). Rule: the result is *significant* when it beats the shuffled runs' 95th
  percentile and is at least 4 standard errors above chance (binomial approximation of the
  balanced accuracy's spread; 4 rather than 3 because cross-validated scores spread ~10-20 % more
  than the binomial and several features are tried: on 12 clean synthetic sets of 80 images, 3
  gave one false warning, 4 none); significant and >= chance + 0.25 is **critical**, >= chance
  + 0.15 a **warning**. The properties that carry it are named two ways: each property family
  alone (a depth-4 decision tree, same folds) and the balanced-accuracy drop when a family is
  permuted in the held-out fold (grouped permutation importance, so correlated columns of one
  family are permuted together). Families that reach chance + 0.15 on their own, significantly,
  are the carriers. Intensity, border and file size can reflect image content as well as
  acquisition; the verdict says so when only they carry it. On small sets (tens of images) the
  probe has little power; the association check above still flags a format that lines up with
  the class.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medlens.data.io import LoadedImage, read_image
from medlens.data.manifest import Manifest, Sample
from medlens.data.splits import Splits
from medlens.errors import DataError, ImageReadError

__all__ = [
    "DEFAULT_NEAR_THRESHOLD",
    "Association",
    "AuditError",
    "AuditReport",
    "DuplicateGroup",
    "Finding",
    "LeakageError",
    "LeakageReport",
    "ProbeResult",
    "audit",
    "duplicate_groups",
    "split_leakage",
    "write_audit",
]

#: pHash + dHash Hamming distance (of 128 bits) at or below which two images are near copies.
DEFAULT_NEAR_THRESHOLD = 12

Severity = Literal["ok", "warning", "critical"]
_SEVERITY_RANK = {"ok": 0, "warning": 1, "critical": 2}

# Rec. 601 luma, as in medlens.preprocess, so "grey" means the same everywhere.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_JPEG_MAGIC = b"\xff\xd8\xff"
_THUMB = 64  # side of the grey thumbnail the perceptual hashes are computed on
_SMALL_SIDE = 64  # images smaller than this get two thirds of the near-copy threshold
_FLAT_STD = 1.0  # thumbnail std (grey levels) below which an image counts as blank
_STATS_SIDE = 128  # intensity statistics use the image subsampled to about this side
_POOL_MIN_FILES = 300  # below this, a worker pool costs more than it saves
_MIH_MIN_FILES = 2048  # below this, all-pairs comparison is as fast as multi-index hashing
_MAX_CANDIDATES = 8_000_000  # per hash piece; beyond this all-pairs comparison is used

_PROBE_MAX_ROWS = 1500
_PROBE_SHUFFLES = 5
_PROBE_TREES = 30
_WARN_MARGIN = 0.15
_CRIT_MARGIN = 0.25
_MIN_Z = 4.0
_ASSOC_P = 1e-3
_ASSOC_WARN_V = 0.3
_ASSOC_CRIT_V = 0.5
_IMBALANCE_RATIO = 3.0
_SURE_COPY = 8  # a differently labelled pair this close is a copy, not a look-alike

# Probe families that can also carry image content (the verdict says so when only they do).
_CONTENT_FAMILIES = ("intensity", "border", "file_size")


class AuditError(DataError):
    """The audit cannot run as asked (e.g. a split that does not cover the data)."""


class LeakageError(DataError):
    """A split puts copies of one image, or one patient, in more than one split."""


# --------------------------------------------------------------------------------------------
# Per-file records (computed in worker processes)
# --------------------------------------------------------------------------------------------


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
    exposure: str = ""
    border: float = 0.0


# (index, path, npz_key, npz_index, with_stats)
_Task = tuple[int, str, str | None, int | None, bool]

_NPZ_CACHE: dict[tuple[str, str], np.ndarray] = {}


def _file_sha256(path: Path, chunk: int = 1 << 20) -> tuple[str, int, bytes]:
    """SHA-256, size and first bytes of a file, read in chunks (a 1 GB DICOM stays 1 MB)."""
    h = hashlib.sha256()
    n = 0
    head = b""
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            if not n:
                head = block[:8]
            h.update(block)
            n += len(block)
    return h.hexdigest(), n, head


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
    return Image.fromarray(u8).resize((_THUMB, _THUMB), Image.Resampling.BOX)


def _jpeg_thumb(path: Path) -> tuple[Any, tuple[int, int]]:
    """Grey 64 px thumbnail of a JPEG decoded at reduced scale (``draft``), and its stored size.

    Decoding at reduced scale is 3-4x faster than a full decode.

    The JPEG decoder scales in the DCT domain (an area average) to the smallest of 1/1..1/8
    that keeps 64 px, and decodes luma only, which is the Rec. 601 grey used elsewhere; the
    thumbnail matches the one made from the fully decoded image to a grey level or so.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            size = img.size
            if img.mode in ("L", "RGB", "YCbCr"):
                img.draft("L", (_THUMB, _THUMB))
            img.load()
            oriented = ImageOps.exif_transpose(img)
            grey = oriented.convert("L") if oriented.mode != "L" else oriented
            return grey.resize((_THUMB, _THUMB), Image.Resampling.BOX), size
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
                rec.sha256, rec.size, head = _file_sha256(p)
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
        if with_stats:
            _fill_stats(rec, grey)
    if thumb is None:
        assert grey is not None  # every non-JPEG path above went through a reader
        thumb = _thumb_from_grey(grey)
    rec.phash, rec.phash_f, rec.dhash, rec.dhash_f, rec.flat = _perceptual(thumb)
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
        ctx.set_forkserver_preload(["medlens.data.audit"])
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
# Near-duplicate search
# --------------------------------------------------------------------------------------------

_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    b = np.ascontiguousarray(x, dtype=np.uint64)
    return _POP8[b.view(np.uint8)].reshape(*b.shape, 8).sum(axis=-1, dtype=np.uint8)


def _distance(codes: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Flip-aware pHash + dHash distance between rows ``i`` and ``j`` of ``codes``."""
    p, pf, d, df = codes[:, 0], codes[:, 1], codes[:, 2], codes[:, 3]
    nn = _popcount(p[i] ^ p[j]).astype(np.int16) + _popcount(d[i] ^ d[j])
    nf = _popcount(p[i] ^ pf[j]).astype(np.int16) + _popcount(d[i] ^ df[j])
    fn = _popcount(pf[i] ^ p[j]).astype(np.int16) + _popcount(df[i] ^ d[j])
    return np.minimum(np.minimum(nn, nf), fn)


def _pieces(threshold: int) -> list[tuple[int, int, int]]:
    """``threshold + 1`` disjoint bit ranges ``(column, shift, width)`` over pHash and dHash."""
    m = threshold + 1
    m_p = (m + 1) // 2
    out: list[tuple[int, int, int]] = []
    for col, k in ((0, m_p), (2, m - m_p)):
        shift = 0
        for r in range(k):
            width = 64 // k + (1 if r < 64 % k else 0)
            out.append((col, shift, width))
            shift += width
    return out


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sort order, unique keys, run starts and run lengths of ``keys``."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
    lengths = np.diff(np.r_[starts, len(sk)])
    return order, sk[starts], starts, lengths


def _pairs_within(order: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """All unordered pairs of members inside each run, vectorised."""
    if len(order) == 0:
        return np.empty((0, 2), np.int64)
    run_of = np.repeat(np.arange(len(starts)), lengths)
    pos = np.arange(len(order))
    count = (starts[run_of] + lengths[run_of]) - pos - 1  # later members of the same run
    total = int(count.sum())
    if total == 0:
        return np.empty((0, 2), np.int64)
    left = np.repeat(pos, count)
    offset = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
    right = left + 1 + offset
    return np.stack([order[left], order[right]], axis=1)


def _pairs_across(
    order_a: np.ndarray,
    starts_a: np.ndarray,
    lengths_a: np.ndarray,
    order_b: np.ndarray,
    starts_b: np.ndarray,
    lengths_b: np.ndarray,
) -> np.ndarray:
    """All (a, b) pairs of members of matching runs (runs given in the same key order)."""
    if len(starts_a) == 0:
        return np.empty((0, 2), np.int64)
    # every member of run r in a pairs with every member of run r in b
    run_of = np.repeat(np.arange(len(starts_a)), lengths_a)
    a_pos = (
        starts_a[run_of]
        + np.arange(len(run_of))
        - np.repeat(np.cumsum(lengths_a) - lengths_a, lengths_a)
    )
    count = lengths_b[run_of]
    total = int(count.sum())
    left = np.repeat(a_pos, count)
    offset = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
    right = np.repeat(starts_b[run_of], count) + offset
    return np.stack([order_a[left], order_b[right]], axis=1)


def _near_pairs_mih(codes: np.ndarray, threshold: int) -> np.ndarray | None:
    """Multi-index hashing; None when buckets are too crowded for it to pay off."""
    n = len(codes)
    found: list[np.ndarray] = []
    for col, shift, width in _pieces(threshold):
        mask = np.uint64((1 << width) - 1)
        kn = (codes[:, col] >> np.uint64(shift)) & mask
        kf = (codes[:, col + 1] >> np.uint64(shift)) & mask
        on, un, sn, ln = _runs(kn)
        of, uf, sf, lf = _runs(kf)
        _, ia, ib = np.intersect1d(un, uf, assume_unique=True, return_indices=True)
        estimate = int((ln * (ln - 1) // 2).sum() + (ln[ia] * lf[ib]).sum())
        if estimate > _MAX_CANDIDATES or estimate > n * n // 4:
            return None
        cand = np.concatenate(
            [_pairs_within(on, sn, ln), _pairs_across(on, sn[ia], ln[ia], of, sf[ib], lf[ib])]
        )
        cand = cand[cand[:, 0] != cand[:, 1]]
        if len(cand) == 0:
            continue
        cand = np.sort(cand, axis=1)
        keep = _distance(codes, cand[:, 0], cand[:, 1]) <= threshold
        found.append(cand[keep])
    if not found:
        return np.empty((0, 2), np.int64)
    allp = np.concatenate(found)
    return np.unique(allp, axis=0) if len(allp) else np.empty((0, 2), np.int64)


def _near_pairs_brute(codes: np.ndarray, threshold: int) -> np.ndarray:
    """Blocked all-pairs comparison, vectorised; memory ~ 4 M distances per block."""
    n = len(codes)
    block = max(1, 4_000_000 // max(n, 1))
    found: list[np.ndarray] = []
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        ii, jj = np.meshgrid(np.arange(i0, i1), np.arange(i0, n), indexing="ij")
        upper = jj > ii
        ii, jj = ii[upper], jj[upper]
        keep = _distance(codes, ii, jj) <= threshold
        if keep.any():
            found.append(np.stack([ii[keep], jj[keep]], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), np.int64)


def _near_pairs(codes: np.ndarray, threshold: int, method: str = "auto") -> np.ndarray:
    """Pairs ``(i, j)``, ``i < j``, of rows of ``codes`` (n x 4 uint64) within ``threshold``.

    ``method``: "mih" (multi-index hashing, falling back to all-pairs when too crowded),
    "brute" (blocked all-pairs) or "auto" (all-pairs below 2,048 images).
    """
    codes = np.ascontiguousarray(codes, dtype=np.uint64)
    if len(codes) < 2 or threshold < 0:
        return np.empty((0, 2), np.int64)
    if method == "mih" or (method == "auto" and len(codes) >= _MIH_MIN_FILES):
        pairs = _near_pairs_mih(codes, threshold)
        if pairs is not None:
            return pairs
    return _near_pairs_brute(codes, threshold)


def _components(n: int, edges: np.ndarray) -> np.ndarray:
    """Connected-component label of each of ``n`` nodes (union-find over ``edges``)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(edges) == 0:
        return np.arange(n)
    graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _equal_edges(values: Sequence[str]) -> np.ndarray:
    """Edges chaining together the rows that share a non-empty value."""
    by: dict[str, list[int]] = defaultdict(list)
    for i, v in enumerate(values):
        if v:
            by[v].append(i)
    edges = [(m[k], m[k + 1]) for m in by.values() if len(m) > 1 for k in range(len(m) - 1)]
    return np.array(edges, dtype=np.int64).reshape(-1, 2)


@dataclass
class _Found:
    """Exact and near-or-exact components over the readable records."""

    exact: list[list[int]]  # positions into the readable list
    groups: list[list[int]]
    edges: np.ndarray  # (m, 2) direct pairs: exact ones first, then near ones
    dist: np.ndarray  # (m,) pHash + dHash distance; 0 for exact pairs
    n_exact_edges: int


def _small_threshold(threshold: int) -> int:
    return (2 * threshold) // 3


def _find_copies(recs: Sequence[_Record], threshold: int) -> _Found:
    n = len(recs)
    exact_edges = np.concatenate(
        [_equal_edges([r.sha256 for r in recs]), _equal_edges([r.pixels for r in recs])]
    )
    sharp = np.array([i for i, r in enumerate(recs) if not r.flat], dtype=np.int64)
    codes = np.array(
        [[recs[i].phash, recs[i].phash_f, recs[i].dhash, recs[i].dhash_f] for i in sharp],
        dtype=np.uint64,
    ).reshape(-1, 4)
    near = _near_pairs(codes, threshold)
    near_dist = _distance(codes, near[:, 0], near[:, 1]) if len(near) else np.empty(0, np.int16)
    if len(near):  # tiny images carry less detail per hash bit: a stricter threshold for them
        small = np.array([min(recs[i].width, recs[i].height) < _SMALL_SIDE for i in sharp])
        limit = np.where(small, _small_threshold(threshold), threshold)
        keep = near_dist <= np.minimum(limit[near[:, 0]], limit[near[:, 1]])
        near, near_dist = near[keep], near_dist[keep]
    near_edges = sharp[near] if len(near) else np.empty((0, 2), np.int64)

    def comps(edges: np.ndarray) -> list[list[int]]:
        labels = _components(n, edges)
        members: dict[int, list[int]] = defaultdict(list)
        for i, lab in enumerate(labels):
            members[int(lab)].append(i)
        return [m for m in members.values() if len(m) > 1]

    edges = np.concatenate([exact_edges, near_edges])
    return _Found(
        exact=comps(exact_edges),
        groups=comps(edges),
        edges=edges,
        dist=np.concatenate([np.zeros(len(exact_edges), np.int16), near_dist]).astype(np.int16),
        n_exact_edges=len(exact_edges),
    )


# --------------------------------------------------------------------------------------------
# Report types
# --------------------------------------------------------------------------------------------


@dataclass
class Finding:
    """One plain-English line of the verdict."""

    severity: Severity
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"severity": self.severity, "code": self.code, "message": self.message}


@dataclass
class DuplicateGroup:
    """Files that are copies of one another (exact bytes, identical pixels or near copies).

    ``members`` are dicts with ``path``, ``key``, ``label``, ``split``, ``folder`` ("data" or
    "against") and ``patient_id``.
    """

    id: int
    kind: Literal["exact", "pixels", "near"]
    members: list[dict[str, Any]]
    #: direct pairs (not chains) whose labels differ: path/label of each, kind and distance
    conflicts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return sorted({str(m["label"]) for m in self.members})

    @property
    def splits(self) -> list[str]:
        return sorted({m["split"] for m in self.members if m["split"]})

    @property
    def folders(self) -> list[str]:
        return sorted({m["folder"] for m in self.members})

    @property
    def cross_class(self) -> bool:
        """Two directly matched members (not only a chain of look-alikes) differ in label."""
        return bool(self.conflicts)

    @property
    def mixed_labels(self) -> bool:
        """Members carry several labels, possibly only through a chain of look-alikes."""
        return len(self.labels) > 1

    @property
    def cross_split(self) -> bool:
        return len(self.splits) > 1

    @property
    def cross_folder(self) -> bool:
        return len(self.folders) > 1

    @property
    def paths(self) -> list[str]:
        return [m["path"] for m in self.members]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "size": len(self.members),
            "labels": self.labels,
            "splits": self.splits,
            "folders": self.folders,
            "cross_class": self.cross_class,
            "mixed_labels": self.mixed_labels,
            "cross_split": self.cross_split,
            "cross_folder": self.cross_folder,
            "members": self.members,
            "conflicts": self.conflicts,
        }


@dataclass
class LeakageReport:
    """Copies or patients that a split puts on both sides of a train/val/test boundary."""

    n_images: int
    n_groups: int
    n_groups_crossing: int
    n_images_crossing: int
    split_pairs: dict[str, int]  # "train+test" -> number of crossing groups
    examples: list[list[str]]  # a few crossing groups as "split: path" lines
    n_patients: int
    patients_crossing: dict[str, list[str]]  # patient id -> the splits it appears in
    message: str

    @property
    def ok(self) -> bool:
        return self.n_groups_crossing == 0 and not self.patients_crossing

    def raise_if_leaking(self) -> None:
        """Stop a run that would be evaluated on copies of its training images."""
        if not self.ok:
            raise LeakageError(self.message)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "n_images": self.n_images,
            "n_groups": self.n_groups,
            "n_groups_crossing": self.n_groups_crossing,
            "n_images_crossing": self.n_images_crossing,
            "split_pairs": self.split_pairs,
            "examples": self.examples,
            "n_patients": self.n_patients,
            "n_patients_crossing": len(self.patients_crossing),
            "patients_crossing": self.patients_crossing,
            "message": self.message,
        }


@dataclass
class ProbeResult:
    """Cross-validated shortcut probe on non-anatomical properties (see the module docstring)."""

    balanced_accuracy: float | None
    chance: float
    shuffled: list[float]
    shuffled_p95: float | None
    z: float | None
    level: Severity
    carriers: list[str]
    single_family: dict[str, float]
    importance: dict[str, float]
    features: list[str]
    n_rows: int
    n_folds: int
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "balanced_accuracy": self.balanced_accuracy,
            "chance": self.chance,
            "shuffled_mean": float(np.mean(self.shuffled)) if self.shuffled else None,
            "shuffled": self.shuffled,
            "shuffled_p95": self.shuffled_p95,
            "z": self.z,
            "level": self.level,
            "carriers": self.carriers,
            "single_family": self.single_family,
            "importance": self.importance,
            "features": self.features,
            "n_rows": self.n_rows,
            "n_folds": self.n_folds,
            "skipped": self.skipped,
            "rule": (
                "significant = above the shuffled runs' 95th percentile and >= 4 standard "
                "errors above chance; critical if significant and >= chance + 0.25, warning if "
                ">= chance + 0.15"
            ),
        }


@dataclass
class Association:
    """Association between one categorical file property and the class."""

    prop: str
    cramers_v: float
    p_value: float
    level: Severity
    table: dict[str, dict[str, int]]  # class -> value -> count
    same_as: str | None = None  # an earlier property that splits the files identically

    def to_dict(self) -> dict[str, Any]:
        return {
            "property": self.prop,
            "cramers_v": self.cramers_v,
            "p_value": self.p_value,
            "level": self.level,
            "table": self.table,
            "same_as": self.same_as,
        }


@dataclass
class AuditReport:
    """Everything :func:`audit` found. ``to_dict()`` is JSON-safe; ``verdict`` is the summary."""

    data_root: str
    classes: list[str]
    n_files: int
    n_readable: int
    class_counts: dict[str, int]
    near_threshold: int
    problems: list[dict[str, str]]
    exact_groups: list[DuplicateGroup]
    groups: list[DuplicateGroup]
    class_stats: dict[str, dict[str, Any]]
    associations: list[Association]
    probe: ProbeResult | None
    leakage: LeakageReport | None
    folder_leakage: dict[str, Any] | None
    verdict: list[Finding]
    against_root: str | None = None
    n_against: int = 0
    n_blank: int = 0
    elapsed_s: float = 0.0
    _copies: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def severity(self) -> Severity:
        """The worst severity in the verdict."""
        return max((f.severity for f in self.verdict), key=_SEVERITY_RANK.__getitem__, default="ok")

    def copies(self) -> dict[str, int]:
        """``manifest.key`` -> copy-group id for the audited data (for ``make_splits(copies=)``)."""
        return dict(self._copies)

    def duplicate_summary(self) -> dict[str, int]:
        near = [g for g in self.groups if g.kind == "near"]
        return {
            "n_exact_groups": len(self.exact_groups),
            "n_exact_extra_copies": sum(len(g.members) - 1 for g in self.exact_groups),
            "n_groups": len(self.groups),
            "n_near_groups": len(near),
            "n_images_in_groups": sum(len(g.members) for g in self.groups),
            "largest_group": max((len(g.members) for g in self.groups), default=0),
            "n_within_class": sum(1 for g in self.groups if not g.cross_class),
            "n_cross_class": sum(1 for g in self.groups if g.cross_class),
            "n_conflicting_pairs": sum(len(g.conflicts) for g in self.groups),
            "n_mixed_label_groups": sum(1 for g in self.groups if g.mixed_labels),
            "n_cross_split": sum(1 for g in self.groups if g.cross_split),
            "n_cross_folder": sum(1 for g in self.groups if g.cross_folder),
        }

    def to_dict(self) -> dict[str, Any]:
        problem_kinds = Counter(p["kind"] for p in self.problems)
        return {
            "severity": self.severity,
            "verdict": [f.to_dict() for f in self.verdict],
            "data_root": self.data_root,
            "against_root": self.against_root,
            "classes": self.classes,
            "n_files": self.n_files,
            "n_readable": self.n_readable,
            "n_against": self.n_against,
            "n_blank": self.n_blank,
            "class_counts": self.class_counts,
            "near_threshold": self.near_threshold,
            "elapsed_s": round(self.elapsed_s, 3),
            "problems": {"counts": dict(problem_kinds), "files": self.problems},
            "duplicates": {
                **self.duplicate_summary(),
                "exact_groups": [g.to_dict() for g in self.exact_groups],
                "groups": [g.to_dict() for g in self.groups],
            },
            "class_stats": self.class_stats,
            "shortcuts": {
                "associations": [a.to_dict() for a in self.associations],
                "probe": self.probe.to_dict() if self.probe else None,
            },
            "leakage": self.leakage.to_dict() if self.leakage else None,
            "folder_leakage": self.folder_leakage,
        }


# --------------------------------------------------------------------------------------------
# Entries: which file, which sample, which split
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    sample: Sample
    key: str
    folder: str  # "data" or "against"
    split: str | None


def _assignment(manifest: Manifest, splits: Splits | dict[str, str] | None) -> dict[str, str]:
    if splits is None:
        return {}
    assignment = splits.assignment if isinstance(splits, Splits) else dict(splits)
    keys = {manifest.key(s) for s in manifest.samples}
    if keys and not keys & assignment.keys():
        example = next(iter(assignment), "(empty)")
        raise AuditError(
            f"the split does not cover this data: none of its {len(assignment)} keys (e.g. "
            f"{example!r}) is an image of {manifest.root}. Pass the splits.csv written for this "
            "data folder, or draw one with `medlens split`."
        )
    return assignment


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


def _group_kind(recs: Sequence[_Record]) -> Literal["exact", "pixels", "near"]:
    if recs[0].sha256 and all(r.sha256 == recs[0].sha256 for r in recs):
        return "exact"
    if all(r.pixels == recs[0].pixels for r in recs):
        return "pixels"
    return "near"


def _build_groups(
    comps: list[list[int]],
    ok: Sequence[int],
    recs: Sequence[_Record],
    entries: Sequence[_Entry],
    found: _Found | None = None,
) -> list[DuplicateGroup]:
    """Groups ordered by their first member's key, numbered from 0.

    With ``found``, each group also lists its direct pairs whose labels differ: a chain of
    look-alike slices may join two classes without any two of its images being copies.
    """
    built = []
    for comp in comps:
        idx = sorted((ok[i] for i in comp), key=lambda e: (entries[e].folder, entries[e].key))
        built.append((idx, _group_kind([recs[i] for i in idx])))
    built.sort(key=lambda t: (entries[t[0][0]].folder, entries[t[0][0]].key))
    groups = [
        DuplicateGroup(gid, kind, [_member(entries[i]) for i in idx])
        for gid, (idx, kind) in enumerate(built)
    ]
    if found is not None:
        gid_of = {i: gid for gid, (idx, _) in enumerate(built) for i in idx}
        for n, (a, b) in enumerate(found.edges.tolist()):
            ea, eb = entries[ok[a]], entries[ok[b]]
            if ea.sample.label == eb.sample.label:
                continue
            exact = n < found.n_exact_edges
            groups[gid_of[ok[a]]].conflicts.append(
                {
                    "a": _member(ea)["path"],
                    "label_a": ea.sample.label,
                    "b": _member(eb)["path"],
                    "label_b": eb.sample.label,
                    "kind": "exact" if exact else "near",
                    "distance": int(found.dist[n]),
                }
            )
    return groups


# --------------------------------------------------------------------------------------------
# Leakage
# --------------------------------------------------------------------------------------------


def _leakage(entries: Sequence[_Entry], copies: dict[str, int]) -> LeakageReport:
    """Copy groups and patients that span more than one split (``entries`` of one manifest)."""
    by_group: dict[int, list[_Entry]] = defaultdict(list)
    patients: dict[str, set[str]] = defaultdict(set)
    n_images = 0
    for e in entries:
        if e.split is None:
            continue
        n_images += 1
        if e.key in copies:
            by_group[copies[e.key]].append(e)
        if e.sample.patient_id:
            patients[e.sample.patient_id].add(e.split)
    crossing = [g for g in by_group.values() if len({e.split for e in g}) > 1]
    pairs: Counter[str] = Counter()
    for g in crossing:
        pairs["+".join(sorted({e.split or "" for e in g}))] += 1
    examples = [[f"{e.split}: {_member(e)['path']}" for e in g[:4]] for g in crossing[:5]]
    patients_crossing = {p: sorted(s) for p, s in sorted(patients.items()) if len(s) > 1}
    n_img_cross = sum(len(g) for g in crossing)
    parts = []
    if crossing:
        where = ", ".join(f"{k}: {v}" for k, v in sorted(pairs.items()))
        ex = "; ".join(" = ".join(x.split(": ", 1)[1] for x in g[:2]) for g in examples[:2])
        parts.append(
            f"{len(crossing)} group(s) of copies ({n_img_cross} images) span more than one "
            f"split ({where}); e.g. {ex}"
        )
    if patients_crossing:
        some = ", ".join(f"{p} ({'/'.join(s)})" for p, s in list(patients_crossing.items())[:5])
        parts.append(f"{len(patients_crossing)} patient(s) appear in more than one split: {some}")
    if parts:
        message = (
            "the split leaks: "
            + ". ".join(parts)
            + ". A model evaluated on this split is tested on images it trained on. Draw a new "
            "split that keeps copies and patients together (`medlens split DATA`, or "
            "make_splits(..., copies=duplicate_groups(manifest)))."
        )
    else:
        message = (
            f"no leakage: none of {len(by_group)} copy group(s) and {len(patients)} patient(s) "
            f"spans two splits ({n_images} images checked)"
        )
    return LeakageReport(
        n_images=n_images,
        n_groups=len(by_group),
        n_groups_crossing=len(crossing),
        n_images_crossing=n_img_cross,
        split_pairs=dict(pairs),
        examples=examples,
        n_patients=len(patients),
        patients_crossing=patients_crossing,
        message=message,
    )


def _copies_map(groups: Sequence[DuplicateGroup], folder: str = "data") -> dict[str, int]:
    out: dict[str, int] = {}
    for g in groups:
        mine = [m for m in g.members if m["folder"] == folder]
        if len(mine) > 1:
            for m in mine:
                out[m["key"]] = g.id
    return out


# --------------------------------------------------------------------------------------------
# Class statistics, associations and the shortcut probe
# --------------------------------------------------------------------------------------------


def _describe(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": round(float(a.mean()), 4),
        "min": round(float(a.min()), 4),
        "max": round(float(a.max()), 4),
    }


def _class_stats(
    entries: Sequence[_Entry], recs: Sequence[_Record], classes: Sequence[str]
) -> dict[str, dict[str, Any]]:
    by: dict[str, list[_Record]] = defaultdict(list)
    total: dict[str, int] = Counter()
    for e, r in zip(entries, recs, strict=True):
        if e.folder != "data":
            continue
        label = str(e.sample.label)
        total[label] += 1
        if r.ok and r.has_stats:
            by[label].append(r)
    out: dict[str, dict[str, Any]] = {}
    for c in [*classes, *sorted(set(by) - set(classes))]:
        rs = by.get(c, [])
        hist, _ = np.histogram([r.mean for r in rs], bins=10, range=(0.0, 1.0))
        out[c] = {
            "count": total.get(c, 0),
            "readable": len(rs),
            "width": _describe([r.width for r in rs]),
            "height": _describe([r.height for r in rs]),
            "file_size": _describe([r.size for r in rs if r.size is not None]),
            "format": dict(Counter(r.fmt for r in rs)),
            "mode": dict(Counter(r.mode for r in rs)),
            "bit_depth": dict(Counter(str(r.bit_depth) for r in rs)),
            "name_mismatch": sum(1 for r in rs if not r.suffix_ok),
            "mean_intensity": _describe([r.mean for r in rs]),
            "mean_intensity_hist": [int(v) for v in hist],
            "std_intensity": _describe([r.std for r in rs]),
            "exposure": dict(Counter(r.exposure for r in rs)),
            "border_fraction": _describe([r.border for r in rs]),
            "with_border": sum(1 for r in rs if r.border > 0.05),
            "blank": sum(1 for r in rs if r.flat),
        }
    return out


def _cramers_v(table: np.ndarray) -> tuple[float, float]:
    """Bias-corrected Cramér's V (Bergsma 2013) and the chi-square p-value."""
    from scipy.stats import chi2_contingency

    table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
    r, k = table.shape
    n = float(table.sum())
    if r < 2 or k < 2 or n < 3:
        return 0.0, 1.0
    chi2, p, _, _ = chi2_contingency(table, correction=False)
    phi2 = chi2 / n
    phi2c = max(0.0, phi2 - (k - 1) * (r - 1) / (n - 1))
    rc = r - (r - 1) ** 2 / (n - 1)
    kc = k - (k - 1) ** 2 / (n - 1)
    denom = min(kc - 1, rc - 1)
    v = math.sqrt(phi2c / denom) if denom > 0 else 0.0
    return float(min(1.0, v)), float(p)


def _associations(labels: Sequence[str], recs: Sequence[_Record]) -> list[Association]:
    props: dict[str, Callable[[_Record], str]] = {
        "format": lambda r: r.fmt,
        "mode": lambda r: r.mode,
        "bit_depth": lambda r: str(r.bit_depth),
        "name_matches_content": lambda r: "yes" if r.suffix_ok else "no",
        "size": lambda r: f"{r.width}x{r.height}",
    }
    out = []
    classes = sorted(set(labels))
    seen: dict[tuple[int, ...], str] = {}
    for prop, get in props.items():
        values = [get(r) for r in recs]
        cats = sorted(set(values))
        if len(cats) < 2 or len(classes) < 2 or len(cats) > 30:
            continue
        # properties that partition the files identically (PNG = RGB = 449x464) are one finding
        first: dict[str, int] = {}
        partition = tuple(first.setdefault(v, len(first)) for v in values)
        same_as = seen.setdefault(partition, prop)
        ci = {c: i for i, c in enumerate(classes)}
        vi = {v: i for i, v in enumerate(cats)}
        table = np.zeros((len(classes), len(cats)), dtype=np.int64)
        for lab, v in zip(labels, values, strict=True):
            table[ci[lab], vi[v]] += 1
        v_, p = _cramers_v(table)
        level: Severity = "ok"
        if p < _ASSOC_P and v_ >= _ASSOC_CRIT_V:
            level = "critical"
        elif p < _ASSOC_P and v_ >= _ASSOC_WARN_V:
            level = "warning"
        out.append(
            Association(
                prop,
                round(v_, 4),
                float(f"{p:.3g}"),
                level,
                {
                    c: {cat: int(table[ci[c], vi[cat]]) for cat in cats if table[ci[c], vi[cat]]}
                    for c in classes
                },
                same_as if same_as != prop else None,
            )
        )
    return out


def _probe_matrix(recs: Sequence[_Record]) -> tuple[np.ndarray, list[str], dict[str, list[int]]]:
    """Feature matrix over non-anatomical properties; constant columns are dropped."""
    cols: list[tuple[str, str, np.ndarray]] = []  # (family, name, values)
    for fam, attr in (("format", "fmt"), ("mode", "mode")):
        values = [getattr(r, attr) for r in recs]
        for v in sorted(set(values)):
            cols.append((fam, f"{fam}={v}", np.array([x == v for x in values], np.float64)))
    cols.append(("format", "name_matches_content", np.array([r.suffix_ok for r in recs], float)))
    cols.append(("bit_depth", "bit_depth", np.array([r.bit_depth for r in recs], float)))
    cols.append(("width", "width", np.array([r.width for r in recs], float)))
    cols.append(("height", "height", np.array([r.height for r in recs], float)))
    if all(r.size is not None for r in recs):
        cols.append(("file_size", "log_file_size", np.log1p([float(r.size or 0) for r in recs])))
    for name in ("mean", "std", "p1", "p5", "p50", "p95", "p99"):
        cols.append(("intensity", f"intensity_{name}", np.array([getattr(r, name) for r in recs])))
    cols.append(("border", "border_fraction", np.array([r.border for r in recs], float)))
    kept = [c for c in cols if len(c[2]) and np.ptp(c[2]) > 0]
    if not kept:
        return np.zeros((len(recs), 0)), [], {}
    X = np.stack([c[2] for c in kept], axis=1)
    families: dict[str, list[int]] = defaultdict(list)
    for j, (fam, _, _) in enumerate(kept):
        families[fam].append(j)
    return X, [c[1] for c in kept], dict(families)


def _chance_sd(y: np.ndarray, pred: np.ndarray) -> float:
    """Standard error of balanced accuracy if predictions were independent of the labels."""
    classes = np.unique(y)
    k = len(classes)
    var = 0.0
    for c in classes:
        q = float(np.mean(pred == c))
        var += q * (1 - q) / max(1, int(np.sum(y == c)))
    return math.sqrt(var) / k if var > 0 else 1.0 / (k * math.sqrt(max(1, len(y))))


def _shortcut_probe(
    X: np.ndarray,
    y: np.ndarray,
    names: list[str],
    families: dict[str, list[int]],
    seed: int = 0,
    shuffles: int = _PROBE_SHUFFLES,
) -> ProbeResult:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.tree import DecisionTreeClassifier

    classes, counts = np.unique(y, return_counts=True)
    k = len(classes)
    chance = 1.0 / k if k else 0.0

    def skipped(reason: str) -> ProbeResult:
        return ProbeResult(None, chance, [], None, None, "ok", [], {}, {}, names, len(y), 0, reason)

    if k < 2:
        return skipped("fewer than two classes with readable images")
    if counts.min() < 3:
        return skipped("a class has fewer than 3 readable images; too few to cross-validate")
    if X.shape[1] == 0:
        return skipped("every non-anatomical property is the same for all images")
    rng = np.random.default_rng(seed)
    if len(y) > _PROBE_MAX_ROWS:  # stratified subsample keeps the probe's time bounded
        keep = np.concatenate(
            [
                rng.choice(
                    np.flatnonzero(y == c),
                    max(3, round(_PROBE_MAX_ROWS * n / len(y))),
                    replace=False,
                )
                for c, n in zip(classes, counts, strict=True)
            ]
        )
        X, y = X[keep], y[keep]
    n_folds = int(min(5, np.unique(y, return_counts=True)[1].min()))
    folds = list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(X, y))

    def forest() -> Any:
        return RandomForestClassifier(
            n_estimators=_PROBE_TREES,
            min_samples_leaf=2,
            class_weight="balanced",
            random_state=seed,
            n_jobs=1,
        )

    def cv_predict(make: Callable[[], Any], Xm: np.ndarray, ym: np.ndarray) -> np.ndarray:
        pred = np.empty_like(ym)
        for tr, te in folds:
            pred[te] = make().fit(Xm[tr], ym[tr]).predict(Xm[te])
        return pred

    # main probe, with grouped permutation importance on the held-out folds
    pred = np.empty_like(y)
    drops: dict[str, list[float]] = defaultdict(list)
    for tr, te in folds:
        model = forest().fit(X[tr], y[tr])
        pred[te] = model.predict(X[te])
        base = balanced_accuracy_score(y[te], pred[te])
        for fam, idx in families.items():
            Xp = X[te].copy()
            perm = rng.permutation(len(te))
            Xp[:, idx] = Xp[perm][:, idx]
            drops[fam].append(base - balanced_accuracy_score(y[te], model.predict(Xp)))
    ba = float(balanced_accuracy_score(y, pred))
    sd = _chance_sd(y, pred)
    z = (ba - chance) / sd
    shuffled = [
        float(balanced_accuracy_score(yp, cv_predict(forest, X, yp)))
        for yp in (rng.permutation(y) for _ in range(shuffles))
    ]
    p95 = float(np.percentile(shuffled, 95)) if shuffled else chance
    significant = ba > p95 and z >= _MIN_Z
    level: Severity = "ok"
    if significant and ba >= chance + _CRIT_MARGIN:
        level = "critical"
    elif significant and ba >= chance + _WARN_MARGIN:
        level = "warning"

    single: dict[str, float] = {}
    carriers: list[str] = []
    for fam, idx in families.items():

        def tree() -> Any:
            return DecisionTreeClassifier(
                max_depth=4, min_samples_leaf=2, class_weight="balanced", random_state=seed
            )

        p_f = cv_predict(tree, X[:, idx], y)
        s = float(balanced_accuracy_score(y, p_f))
        single[fam] = round(s, 4)
        if s >= chance + _WARN_MARGIN and (s - chance) / _chance_sd(y, p_f) >= _MIN_Z and s > p95:
            carriers.append(fam)
    importance = {f: round(float(np.mean(v)), 4) for f, v in drops.items()}
    carriers.sort(key=lambda f: (-single[f], -importance.get(f, 0.0)))
    if level != "ok" and not carriers:  # only an interaction carries it: name the biggest drops
        carriers = [f for f, v in sorted(importance.items(), key=lambda t: -t[1]) if v > 0.02][:3]
    return ProbeResult(
        balanced_accuracy=round(ba, 4),
        chance=round(chance, 4),
        shuffled=[round(s, 4) for s in shuffled],
        shuffled_p95=round(p95, 4),
        z=round(z, 2),
        level=level,
        carriers=carriers,
        single_family=single,
        importance=importance,
        features=names,
        n_rows=len(y),
        n_folds=n_folds,
    )


# --------------------------------------------------------------------------------------------
# Verdict
# --------------------------------------------------------------------------------------------


def _problem_kind(reason: str) -> str:
    r = reason.lower()
    if "0 bytes" in r or "empty" in r:
        return "zero_byte"
    if "truncated" in r or "corrupt" in r:
        return "truncated_or_corrupt"
    if "not an image" in r or "array file" in r:
        return "not_an_image"
    if "not found" in r or "permission" in r or "cannot open" in r or "cannot access" in r:
        return "inaccessible"
    return "unreadable"


def _verdict(rep: AuditReport) -> list[Finding]:
    out: list[Finding] = []
    kinds = Counter(p["kind"] for p in rep.problems)
    unread = sum(v for k, v in kinds.items() if k != "unsupported")
    if unread:
        detail = ", ".join(
            f"{v} {k.replace('_', ' ')}" for k, v in kinds.items() if k != "unsupported"
        )
        ex = next(p["path"] for p in rep.problems if p["kind"] != "unsupported")
        sev: Severity = "critical" if unread > 0.05 * max(1, rep.n_files) else "warning"
        out.append(
            Finding(
                sev,
                "unreadable",
                f"{unread} file(s) cannot be read ({detail}), e.g. {ex}; they will be skipped. "
                "Replace or delete them.",
            )
        )
    if kinds.get("unsupported"):
        out.append(
            Finding(
                "warning",
                "unsupported",
                f"{kinds['unsupported']} file(s) in the class folders have an unsupported type "
                "and are ignored (see problems). Move them out if they are not images.",
            )
        )
    summary = rep.duplicate_summary()
    if rep.exact_groups:
        out.append(
            Finding(
                "warning",
                "exact_duplicates",
                f"{summary['n_exact_groups']} group(s) of identical images "
                f"({summary['n_exact_extra_copies']} extra copies), e.g. "
                f"{' = '.join(rep.exact_groups[0].paths[:2])}. Copies inflate the data and, split "
                "apart, the test score; `medlens split` keeps them in one split.",
            )
        )
    if summary["n_near_groups"]:
        big = summary["largest_group"]
        chain = ""
        if big > max(20, 0.02 * rep.n_readable):
            chain = (
                f" The largest group chains {big} look-alike images (A like B like C ...): if "
                f"they are not copies or one scan, lower the near-copy threshold (now "
                f"{rep.near_threshold}), e.g. to 8."
            )
        out.append(
            Finding(
                "warning",
                "near_duplicates",
                f"{summary['n_near_groups']} group(s) of near copies: resized, re-encoded, "
                "brightened or mirrored versions of one image, or near-identical frames/slices "
                f"of one scan ({summary['n_images_in_groups']} images in all copy groups, "
                f"largest {big}). Augmented copies belong in training only, made on the fly; "
                "`medlens split` keeps each group in one split." + chain,
            )
        )
    pairs = sorted((c for g in rep.groups for c in g.conflicts), key=lambda c: c["distance"])
    sure = [c for c in pairs if c["distance"] <= _SURE_COPY]
    unsure = [c for c in pairs if c["distance"] > _SURE_COPY]

    def show(c: dict[str, Any]) -> str:
        sign = "=" if c["kind"] == "exact" else f"~ (distance {c['distance']})"
        return f"{c['a']} ({c['label_a']}) {sign} {c['b']} ({c['label_b']})"

    if sure:
        out.append(
            Finding(
                "critical",
                "conflicting_labels",
                f"{len(sure)} pair(s) of identical or all-but-identical images carry different "
                f"labels, e.g. {show(sure[0])}. Decide the true label and delete the other copy.",
            )
        )
    if unsure:
        out.append(
            Finding(
                "warning",
                "conflicting_labels_near",
                f"{len(unsure)} pair(s) of near-identical images carry different labels, e.g. "
                f"{show(unsure[0])}: re-labelled copies, or look-alike images of different "
                "cases. Check them (listed in the report's duplicate groups).",
            )
        )
    if rep.leakage is not None and not rep.leakage.ok:
        out.append(Finding("critical", "split_leakage", rep.leakage.message))
    if rep.folder_leakage and rep.folder_leakage.get("n_groups_crossing"):
        fl = rep.folder_leakage
        out.append(
            Finding(
                "critical",
                "folder_leakage",
                f"{fl['n_groups_crossing']} group(s) of copies span {rep.data_root} and "
                f"{rep.against_root} ({fl['n_against_images']} images of the second), e.g. "
                f"{' = '.join(fl['examples'][0][:2])}. Scores on the second folder are inflated; "
                "remove the copies from one of them.",
            )
        )
    if rep.folder_leakage and rep.folder_leakage.get("patients_crossing"):
        out.append(
            Finding(
                "critical",
                "folder_patient_leakage",
                f"{len(rep.folder_leakage['patients_crossing'])} patient id(s) appear in both "
                "folders; keep each patient in one of them.",
            )
        )
    for a in rep.associations:
        if a.level == "ok" or a.same_as is not None:
            continue
        twins = [b.prop for b in rep.associations if b.same_as == a.prop]
        names = " / ".join(x.replace("_", " ") for x in [a.prop, *twins])
        spread = "; ".join(
            f"{c}: " + ", ".join(f"{n} {v}" for v, n in vals.items()) for c, vals in a.table.items()
        )
        together = f" ({' and '.join([a.prop, *twins])} vary together)" if twins else ""
        out.append(
            Finding(
                a.level,
                "shortcut_property",
                f"the {names} of the files lines up with the class{together} (Cramér's V "
                f"{a.cramers_v:.2f}, p={a.p_value:.2g}): {spread}. A model can learn it instead "
                "of the anatomy; convert all files to one form or balance it across classes.",
            )
        )
    p = rep.probe
    if p is not None and p.balanced_accuracy is not None and p.level != "ok":
        what = ", ".join(p.carriers) or "a mix of properties"
        content_only = bool(p.carriers) and set(p.carriers) <= set(_CONTENT_FAMILIES)
        note = (
            " Intensity, border and (for one format and size) file size reflect the image content "
            "as well as the scanner or stain: check whether the classes come from different "
            "sources, devices or sessions."
            if content_only
            else " These properties say nothing about anatomy: the classes were acquired or "
            "stored differently, and a model can score well on that alone."
        )
        out.append(
            Finding(
                p.level,
                "shortcut_probe",
                f"SHORTCUT: a classifier that sees only file and acquisition properties predicts "
                f"the class with balanced accuracy {p.balanced_accuracy:.2f} (chance "
                f"{p.chance:.2f}, label-shuffled {p.shuffled_p95:.2f}); carried by {what}.{note}",
            )
        )
    counts = [v for v in rep.class_counts.values() if v > 0]
    if counts and max(counts) / min(counts) > _IMBALANCE_RATIO:
        out.append(
            Finding(
                "warning",
                "class_imbalance",
                f"classes are imbalanced ({rep.class_counts}); report balanced metrics and "
                "consider class weights.",
            )
        )
    missing = [c for c, v in rep.class_counts.items() if v == 0]
    if missing:
        out.append(Finding("critical", "empty_class", f"no images for class(es) {missing}"))
    mism = sum(s.get("name_mismatch", 0) for s in rep.class_stats.values())
    if mism:
        out.append(
            Finding(
                "warning",
                "name_mismatch",
                f"{mism} file(s) have a name that does not match their content (e.g. PNG data "
                "named .jpg); medlens reads them by content, but other tools may not.",
            )
        )
    if rep.n_blank:
        out.append(
            Finding(
                "warning",
                "blank_images",
                f"{rep.n_blank} image(s) are blank (no structure); check that they belong.",
            )
        )
    if not out or all(f.severity == "ok" for f in out):
        out.append(
            Finding(
                "ok",
                "clean",
                f"{rep.n_readable} images read; no duplicates, leakage or shortcut found.",
            )
        )
    out.sort(key=lambda f: -_SEVERITY_RANK[f.severity])
    return out


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def audit(
    manifest: Manifest,
    *,
    splits: Splits | dict[str, str] | None = None,
    against: Manifest | None = None,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    progress: bool | Callable[[int, int], None] = True,
    probe: bool = True,
    workers: int | None = None,
    seed: int = 0,
) -> AuditReport:
    """Audit a data set before training: files, duplicates, leakage, balance and shortcuts.

    ``splits`` (a :class:`Splits` or ``manifest.key -> split``) adds split leakage (copies and
    patients spanning splits); ``against`` (another data set, e.g. the test folder) adds
    folder leakage. ``near_threshold`` is the pHash + dHash distance (of 128 bits) for near
    copies (two thirds of it for images under 64 px; see the module docstring). ``progress``
    prints to stderr (True), stays silent (False) or calls ``f(done, total)``. ``probe=False``
    skips the shortcut probe (seconds on large sets). ``workers`` sets the process-pool size
    (default: the available cores, up to 8, for 300+ files). Unreadable files are reported,
    never raised: the audit's job is to list them.
    """
    t0 = time.perf_counter()
    assignment = _assignment(manifest, splits)
    entries = _entries(manifest, assignment, against)
    recs = _compute_records(
        _tasks(entries, "data"), workers, _ticker(progress, len(entries), "read")
    )

    problems: list[dict[str, str]] = []
    for e, r in zip(entries, recs, strict=True):
        if not r.ok:
            problems.append(
                {
                    "path": _member(e)["path"],
                    "key": e.key,
                    "folder": e.folder,
                    "kind": _problem_kind(r.reason),
                    "reason": r.reason,
                }
            )
    for folder, m in (("data", manifest), ("against", against)):
        for path in m.skipped if m is not None else []:
            problems.append(
                {
                    "path": path,
                    "key": path,
                    "folder": folder,
                    "kind": "unsupported",
                    "reason": "file type not supported (by its name); not part of the data",
                }
            )

    ok = [i for i, r in enumerate(recs) if r.ok]
    found = _find_copies([recs[i] for i in ok], near_threshold)
    exact = _build_groups(found.exact, ok, recs, entries)
    groups = _build_groups(found.groups, ok, recs, entries, found)
    copies = _copies_map(groups)

    data_idx = [i for i in ok if entries[i].folder == "data"]
    labels = [str(entries[i].sample.label) for i in data_idx]
    data_recs = [recs[i] for i in data_idx]
    associations = _associations(labels, data_recs) if data_recs else []
    probe_result = None
    if probe and data_recs:
        X, names, families = _probe_matrix(data_recs)
        probe_result = _shortcut_probe(X, np.array(labels), names, families, seed=seed)

    data_entries = [e for e in entries if e.folder == "data"]
    leakage = _leakage(data_entries, copies) if assignment else None
    folder_leakage = None
    if against is not None:
        crossing = [g for g in groups if g.cross_folder]
        pid_data = {e.sample.patient_id for e in data_entries if e.sample.patient_id}
        pid_against = {
            e.sample.patient_id for e in entries if e.folder == "against" and e.sample.patient_id
        }
        folder_leakage = {
            "n_groups_crossing": len(crossing),
            "n_against_images": sum(
                1 for g in crossing for m in g.members if m["folder"] == "against"
            ),
            "group_ids": [g.id for g in crossing],
            "examples": [g.paths[:4] for g in crossing[:5]],
            "patients_crossing": sorted(pid_data & pid_against),
        }

    rep = AuditReport(
        data_root=str(manifest.root) if manifest.root else "",
        classes=list(manifest.classes),
        n_files=len(manifest.samples),
        n_readable=len(data_idx),
        class_counts=manifest.counts(),
        near_threshold=near_threshold,
        problems=problems,
        exact_groups=exact,
        groups=groups,
        class_stats=_class_stats(entries, recs, manifest.classes),
        associations=associations,
        probe=probe_result,
        leakage=leakage,
        folder_leakage=folder_leakage,
        verdict=[],
        against_root=str(against.root) if against is not None and against.root else None,
        n_against=len(against.samples) if against is not None else 0,
        n_blank=sum(1 for r in data_recs if r.flat),
        _copies=copies,
    )
    rep.verdict = _verdict(rep)
    rep.elapsed_s = time.perf_counter() - t0
    return rep


def duplicate_groups(
    manifest: Manifest,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    *,
    progress: bool | Callable[[int, int], None] = False,
    workers: int | None = None,
) -> dict[str, int]:
    """``manifest.key(sample)`` -> group id for every sample with an exact or near copy.

    Samples without a copy (and unreadable files) are absent. Pass the result to
    ``make_splits(..., copies=...)`` so that every copy lands in its original's split.
    """
    entries = _entries(manifest, {}, None)
    recs = _compute_records(_tasks(entries, None), workers, _ticker(progress, len(entries), "hash"))
    ok = [i for i, r in enumerate(recs) if r.ok]
    found = _find_copies([recs[i] for i in ok], near_threshold)
    return _copies_map(_build_groups(found.groups, ok, recs, entries))


def split_leakage(
    manifest: Manifest,
    splits: Splits | dict[str, str],
    *,
    copies: dict[str, int] | None = None,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    progress: bool | Callable[[int, int], None] = False,
    workers: int | None = None,
) -> LeakageReport:
    """Which copy groups and patients a split puts in more than one of train/val/test.

    ``copies`` (from :func:`duplicate_groups` or ``AuditReport.copies()``) avoids hashing the
    images again. ``report.raise_if_leaking()`` raises :class:`LeakageError` with the message.
    """
    assignment = _assignment(manifest, splits)
    if copies is None:
        copies = duplicate_groups(manifest, near_threshold, progress=progress, workers=workers)
    return _leakage(_entries(manifest, assignment, None), copies)


# --------------------------------------------------------------------------------------------
# HTML / JSON output
# --------------------------------------------------------------------------------------------

_MAX_THUMB_GROUPS = 30
_MAX_THUMBS = 6
_MAX_LISTED = 300

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f4f4f4}.critical{color:#fff;background:#b00020}.warning{background:#ffd54f}
.ok{color:#fff;background:#2e7d32}.sev{padding:2px 6px;border-radius:3px;font-weight:600}
.bar{background:#5b8def;height:12px;display:inline-block}.mono{font-family:monospace}
.thumbs img{margin:2px;border:1px solid #ccc}.small{font-size:12px;color:#555}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _thumb_b64(member: dict[str, Any], side: int = 96) -> str | None:
    from PIL import Image

    try:
        path = str(member["path"])
        if "::" in path:
            base, rest = path.split("::", 1)
            key, idx = rest[:-1].split("[")
            arr = _npz_image(base, key, int(idx)).array
        else:
            arr = read_image(path).array
    except (ImageReadError, OSError, ValueError):
        return None
    u8 = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
    img = Image.fromarray(u8)
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt_desc(d: dict[str, float] | None, digits: int = 3) -> str:
    if not d:
        return "-"
    lo, hi = f"{d['min']:.{digits}g}", f"{d['max']:.{digits}g}"
    return f"{d['mean']:.{digits}g} <span class=small>[{lo}, {hi}]</span>"


def _html(rep: AuditReport) -> str:
    d = rep.to_dict()
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>medlens audit</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>medlens data audit <span class='sev {rep.severity}'>{rep.severity}</span></h1>",
        f"<p class=mono>{_esc(rep.data_root)}"
        + (f" vs {_esc(rep.against_root)}" if rep.against_root else "")
        + f"</p><p>{rep.n_files} files, {rep.n_readable} readable, near-copy threshold "
        f"{rep.near_threshold}/128 bits, {rep.elapsed_s:.1f} s.</p>",
        "<h2>Verdict</h2>",
        _table(
            [
                [f"<span class='sev {f.severity}'>{f.severity}</span>", _esc(f.message)]
                for f in rep.verdict
            ],
            ["severity", "finding"],
        ),
    ]
    # class balance
    total = max(1, sum(rep.class_counts.values()))
    parts.append("<h2>Class balance</h2>")
    parts.append(
        _table(
            [
                [_esc(c), n, f"<span class=bar style='width:{int(300 * n / total)}px'></span>"]
                for c, n in rep.class_counts.items()
            ],
            ["class", "images", ""],
        )
    )
    # per-class properties
    parts.append("<h2>Properties per class</h2>")
    rows = []
    for c, s in rep.class_stats.items():
        hist = s["mean_intensity_hist"]
        top = max(1, max(hist))
        spark = "".join(
            f"<span class=bar style='width:6px;height:{2 + int(20 * v / top)}px;"
            "vertical-align:bottom;margin-right:1px'></span>"
            for v in hist
        )
        rows.append(
            [
                _esc(c),
                s["count"],
                _fmt_desc(s["width"]),
                _fmt_desc(s["height"]),
                _esc(s["format"]),
                _esc(s["mode"]),
                _esc(s["bit_depth"]),
                _fmt_desc(s["file_size"]),
                _fmt_desc(s["mean_intensity"]) + "<br>" + spark,
                _esc(s["exposure"]),
                _fmt_desc(s["border_fraction"]),
                s["name_mismatch"],
            ]
        )
    parts.append(
        _table(
            rows,
            [
                "class",
                "n",
                "width",
                "height",
                "format",
                "mode",
                "bits",
                "bytes",
                "mean intensity (histogram 0..1)",
                "exposure",
                "border fraction",
                "name/content mismatch",
            ],
        )
    )
    # shortcuts
    parts.append("<h2>Shortcuts</h2>")
    if rep.associations:
        parts.append(
            _table(
                [
                    [
                        _esc(a.prop),
                        f"{a.cramers_v:.2f}",
                        f"{a.p_value:.2g}",
                        f"<span class='sev {a.level}'>{a.level}</span>",
                        _esc(a.table),
                    ]
                    for a in rep.associations
                ],
                ["property", "Cramér's V", "p", "level", "class -> value counts"],
            )
        )
    p = rep.probe
    if p is not None:
        if p.balanced_accuracy is None:
            parts.append(f"<p>Probe skipped: {_esc(p.skipped)}</p>")
        else:
            parts.append(
                f"<p>Probe (random forest on {len(p.features)} non-anatomical features, "
                f"{p.n_folds}-fold, {p.n_rows} images): balanced accuracy "
                f"<b>{p.balanced_accuracy:.3f}</b>, chance {p.chance:.3f}, label-shuffled "
                f"{_esc(p.shuffled)} (95th pct {p.shuffled_p95:.3f}), z = {p.z}. "
                f"<span class='sev {p.level}'>{p.level}</span>. Carriers: "
                f"{_esc(', '.join(p.carriers) or 'none')}.</p>"
            )
            parts.append(
                _table(
                    [
                        [_esc(f), f"{p.single_family.get(f, 0):.3f}", f"{v:+.3f}"]
                        for f, v in sorted(p.importance.items(), key=lambda t: -t[1])
                    ],
                    ["property family", "balanced accuracy alone", "permutation importance"],
                )
            )
    # duplicates
    dup = d["duplicates"]
    parts.append("<h2>Duplicates</h2>")
    parts.append(
        _table([[_esc(k), v] for k, v in dup.items() if not isinstance(v, list)], ["", "count"])
    )
    order = sorted(
        rep.groups,
        key=lambda g: (not g.cross_folder, not g.cross_split, not g.cross_class, -len(g.members)),
    )
    rows = []
    for n, g in enumerate(order[:_MAX_LISTED]):
        flags = [
            f
            for f, on in (
                ("across folders", g.cross_folder),
                ("across splits", g.cross_split),
                ("conflicting labels", g.cross_class),
            )
            if on
        ] or ["within one class"]
        thumbs = ""
        if n < _MAX_THUMB_GROUPS:
            for m in g.members[:_MAX_THUMBS]:
                b64 = _thumb_b64(m)
                if b64:
                    thumbs += (
                        f"<img alt='' title='{_esc(m['path'])}' src='data:image/png;base64,{b64}'>"
                    )
        members = "<br>".join(
            f"<span class=mono>{_esc(m['key'])}</span> ({_esc(m['label'])}"
            + (f", {_esc(m['split'])}" if m["split"] else "")
            + (", other folder" if m["folder"] == "against" else "")
            + ")"
            for m in g.members[:20]
        )
        if len(g.members) > 20:
            members += f"<br>... {len(g.members) - 20} more"
        for c in g.conflicts[:5]:
            members += (
                f"<br><b>labels differ</b>: {_esc(c['a'])} ({_esc(c['label_a'])}) vs "
                f"{_esc(c['b'])} ({_esc(c['label_b'])}), {c['kind']}, distance {c['distance']}"
            )
        rows.append(
            [g.id, g.kind, _esc(", ".join(flags)), f"<div class=thumbs>{thumbs}</div>{members}"]
        )
    parts.append(_table(rows, ["group", "kind", "class / split", "members"]))
    if len(order) > _MAX_LISTED:
        parts.append(f"<p>... {len(order) - _MAX_LISTED} more groups in the JSON report.</p>")
    # leakage
    if rep.leakage is not None:
        parts.append("<h2>Split leakage</h2>")
        parts.append(f"<p>{_esc(rep.leakage.message)}</p>")
    if rep.folder_leakage is not None:
        parts.append("<h2>Folder leakage</h2>")
        parts.append(f"<p>{_esc(rep.folder_leakage)}</p>")
    # problems
    parts.append("<h2>Unreadable and unsupported files</h2>")
    if rep.problems:
        parts.append(
            _table(
                [
                    [
                        _esc(x["kind"]),
                        f"<span class=mono>{_esc(x['path'])}</span>",
                        _esc(x["reason"]),
                    ]
                    for x in rep.problems[:_MAX_LISTED]
                ],
                ["kind", "file", "reason"],
            )
        )
    else:
        parts.append("<p>none</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_audit(report: AuditReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``audit.html`` (self-contained: inline CSS and thumbnails) and ``audit.json``."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        json_path = out / "audit.json"
        html_path = out / "audit.html"
        json_path.write_text(json.dumps(report.to_dict(), indent=1), encoding="utf-8")
        html_path.write_text(_html(report), encoding="utf-8")
    except OSError as exc:
        raise AuditError(
            f"cannot write the audit report to {out}: {exc.strerror or exc}. Choose a writable "
            "output folder."
        ) from exc
    return html_path, json_path
