"""Decode and preprocess each image once; later epochs (and resumed runs) read a memory map.

The cache is a float32 ``N x C x H x W`` ``.npy`` file keyed by the preprocessing fingerprint and
the files' sizes and modification times, so a changed image or pipeline gives a new cache, and
several DDP processes or loader workers share one copy through the OS page cache. Images that
cannot be read are recorded with their path and reason instead of stopping the run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medlens.common import json_safe
from medlens.data.manifest import Sample
from medlens.errors import MedlensError
from medlens.preprocess import Pipeline


@dataclass
class ImageCache:
    array: np.ndarray  # N x C x H x W float32 (memory-mapped)
    ok: np.ndarray  # N bool: False where the image could not be read
    errors: dict[int, str]  # row -> "path: reason"
    infos: list[dict]

    def __len__(self) -> int:
        return len(self.ok)


def _cache_key(samples: list[Sample], pipeline: Pipeline) -> str:
    h = hashlib.sha256(pipeline.fingerprint().encode())
    for s in samples:
        try:
            st = os.stat(s.path)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{s.uid}|{stamp}\n".encode())
    return h.hexdigest()[:20]


def build_cache(
    samples: list[Sample], pipeline: Pipeline, cache_dir: Path | None, progress: bool = True
) -> ImageCache:
    """Preprocess every sample once (or reuse a cache built earlier for the same inputs)."""
    c, (h, w) = pipeline.output_channels, pipeline.output_size
    shape = (len(samples), c, h, w)
    meta_path = data_path = None
    if cache_dir is not None:
        key = _cache_key(samples, pipeline)
        cache_dir.mkdir(parents=True, exist_ok=True)
        data_path, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
        if data_path.is_file() and meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            arr = np.load(data_path, mmap_mode="r")
            if tuple(arr.shape) == shape:
                errors = {int(k): v for k, v in meta["errors"].items()}
                ok = np.array([i not in errors for i in range(len(samples))])
                return ImageCache(arr, ok, errors, meta["infos"])
    tmp = None
    if data_path is not None:
        tmp = data_path.with_suffix(f".{os.getpid()}.tmp.npy")
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
    else:
        arr = np.zeros(shape, dtype=np.float32)
    errors: dict[int, str] = {}
    infos: list[dict] = []
    iterator = _progress(samples, "Decoding and preprocessing", progress)
    for i, s in enumerate(iterator):
        try:
            result = pipeline(s.load().array)
        except MedlensError as exc:
            errors[i] = str(exc)
            infos.append({})
            continue
        arr[i] = result.image
        infos.append(json_safe(result.info))
    if tmp is not None and data_path is not None and meta_path is not None:
        arr.flush()
        del arr
        os.replace(tmp, data_path)
        meta_path.write_text(json.dumps({"errors": errors, "infos": infos}))
        arr = np.load(data_path, mmap_mode="r")
    ok = np.array([i not in errors for i in range(len(samples))])
    return ImageCache(arr, ok, errors, infos)


def _progress(items: list, label: str, enabled: bool):
    if not enabled:
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=label, transient=True)
