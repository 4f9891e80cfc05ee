"""PNG, JPEG, BMP, TIFF, GIF (and whatever else Pillow identifies), decoded one documented way.

Every image is fully decoded (``Image.load()``; truncated files are *not* tolerated), the EXIF
orientation is applied (``ImageOps.exif_transpose``, for any format that carries it - JPEG in
practice), then one conversion by mode:

* ``1`` (1-bit) and ``L`` -> grey; 1-bit is 0/1, ``L`` is divided by 255.
* ``I;16`` / ``I;16B`` / ``I;16L`` / ``I;16N`` -> grey divided by 65535 (``2**16 - 1``).
  ``I`` (32-bit int) -> grey divided by ``2**bits - 1`` where ``bits`` is the depth the file
  declares (PNG IHDR, TIFF BitsPerSample), else 16 when every value fits in 0..65535, else 32.
  Signed data (``I;16S``, TIFF SampleFormat 2) is offset by ``2**(bits-1)`` first.
* ``F`` (32-bit float) -> grey, kept as is when already inside [0, 1], otherwise min-max scaled.
* ``LA`` / ``La`` -> grey, alpha dropped.
* ``P`` (palette) -> RGB through its palette (a palette with transparency is composited over
  black, like RGBA), then grey if all three channels are equal everywhere.
* ``RGBA`` / ``RGBa`` / ``PA`` -> RGB composited over black (``rgb * alpha``).
* ``CMYK`` / ``YCbCr`` / ``LAB`` / ``HSV`` / ``RGBX`` -> RGB via Pillow's ``convert("RGB")``.
* ``RGB`` -> RGB divided by 255. An RGB file whose three channels are identical is still
  returned as RGB: the caller decides how many channels it wants.

Multi-page files (TIFF, GIF) give page ``slice_index`` (default: the first page). ``bit_depth``
describes the file (PNG IHDR, TIFF BitsPerSample, else the mode's depth); the scaling follows the
decoded mode (Pillow decodes 16-bit-per-channel RGB PNGs to 8-bit RGB, for example).

``decoded`` is measured on the samples in the output's layout before scaling: alpha dropped,
palettes and other colour spaces resolved to RGB (uncomposited), 16/32-bit and float values as
stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medlens.common import rescale_to_unit, to_unit_range
from medlens.data.io.base import (
    LoadedImage,
    check_index,
    decoded_stats,
    float_unit,
    safe_unit,
    suffix_matches,
)
from medlens.data.io.formats import FORMATS, detect_format
from medlens.errors import ImageReadError

__all__ = ["NotPillow", "pil_image", "pil_mask"]

_PIL_FORMAT_NAMES = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "BMP": "bmp", "DIB": "bmp"}

# Bits per sample implied by a Pillow mode when the file does not say.
_MODE_BITS = {"1": 1, "F": 32, "I": 32}
_OTHER_COLOUR = ("CMYK", "YCbCr", "LAB", "HSV", "RGBX")


class NotPillow(Exception):
    """Internal signal: Pillow does not recognise the content."""


@dataclass
class _PilFacts:
    fmt: str
    declared_bits: int | None
    transparency: bool
    signed: bool
    meta: dict[str, Any]


def _declared_bits(img: Image.Image, head: bytes) -> int | None:
    """Bits per sample as the file declares them (PNG IHDR, TIFF BitsPerSample)."""
    if img.format == "PNG" and len(head) >= 25 and head[12:16] == b"IHDR":
        return int(head[24])
    if img.format == "TIFF":
        tags = getattr(img, "tag_v2", None)
        if tags is not None:
            bits = tags.get(258)
            if isinstance(bits, tuple | list) and bits:
                bits = bits[0]
            if isinstance(bits, int) and bits > 0:
                return bits
    if img.format == "JPEG":
        bits = getattr(img, "bits", None)
        if isinstance(bits, int) and bits > 0:
            return bits
    return None


def _mode_bits(mode: str) -> int:
    if mode.startswith("I;16"):
        return 16
    return _MODE_BITS.get(mode, 8)


def _tiff_signed(img: Image.Image) -> bool:
    tags = getattr(img, "tag_v2", None)
    if tags is None:
        return False
    fmt = tags.get(339)
    if isinstance(fmt, tuple | list) and fmt:
        fmt = fmt[0]
    return fmt == 2


def _composite_over_black(rgba: Image.Image) -> np.ndarray:
    arr = to_unit_range(np.asarray(rgba.convert("RGBA")))
    return np.ascontiguousarray(arr[..., :3] * arr[..., 3:4])


def _pil_to_array(img: Image.Image, facts: _PilFacts) -> tuple[np.ndarray, int, np.ndarray]:
    """The documented mode conversion: (float32 array in [0, 1], bit depth, decoded samples)."""
    mode = img.mode
    declared_bits = facts.declared_bits
    bits = declared_bits or _mode_bits(mode)
    if mode == "1":
        raw = np.asarray(img)
        return to_unit_range(raw), 1, raw
    if mode == "L":
        raw = np.asarray(img)
        return to_unit_range(raw), bits, raw
    if mode in ("LA", "La"):
        raw = np.asarray(img.getchannel(0))
        return to_unit_range(raw), bits, raw
    if mode.startswith("I;16"):
        raw = np.asarray(img)
        return to_unit_range(raw), 16, raw
    if mode == "I":
        raw = np.asarray(img)
        signed = facts.signed
        if declared_bits is None:
            fits16 = raw.size == 0 or (raw.min() >= 0 and raw.max() <= 65535)
            bits = 16 if fits16 and not signed else 32
        else:
            bits = declared_bits
        lo = -(2.0 ** (bits - 1)) if signed else 0.0
        return rescale_to_unit(raw, lo, lo + 2.0**bits - 1.0), bits, raw
    if mode == "F":
        raw = np.asarray(img)
        return float_unit(raw), 32, raw
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or facts.transparency
        colour = np.asarray(img.convert("RGB"))
        rgb = _composite_over_black(img) if has_alpha else to_unit_range(colour)
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
            return np.ascontiguousarray(rgb[..., 0]), bits, colour[..., 0]
        return rgb, bits, colour
    if mode in ("RGBA", "RGBa"):
        return _composite_over_black(img), bits, np.asarray(img)[..., :3]
    if mode == "RGB":
        raw = np.asarray(img)
        return to_unit_range(raw), bits, raw
    # CMYK, YCbCr, LAB, HSV, RGBX and anything else Pillow can turn into RGB.
    raw = np.asarray(img.convert("RGB"))
    return to_unit_range(raw), bits, raw


def _open_pil(path: Path, head: bytes, slice_index: int | None) -> tuple[Image.Image, _PilFacts]:
    """Open, select the frame, fully decode and EXIF-orient; raise NotPillow if unrecognised."""
    detected = detect_format(head)
    magic = FORMATS[detected].label if detected in FORMATS else None
    fmt: str | None = None
    try:
        with Image.open(path) as img:
            fmt = img.format or "unknown"
            n_frames = int(getattr(img, "n_frames", 1) or 1)
            frame = check_index(path, slice_index, n_frames, "frames")
            if frame:
                img.seek(frame)
            img.load()
            stored_w, stored_h = img.size
            orientation = img.getexif().get(0x0112)
            facts = _PilFacts(
                fmt=fmt,
                declared_bits=_declared_bits(img, head),
                transparency="transparency" in img.info,
                signed=_tiff_signed(img),
                meta={"original_shape": [int(stored_h), int(stored_w)]},
            )
            oriented = ImageOps.exif_transpose(img)
    except ImageReadError:
        raise
    except UnidentifiedImageError as exc:
        if magic is None:
            raise NotPillow() from exc
        raise ImageReadError(
            path, f"truncated or corrupt {magic} data: Pillow cannot identify it"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"image too large to decode safely: {exc}") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... on bad data
        if isinstance(exc, MemoryError):
            raise
        name = magic or fmt or "image"
        raise ImageReadError(path, f"truncated or corrupt {name} data: {exc}") from exc
    if n_frames > 1:
        facts.meta["frames"] = n_frames
        facts.meta["frame_index"] = frame
    if isinstance(orientation, int) and orientation not in (0, 1):
        facts.meta["exif_orientation"] = orientation
    return oriented, facts


def pil_image(path: Path, head: bytes, slice_index: int | None) -> LoadedImage:
    """Read one page of anything Pillow decodes (raises NotPillow when it does not know it)."""
    img, facts = _open_pil(path, head, slice_index)
    source_format = _PIL_FORMAT_NAMES.get(facts.fmt, facts.fmt.lower())
    mode = img.mode
    try:
        array, bits, raw = _pil_to_array(img, facts)
        decoded = decoded_stats(raw)
    except Exception as exc:
        if isinstance(exc, MemoryError):
            raise
        raise ImageReadError(path, f"cannot convert {source_format} mode {mode}: {exc}") from exc
    meta = dict(facts.meta)
    meta["suffix_matches_content"] = suffix_matches(path, source_format)
    return LoadedImage(
        array=safe_unit(array),
        source_format=source_format,
        mode=mode,
        bit_depth=int(bits),
        meta=meta,
        decoded=decoded,
    )


def pil_mask(path: Path, head: bytes, slice_index: int | None) -> np.ndarray:
    """Any nonzero stored value is lesion; pixels with alpha 0 are background."""
    img, _ = _open_pil(path, head, slice_index)
    mode = img.mode
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        arr = np.asarray(img)
        colour = arr[..., :-1] if mode != "PA" else arr[..., :1]
        return np.ascontiguousarray((colour != 0).any(axis=-1) & (arr[..., -1] != 0))
    if mode in _OTHER_COLOUR:
        img = img.convert("RGB")
    arr = np.asarray(img)
    if arr.ndim == 3:
        return np.ascontiguousarray((arr != 0).any(axis=-1))
    return np.ascontiguousarray(arr != 0)
