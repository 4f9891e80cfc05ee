"""What every reader shares: the loaded-image record, file checks, and the ``decoded`` figures.

The ``decoded`` figures exist because every reader must end in a [0, 1] array a model can take,
and the conversions that make it so (windows, min-max, percentiles) turn NaN into 0 and a
constant image into zeros. An input check that only saw the converted array could not tell an
all-NaN DICOM from a black film. So each reader measures the pixel data *as decoded* - in the
file's own units, before any mapping to [0, 1] - and the record carries those figures beside the
safe array.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medlens.common import rescale_to_unit
from medlens.data.io.formats import SNIFF_BYTES, file_suffix
from medlens.errors import ImageReadError

__all__ = ["LoadedImage", "decoded_stats"]

# Values per block when the standard deviation of a large image is summed (bounded memory).
_STD_BLOCK = 1 << 20


@dataclass(frozen=True)
class LoadedImage:
    """One decoded 2-D image, scaled to [0, 1].

    ``array`` is float32 ``H x W`` (grey) or ``H x W x 3`` (RGB), finite, in [0, 1];
    ``source_format`` what the content turned out to be (``"png"``, ``"jpeg"``, ``"dicom"``,
    ``"nifti"``, ``"npz"``...), whatever the file name says; ``mode`` the original colour mode
    or photometric interpretation; ``bit_depth`` the bits per stored sample; ``meta`` small
    JSON-serialisable facts (original shape, window used, slice index...), never patient
    identifiers.

    ``decoded`` describes the pixel data before any scaling (see :func:`decoded_stats`):
    ``finite_fraction`` (0..1), ``min``, ``max``, ``std`` over the finite values (``None`` when
    none is finite), ``height``, ``width``, ``channels``. It is what an input check must look at:
    the [0, 1] ``array`` has already hidden NaN, infinities and a constant image.
    """

    array: np.ndarray
    source_format: str
    mode: str
    bit_depth: int
    meta: dict[str, Any] = field(default_factory=dict)
    decoded: dict[str, Any] = field(default_factory=dict)


def _std(values: np.ndarray, mean: float) -> float:
    """Population standard deviation in blocks (bounded memory for a 7000 x 7000 film).

    Integer samples are exact in float32 and are summed in float32 blocks (fast, relative error
    far below anything a check would threshold on); floats are summed in float64.
    """
    flat = values.reshape(-1)
    work = np.float32 if flat.dtype.kind in "iub" else np.float64
    total = 0.0
    for start in range(0, flat.size, _STD_BLOCK):
        block = flat[start : start + _STD_BLOCK].astype(work)
        block -= work(mean)
        total += float(np.dot(block, block))
    return float(np.sqrt(total / flat.size))


def decoded_stats(values: np.ndarray) -> dict[str, Any]:
    """Figures of decoded pixel data (``H x W`` or ``H x W x C``), before any scaling.

    ``finite_fraction``: share of finite samples (1.0 for integer data); ``min``, ``max``,
    ``std``: over the finite samples, as Python floats, ``None`` when none is finite;
    ``height``, ``width``, ``channels``: the layout of the decoded data.
    """
    a = np.asarray(values)
    if a.dtype == np.bool_:
        a = a.view(np.uint8)
    height = int(a.shape[0]) if a.ndim >= 1 else 1
    width = int(a.shape[1]) if a.ndim >= 2 else 1
    channels = int(a.shape[2]) if a.ndim == 3 else 1
    n = int(a.size)
    if a.dtype.kind in "fc":
        finite = np.isfinite(a)
        n_finite = int(np.count_nonzero(finite))
        vals = a if n_finite == n else a[finite]
    else:
        n_finite, vals = n, a
    out: dict[str, Any] = {
        "finite_fraction": float(n_finite / n) if n else 0.0,
        "min": None,
        "max": None,
        "std": None,
        "height": height,
        "width": width,
        "channels": channels,
    }
    if n_finite:
        mean = float(np.sum(vals, dtype=np.float64)) / n_finite
        out["min"], out["max"] = float(vals.min()), float(vals.max())
        out["std"] = _std(vals, mean) if np.isfinite(mean) else float("inf")
    return out


def safe_unit(array: np.ndarray) -> np.ndarray:
    """The last guard of every reader: float32, C-contiguous, NaN -> 0, +inf -> 1, in [0, 1].

    The conversions already keep finite inputs in range; this only makes sure non-finite
    decoded data (recorded in ``decoded``) can never reach a model as NaN.
    """
    out = np.asarray(array, dtype=np.float32)
    if not np.isfinite(out).all():
        out = np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0)
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def minmax_unit(values: np.ndarray) -> np.ndarray:
    """Scale by the min and max of the finite values (non-finite -> 0; constant -> zeros)."""
    a = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, dtype=np.float32)
    out = rescale_to_unit(a, float(a[finite].min()), float(a[finite].max()))
    if not finite.all():
        out[~finite] = 0.0
    return out


def float_unit(values: np.ndarray) -> np.ndarray:
    """Floats kept when already inside [0, 1], otherwise min-max scaled."""
    out = np.asarray(values, dtype=np.float32)
    if np.isfinite(out).all() and (out.size == 0 or (out.min() >= 0.0 and out.max() <= 1.0)):
        return np.ascontiguousarray(out)
    return minmax_unit(out)


def check_file(path: Path) -> int:
    """Raise ImageReadError unless ``path`` is a readable, non-empty regular file; return size."""
    try:
        if not path.exists():
            raise ImageReadError(path, "file not found")
        if path.is_dir():
            raise ImageReadError(path, "is a directory, not a file")
        size = path.stat().st_size
    except OSError as exc:
        raise ImageReadError(path, f"cannot access file: {exc.strerror or exc}") from exc
    if size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    return size


def read_head(path: Path, n: int = SNIFF_BYTES) -> bytes:
    try:
        with path.open("rb") as fh:
            return fh.read(n)
    except PermissionError as exc:
        raise ImageReadError(path, "permission denied") from exc
    except OSError as exc:
        raise ImageReadError(path, f"cannot open file: {exc.strerror or exc}") from exc


def describe_unknown(head: bytes) -> str:
    sample = head[:16]
    try:
        text = sample.decode("ascii")
    except UnicodeDecodeError:
        text = None
    if text is not None and text.isprintable():
        return f"it starts with text {text[:12]!r}"
    return f"it starts with bytes {sample[:8].hex(' ')}"


def not_image(path: Path, head: bytes) -> ImageReadError:
    return ImageReadError(
        path,
        "not an image file: content is not PNG, JPEG, BMP, TIFF, DICOM or NIfTI "
        f"({describe_unknown(head)})",
    )


def check_index(path: Path, index: int | None, count: int, what: str) -> int:
    """Validate a 0-based frame/slice index; None means 0 for single frames."""
    if index is None:
        return 0
    if isinstance(index, bool) or not isinstance(index, int | np.integer):
        raise ImageReadError(path, f"slice_index must be an integer, got {index!r}")
    if not 0 <= int(index) < count:
        raise ImageReadError(
            path, f"slice_index {index} out of range: the file has {count} {what} (0..{count - 1})"
        )
    return int(index)


def suffix_matches(path: Path, source_format: str) -> bool:
    """Whether the file name's ending is one the detected format uses (DICOM may have none)."""
    from medlens.data.io.formats import FORMATS

    fmt = FORMATS.get(source_format)
    if fmt is None:
        return True
    allowed = set(fmt.suffixes) | ({""} if source_format == "dicom" else set())
    return file_suffix(path) in allowed


def unexpected(path: Path, exc: Exception) -> ImageReadError:
    return ImageReadError(path, f"unexpected {type(exc).__name__} while decoding: {exc}")
