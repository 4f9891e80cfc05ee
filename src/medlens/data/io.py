"""Read medical images, masks and volumes into one predictable in-memory form.

Why this module exists
----------------------
Users hand medlens folders of real, uncurated files: PNGs saved as ``.jpg``, 16-bit X-rays,
palette masks, DICOM with rescale and window tags, NIfTI volumes, MedMNIST ``.npz`` archives.
Everything downstream (datasets, training, calibration, explanations) needs the same thing from
each of them: a float32 array scaled to [0, 1] with a known layout, plus a few facts about where
it came from. Every read goes through here so that the conversion is decided once, is written
down, and a bad file ends in an :class:`~medlens.errors.ImageReadError` that names the file and
says why, never in a stray PIL/pydicom/nibabel exception or a silently wrong array.

The format is detected from the file's **content** (magic bytes, Pillow's own identification,
the DICOM preamble ``DICM`` at byte 128 or a force-read of preamble-less DICOM, the NIfTI magic
inside or outside gzip), never from its name. The name only feeds :func:`is_supported`, which
callers use to pick candidate files from a folder.

``pydicom`` and ``nibabel`` are imported lazily inside the readers that need them, so
``import medlens.data.io`` stays cheap and works without them.

Output form
-----------
:class:`LoadedImage.array` is float32, ``H x W`` (grey) or ``H x W x 3`` (RGB), values in [0, 1].
``mode`` keeps the original colour mode / photometric interpretation and ``bit_depth`` the bits per
sample stored in the file; ``meta`` holds small JSON-serialisable facts and never a patient
identifier (no DICOM patient/study attributes, no EXIF text).

Pillow formats (PNG, JPEG, BMP, TIFF; other formats Pillow identifies are read the same way)
-------------------------------------------------------------------------------------------
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

DICOM
-----
Pixel data decoded by pydicom (frame ``slice_index`` of a multi-frame object, default the middle
frame). Grey images: the Modality LUT (``RescaleSlope`` / ``RescaleIntercept`` or a Modality LUT
Sequence, via ``pydicom.pixels.apply_modality_lut``; from the functional groups for enhanced
multi-frame objects) is applied, then the VOI transform: a VOI LUT Sequence if present (via
``pydicom.pixels.apply_voi``, output divided by the range its entries use), otherwise the first
``WindowCenter`` / ``WindowWidth`` pair with the standard's LINEAR, LINEAR_EXACT or SIGMOID
function mapped straight to [0, 1]; with neither, min-max scaling of the frame. ``MONOCHROME1``
is inverted after scaling (``1 - x``) so that high = bright. RGB / YBR colour data come back as
RGB divided by ``2**BitsStored - 1``; PALETTE COLOR through its colour LUT. A file without pixel
data, or compressed with a transfer syntax no installed decoder handles, is an ImageReadError.

NIfTI
-----
Loaded with nibabel (scaling ``scl_slope`` / ``scl_inter`` applied). :func:`read_image` on a 3-D
volume returns slice ``slice_index`` (default: the middle one) along the third voxel axis - the
acquisition slice axis, which is axial for axial acquisitions (oblique-coronal sacroiliac STIR
stacks, for instance, are sliced coronally) - with no reorientation by the affine::

    image = volume[:, :, k].T        # shape (Y, X): rows follow the 2nd voxel axis (j),
                                     # columns the 1st (i)

It is scaled to [0, 1] by the 0.5th and 99.5th percentiles of the *whole* volume (clipped), so
all slices of one volume share one intensity scale. 2-D NIfTI arrays are returned as ``data.T``;
trailing singleton dimensions are dropped; true 4-D data are refused. :func:`read_mask` on a
NIfTI mask uses exactly the same slicing and transpose, so an image and its mask read with the
same ``slice_index`` stay aligned pixel for pixel. :func:`read_volume` returns the volume in
voxel order (``X x Y x Z``) with its affine.

Masks
-----
:func:`read_mask` returns ``bool`` ``H x W``; any nonzero stored value is lesion: grey values,
palette *indices* (label maps), any colour channel (pixels with alpha 0 are background), NIfTI
voxels of the slice, raw DICOM pixel values. JPEG masks pick up compression noise - store masks
losslessly. ``shape`` resizes with nearest neighbour.

npz (MedMNIST)
--------------
:func:`read_npz_image` takes image ``index`` of array ``key`` (``N x H x W`` or
``N x H x W x 3``; uint8 divided by 255, uint16 by 65535, bool as 0/1, floats kept when inside
[0, 1] else min-max scaled).
"""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medlens.errors import ImageReadError

__all__ = [
    "SUPPORTED_SUFFIXES",
    "LoadedImage",
    "is_supported",
    "read_image",
    "read_mask",
    "read_npz_image",
    "read_volume",
]

SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".nii", ".nii.gz"}
)

# Bytes read to recognise a format: DICOM preamble (132), NIfTI-1 (348), NIfTI-2 (540).
_SNIFF_BYTES = 544

_PIL_FORMAT_NAMES = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "BMP": "bmp", "DIB": "bmp"}

_MAGIC_NAMES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"GIF8", "GIF"),
)

# Bits per sample implied by a Pillow mode when the file does not say.
_MODE_BITS = {"1": 1, "F": 32, "I": 32}


@dataclass(frozen=True)
class LoadedImage:
    """One decoded 2-D image, scaled to [0, 1].

    ``array`` is float32 ``H x W`` (grey) or ``H x W x 3`` (RGB); ``source_format`` is what the
    content turned out to be (``"png"``, ``"jpeg"``, ``"dicom"``, ``"nifti"``, ``"npz"``...),
    whatever the file name says; ``mode`` the original colour mode or photometric
    interpretation; ``bit_depth`` the bits per stored sample; ``meta`` small JSON-serialisable
    facts (original shape, window used, slice index...), never patient identifiers.
    """

    array: np.ndarray
    source_format: str
    mode: str
    bit_depth: int
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Names and content detection
# --------------------------------------------------------------------------------------------


def _suffix(path: str | Path) -> str:
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def is_supported(path: str | Path) -> bool:
    """True when the file name ends with a suffix in :data:`SUPPORTED_SUFFIXES` (any case).

    This is a cheap filter for listing folders; the readers themselves trust content, not names.
    """
    return _suffix(path) in SUPPORTED_SUFFIXES


def _check_file(path: Path) -> int:
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


def _read_head(path: Path, n: int = _SNIFF_BYTES) -> bytes:
    try:
        with path.open("rb") as fh:
            return fh.read(n)
    except PermissionError as exc:
        raise ImageReadError(path, "permission denied") from exc
    except OSError as exc:
        raise ImageReadError(path, f"cannot open file: {exc.strerror or exc}") from exc


def _nifti_kind(header: bytes) -> str | None:
    """Return nifti1 / nifti2 for a single-file NIfTI header, pair for .hdr/.img, else None."""
    if len(header) >= 348 and header[344:348] == b"n+1\x00":
        return "nifti1"
    if len(header) >= 8 and header[4:8] == b"n+2\x00":
        return "nifti2"
    if (len(header) >= 348 and header[344:348] == b"ni1\x00") or header[4:8] == b"ni2\x00":
        return "pair"
    return None


def _looks_like_bare_dicom(head: bytes) -> bool:
    """Heuristic for DICOM without the 128-byte preamble: starts with a group 0002/0008 tag."""
    if len(head) < 8:
        return False
    group_le = int.from_bytes(head[0:2], "little")
    group_be = int.from_bytes(head[0:2], "big")
    return group_le in (0x0002, 0x0008) or group_be == 0x0008


def _sniff(path: Path) -> tuple[str, bytes]:
    """Classify a file by content.

    Returns ``(kind, head)`` where kind is "dicom", "nifti-gz", "nifti", "npz", "npy" or
    "other" (left to Pillow, then to the preamble-less DICOM heuristic); ``head`` is the first
    bytes (decompressed for gzip).
    """
    _check_file(path)
    head = _read_head(path)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom", head
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as fh:
                inner = fh.read(_SNIFF_BYTES)
        except (OSError, EOFError, zlib.error) as exc:
            raise ImageReadError(path, f"truncated or corrupt gzip data: {exc}") from exc
        kind = _nifti_kind(inner)
        if kind in ("nifti1", "nifti2"):
            return "nifti-gz", inner
        raise ImageReadError(
            path, "gzip-compressed file that is not NIfTI (only .nii.gz may be compressed)"
        )
    kind = _nifti_kind(head)
    if kind in ("nifti1", "nifti2"):
        return "nifti", head
    if kind == "pair":
        raise ImageReadError(
            path, "NIfTI/Analyze header of a .hdr/.img pair; convert it to a single .nii file"
        )
    if head[:4] == b"PK\x03\x04":
        return "npz", head
    if head[:6] == b"\x93NUMPY":
        return "npy", head
    return "other", head


def _magic_name(head: bytes) -> str | None:
    for magic, name in _MAGIC_NAMES:
        if head.startswith(magic):
            return name
    return None


def _describe_unknown(head: bytes) -> str:
    sample = head[:16]
    try:
        text = sample.decode("ascii")
    except UnicodeDecodeError:
        text = None
    if text is not None and text.isprintable():
        return f"it starts with text {text[:12]!r}"
    return f"it starts with bytes {sample[:8].hex(' ')}"


def _not_image(path: Path, head: bytes) -> ImageReadError:
    return ImageReadError(
        path,
        "not an image file: content is not PNG, JPEG, BMP, TIFF, DICOM or NIfTI "
        f"({_describe_unknown(head)})",
    )


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _minmax(arr: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by min and max of the finite values; constant input gives zeros."""
    out = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(out)
    if not finite.any():
        return np.zeros(out.shape, dtype=np.float32)
    lo = float(out[finite].min())
    hi = float(out[finite].max())
    if hi <= lo:
        return np.zeros(out.shape, dtype=np.float32)
    scaled = (out - lo) / (hi - lo)
    scaled[~finite] = 0.0
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def _float01(arr: np.ndarray) -> np.ndarray:
    """Floats kept when already inside [0, 1], otherwise min-max scaled."""
    out = np.asarray(arr, dtype=np.float32)
    finite = np.isfinite(out)
    if finite.all() and (out.size == 0 or (out.min() >= 0.0 and out.max() <= 1.0)):
        return np.ascontiguousarray(out)
    return _minmax(out)


def _check_index(path: Path, index: int | None, count: int, what: str) -> int:
    """Validate a 0-based frame/slice index; None means 0 for single frames."""
    if index is None:
        return 0
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise ImageReadError(path, f"slice_index must be an integer, got {index!r}")
    if not 0 <= int(index) < count:
        raise ImageReadError(
            path, f"slice_index {index} out of range: the file has {count} {what} (0..{count - 1})"
        )
    return int(index)


def _resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D array to ``shape`` (rows, cols), pixel centres mapped."""
    rows, cols = int(shape[0]), int(shape[1])
    if rows <= 0 or cols <= 0:
        raise ValueError(f"shape must be two positive integers, got {shape!r}")
    h, w = mask.shape
    if (h, w) == (rows, cols):
        return mask
    ri = np.minimum(((np.arange(rows) + 0.5) * h / rows).astype(np.intp), h - 1)
    ci = np.minimum(((np.arange(cols) + 0.5) * w / cols).astype(np.intp), w - 1)
    return mask[ri[:, None], ci[None, :]]


def _jsonable(value: Any) -> Any:
    """Turn pydicom/numpy scalars into plain Python numbers and strings."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


# --------------------------------------------------------------------------------------------
# Pillow
# --------------------------------------------------------------------------------------------


def _declared_bits(img: Image.Image, head: bytes) -> int | None:
    """Bits per sample as the file declares them (PNG IHDR, TIFF BitsPerSample)."""
    if img.format == "PNG" and len(head) >= 25 and head[12:16] == b"IHDR":
        return int(head[24])
    if img.format == "TIFF":
        tags = getattr(img, "tag_v2", None)
        if tags is not None:
            bits = tags.get(258)
            if isinstance(bits, (tuple, list)) and bits:
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
    if isinstance(fmt, (tuple, list)) and fmt:
        fmt = fmt[0]
    return fmt == 2


def _composite_over_black(rgba: Image.Image) -> np.ndarray:
    arr = np.asarray(rgba.convert("RGBA"), dtype=np.float32) / 255.0
    return np.ascontiguousarray(arr[..., :3] * arr[..., 3:4])


def _pil_to_array(img: Image.Image, facts: _PilFacts) -> tuple[np.ndarray, int]:
    """Apply the documented mode conversion; return (float32 array in [0, 1], bit depth)."""
    mode = img.mode
    declared_bits = facts.declared_bits
    bits = declared_bits or _mode_bits(mode)
    if mode == "1":
        return np.asarray(img, dtype=np.float32), 1
    if mode == "L":
        return np.asarray(img, dtype=np.float32) / 255.0, bits
    if mode in ("LA", "La"):
        return np.asarray(img.getchannel(0), dtype=np.float32) / 255.0, bits
    if mode.startswith("I;16"):
        raw = np.asarray(img).astype(np.float64)
        if mode == "I;16S":
            raw = raw + 32768.0
        return (raw / 65535.0).astype(np.float32), 16
    if mode == "I":
        raw = np.asarray(img).astype(np.float64)
        signed = facts.signed
        if declared_bits is None:
            fits16 = raw.size == 0 or (raw.min() >= 0 and raw.max() <= 65535)
            bits = 16 if fits16 and not signed else 32
        else:
            bits = declared_bits
        if signed:
            raw = raw + 2.0 ** (bits - 1)
        scaled = np.clip(raw / (2.0**bits - 1.0), 0.0, 1.0)
        return scaled.astype(np.float32), bits
    if mode == "F":
        return _float01(np.asarray(img)), 32
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or facts.transparency
        rgb = (
            _composite_over_black(img)
            if has_alpha
            else (np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)
        )
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
            return np.ascontiguousarray(rgb[..., 0]), bits
        return rgb, bits
    if mode in ("RGBA", "RGBa"):
        return _composite_over_black(img), bits
    if mode == "RGB":
        return np.asarray(img, dtype=np.float32) / 255.0, bits
    # CMYK, YCbCr, LAB, HSV, RGBX and anything else Pillow can turn into RGB.
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0, bits


class _NotPillow(Exception):
    """Internal signal: Pillow does not recognise the content."""


@dataclass
class _PilFacts:
    fmt: str
    declared_bits: int | None
    transparency: bool
    signed: bool
    meta: dict[str, Any]


def _open_pil(path: Path, head: bytes, slice_index: int | None) -> tuple[Image.Image, _PilFacts]:
    """Open, select the frame, fully decode and EXIF-orient; raise _NotPillow if unrecognised."""
    magic = _magic_name(head)
    fmt: str | None = None
    try:
        with Image.open(path) as img:
            fmt = img.format or "unknown"
            n_frames = int(getattr(img, "n_frames", 1) or 1)
            frame = _check_index(path, slice_index, n_frames, "frames")
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
            raise _NotPillow() from exc
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


def _read_pil(path: Path, head: bytes, slice_index: int | None) -> LoadedImage:
    img, facts = _open_pil(path, head, slice_index)
    source_format = _PIL_FORMAT_NAMES.get(facts.fmt, facts.fmt.lower())
    mode = img.mode
    try:
        array, bits = _pil_to_array(img, facts)
    except Exception as exc:
        if isinstance(exc, MemoryError):
            raise
        raise ImageReadError(path, f"cannot convert {source_format} mode {mode}: {exc}") from exc
    meta = dict(facts.meta)
    meta["suffix_matches_content"] = _suffix_matches(path, source_format)
    return LoadedImage(
        array=np.ascontiguousarray(array, dtype=np.float32),
        source_format=source_format,
        mode=mode,
        bit_depth=int(bits),
        meta=meta,
    )


def _suffix_matches(path: Path, source_format: str) -> bool:
    expected = {
        "png": {".png"},
        "jpeg": {".jpg", ".jpeg"},
        "bmp": {".bmp"},
        "tiff": {".tif", ".tiff"},
        "dicom": {".dcm", ".dicom", ""},
        "nifti": {".nii", ".nii.gz"},
        "npz": {".npz"},
    }.get(source_format)
    return expected is None or _suffix(path) in expected


def _pil_mask(path: Path, head: bytes, slice_index: int | None) -> np.ndarray:
    img, _ = _open_pil(path, head, slice_index)
    mode = img.mode
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        arr = np.asarray(img)
        colour = arr[..., :-1] if mode != "PA" else arr[..., :1]
        return np.ascontiguousarray((colour != 0).any(axis=-1) & (arr[..., -1] != 0))
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        img = img.convert("RGB")
    arr = np.asarray(img)
    if arr.ndim == 3:
        return np.ascontiguousarray((arr != 0).any(axis=-1))
    return np.ascontiguousarray(arr != 0)


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


def _import_pydicom(path: Path) -> Any:
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - pydicom is a project dependency
        raise ImageReadError(path, "reading DICOM needs pydicom: pip install pydicom") from exc
    return pydicom


class _NotDicom(Exception):
    """Internal signal: a force-read found no DICOM image."""


def _dcmread(path: Path, *, bare: bool) -> Any:
    pydicom = _import_pydicom(path)
    try:
        ds = pydicom.dcmread(str(path), force=bare)
    except Exception as exc:
        if isinstance(exc, MemoryError):
            raise
        raise ImageReadError(path, f"corrupt DICOM file: {exc}") from exc
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if bare and len(ds) < 3:  # a force-read of something that is not DICOM at all
            raise _NotDicom()
        sop = str(ds.get("SOPClassUID", "") and ds.SOPClassUID.name)
        kind = f" ({sop})" if sop else ""
        raise ImageReadError(path, f"DICOM file has no pixel data{kind}")
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        # Preamble-less files often lack file meta; take the encoding pydicom read them with.
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

        implicit, little = getattr(ds, "original_encoding", (True, True))
        if meta is None:
            ds.file_meta = FileMetaDataset()
        if not little:
            ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
        elif implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        else:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _n_frames(ds: Any) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _dicom_frame(path: Path, ds: Any, slice_index: int | None) -> tuple[np.ndarray, int, int]:
    """Decode one frame; return (array, frame index, number of frames)."""
    n = _n_frames(ds)
    if n > 1:
        frame = n // 2 if slice_index is None else _check_index(path, slice_index, n, "frames")
    else:
        frame = _check_index(path, slice_index, 1, "frames")
    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    try:
        try:
            from pydicom.pixels import pixel_array
        except ImportError:  # pydicom < 3
            arr = ds.pixel_array
            arr = arr[frame] if n > 1 else arr
        else:
            arr = pixel_array(ds, index=frame if n > 1 else None)
    except Exception as exc:
        if isinstance(exc, MemoryError):
            raise
        compressed = bool(tsyntax is not None and getattr(tsyntax, "is_compressed", False))
        if compressed:
            detail = " ".join(str(exc).split())
            name = f"{tsyntax.name} ({tsyntax})"
            no_handler = isinstance(exc, NotImplementedError) or any(
                s in detail for s in ("missing dependencies", "not supported", "not support")
            )
            if no_handler:
                raise ImageReadError(
                    path,
                    f"compressed transfer syntax {name} could not be decoded: no installed "
                    "pixel data handler supports it (pip install pylibjpeg pylibjpeg-libjpeg "
                    f"pylibjpeg-openjpeg, or python-gdcm, adds more): {detail}",
                ) from exc
            raise ImageReadError(
                path, f"truncated or corrupt compressed DICOM pixel data ({name}): {detail}"
            ) from exc
        raise ImageReadError(path, f"corrupt DICOM pixel data: {exc}") from exc
    arr = np.asarray(arr)
    if n > 1 and arr.ndim >= 3 and arr.shape[0] == n and int(ds.get("SamplesPerPixel", 1)) == 1:
        arr = arr[frame]  # a decoder that ignored ``index``
    return arr, frame, n


def _group_value(ds: Any, frame: int, seq: str, keyword: str) -> Any:
    """A value from the top level, else the per-frame, else the shared functional groups."""
    if keyword in ds:
        return ds.get(keyword)
    for groups_kw, idx in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = ds.get(groups_kw)
        if groups and idx < len(groups):
            inner = groups[idx].get(seq)
            if inner:
                value = inner[0].get(keyword)
                if value is not None:
                    return value
    return None


def _first_number(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray | None:
    """DICOM VOI windowing (PS3.3 C.11.2.1.2) mapped straight to [0, 1]; None if invalid."""
    if function == "SIGMOID":
        if width <= 0:
            return None
        return (1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))).astype(np.float32)
    if function == "LINEAR_EXACT":
        if width <= 0:
            return None
        return np.clip((x - center) / width + 0.5, 0.0, 1.0).astype(np.float32)
    if width < 1:  # LINEAR (the default)
        return None
    c, w = center - 0.5, width - 1.0
    if w == 0:
        return (x > c).astype(np.float32)
    return np.clip((x - c) / w + 0.5, 0.0, 1.0).astype(np.float32)


def _pixel_functions() -> tuple[Any, Any, Any]:
    """pydicom's (apply_modality_lut, apply_voi, apply_color_lut), from 3.x or 2.x."""
    try:
        from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import (
            apply_color_lut,
            apply_modality_lut,
            apply_voi,
        )
    return apply_modality_lut, apply_voi, apply_color_lut


def _dicom_grey(path: Path, ds: Any, raw: np.ndarray, frame: int, meta: dict) -> np.ndarray:
    apply_modality_lut, apply_voi, _ = _pixel_functions()

    # Modality LUT: rescale slope/intercept or a Modality LUT Sequence.
    if ds.get("ModalityLUTSequence") or ("RescaleSlope" in ds and "RescaleIntercept" in ds):
        values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
        if "RescaleSlope" in ds:
            meta["rescale_slope"] = _first_number(ds.RescaleSlope)
            meta["rescale_intercept"] = _first_number(ds.RescaleIntercept)
        else:
            meta["modality_lut"] = True
    else:
        values = raw.astype(np.float64)
        slope = _first_number(
            _group_value(ds, frame, "PixelValueTransformationSequence", "RescaleSlope")
        )
        intercept = _first_number(
            _group_value(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept")
        )
        if slope is not None or intercept is not None:
            slope = 1.0 if slope is None else slope
            intercept = 0.0 if intercept is None else intercept
            values = values * slope + intercept
            meta["rescale_slope"], meta["rescale_intercept"] = slope, intercept

    out: np.ndarray | None = None
    voi_seq = ds.get("VOILUTSequence")
    if voi_seq and voi_seq[0].get("LUTDescriptor") is not None and "LUTData" in voi_seq[0]:
        try:
            looked_up = np.asarray(apply_voi(np.rint(values).astype(np.int64), ds, 0))
            top = float(looked_up.max()) if looked_up.size else 0.0
            full = 2.0 ** max(1, math.ceil(math.log2(top + 1.0))) - 1.0 if top > 0 else 1.0
            out = (looked_up.astype(np.float64) / full).astype(np.float32)
            meta["voi_lut"] = True
        except Exception as exc:  # fall back to the window when the LUT is unusable
            if isinstance(exc, MemoryError):
                raise
            meta["voi_lut_ignored"] = str(exc)[:200]
    if out is None:
        center = _first_number(_group_value(ds, frame, "FrameVOILUTSequence", "WindowCenter"))
        width = _first_number(_group_value(ds, frame, "FrameVOILUTSequence", "WindowWidth"))
        function = (
            str(_group_value(ds, frame, "FrameVOILUTSequence", "VOILUTFunction") or "LINEAR")
            .strip()
            .upper()
        )
        if center is not None and width is not None:
            out = _window(values, center, width, function)
            if out is not None:
                meta["window_center"], meta["window_width"] = center, width
                meta["voi_lut_function"] = function
            else:
                meta["window_ignored"] = f"invalid width {width} for {function}"
    if out is None:
        out = _minmax(values)
        meta["scaling"] = "min-max"
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        out = 1.0 - out
        meta["inverted"] = True
    return np.ascontiguousarray(out, dtype=np.float32)


def _dicom_colour(ds: Any, raw: np.ndarray, photometric: str, bits: int) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        apply_color_lut = _pixel_functions()[2]
        rgb = np.asarray(apply_color_lut(raw, ds))
        top = float(np.iinfo(rgb.dtype).max) if rgb.dtype.kind in "ui" else 1.0
        return np.clip(rgb.astype(np.float64) / top, 0.0, 1.0).astype(np.float32)
    rgb = raw
    if photometric.startswith("YBR_FULL") and not _pydicom_converts_ybr():
        from pydicom.pixel_data_handlers.util import convert_color_space

        rgb = convert_color_space(raw, photometric, "RGB")
    if rgb.dtype.kind == "f":
        return _float01(rgb)
    return np.clip(rgb.astype(np.float64) / (2.0**bits - 1.0), 0.0, 1.0).astype(np.float32)


def _pydicom_converts_ybr() -> bool:
    import pydicom

    return int(str(pydicom.__version__).split(".")[0]) >= 3


def _dicom_facts(ds: Any, raw: np.ndarray, frame: int, n: int) -> dict[str, Any]:
    # Whitelisted, non-identifying attributes only.
    meta: dict[str, Any] = {
        "photometric_interpretation": str(ds.get("PhotometricInterpretation", "")).strip(),
        "rows": int(ds.get("Rows", raw.shape[0]) or raw.shape[0]),
        "columns": int(ds.get("Columns", raw.shape[1]) or raw.shape[1]),
        "original_shape": [int(raw.shape[0]), int(raw.shape[1])],
    }
    modality = ds.get("Modality")
    if modality:
        meta["modality"] = str(modality)
    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    if tsyntax:
        meta["transfer_syntax"] = str(tsyntax)
    if n > 1:
        meta["frames"] = n
        meta["frame_index"] = frame
    return meta


def _read_dicom(path: Path, slice_index: int | None, *, bare: bool) -> LoadedImage:
    ds = _dcmread(path, bare=bare)
    raw, frame, n = _dicom_frame(path, ds, slice_index)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 0) or raw.dtype.itemsize * 8)
    meta = _dicom_facts(ds, raw, frame, n)
    try:
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        if photometric == "PALETTE COLOR" or samples == 3 or raw.ndim == 3:
            array = _dicom_colour(ds, raw, photometric, bits)
        else:
            array = _dicom_grey(path, ds, raw, frame, meta)
    except ImageReadError:
        raise
    except Exception as exc:
        if isinstance(exc, MemoryError):
            raise
        raise ImageReadError(path, f"cannot apply the DICOM LUTs ({photometric}): {exc}") from exc
    meta = {k: _jsonable(v) if not isinstance(v, list) else v for k, v in meta.items()}
    return LoadedImage(
        array=np.ascontiguousarray(array, dtype=np.float32),
        source_format="dicom",
        mode=photometric,
        bit_depth=bits,
        meta=meta,
    )


# --------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------


def _load_nifti(path: Path, kind: str, header: bytes) -> Any:
    """Return a nibabel image; the content (not the name) decides how it is opened."""
    try:
        import nibabel as nib
    except ImportError as exc:  # pragma: no cover - nibabel is a project dependency
        raise ImageReadError(path, "reading NIfTI needs nibabel: pip install nibabel") from exc
    try:
        if kind == "nifti" and _suffix(path) == ".nii":
            return nib.load(str(path))  # memory-mapped where possible
        data = path.read_bytes()
        if kind == "nifti-gz":
            data = gzip.decompress(data)  # strict: a truncated stream or bad CRC fails here
        cls = nib.Nifti2Image if _nifti_kind(header) == "nifti2" else nib.Nifti1Image
        return cls.from_bytes(data)
    except Exception as exc:
        if isinstance(exc, MemoryError):
            raise
        raise ImageReadError(path, f"truncated or corrupt NIfTI data: {exc}") from exc


def _nifti_data(path: Path, img: Any) -> np.ndarray:
    """Voxel data as float32 with trailing singleton dimensions beyond the 2nd removed."""
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:
        if isinstance(exc, MemoryError):
            raise
        raise ImageReadError(path, f"truncated or corrupt NIfTI data: {exc}") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise ImageReadError(
            path, f"NIfTI array has shape {tuple(data.shape)}; only 2-D and 3-D data are read"
        )
    return data


def _nifti_slice(path: Path, data: np.ndarray, slice_index: int | None) -> tuple[np.ndarray, int]:
    """The documented slicing: ``data[:, :, k].T`` (``data.T`` for 2-D)."""
    if data.ndim == 2:
        _check_index(path, slice_index, 1, "slices")
        return np.ascontiguousarray(data.T), 0
    n = data.shape[2]
    k = n // 2 if slice_index is None else _check_index(path, slice_index, n, "slices")
    return np.ascontiguousarray(data[:, :, k].T), k


def _robust_range(data: np.ndarray) -> tuple[float, float]:
    flat = data.ravel(order="K")
    if flat.size > 4_000_000:  # percentiles on an even stride are plenty for big volumes
        flat = flat[:: flat.size // 4_000_000 + 1]
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return 0.0, 0.0
    lo, hi = (float(v) for v in np.percentile(flat, [0.5, 99.5]))
    if hi <= lo:
        lo, hi = float(flat.min()), float(flat.max())
    return lo, hi


def _read_nifti(path: Path, kind: str, header: bytes, slice_index: int | None) -> LoadedImage:
    img = _load_nifti(path, kind, header)
    data = _nifti_data(path, img)
    lo, hi = _robust_range(data)
    sl, k = _nifti_slice(path, data, slice_index)
    if hi > lo:
        out = np.clip((sl.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)
        out[~np.isfinite(out)] = 0.0
    else:
        out = np.zeros(sl.shape)
    dtype = np.dtype(img.get_data_dtype())
    meta: dict[str, Any] = {
        "volume_shape": [int(s) for s in data.shape],
        "slice_axis": 2,
        "slice_index": int(k),
        "n_slices": int(data.shape[2]) if data.ndim == 3 else 1,
        "percentiles": [0.5, 99.5],
        "intensity_range": [lo, hi],
        "original_shape": [int(sl.shape[0]), int(sl.shape[1])],
        "voxel_size": [float(z) for z in img.header.get_zooms()[: data.ndim]],
        "layout": "volume[:, :, k].T",
    }
    return LoadedImage(
        array=np.ascontiguousarray(out, dtype=np.float32),
        source_format="nifti",
        mode=str(dtype),
        bit_depth=int(dtype.itemsize * 8),
        meta=meta,
    )


# --------------------------------------------------------------------------------------------
# Public readers
# --------------------------------------------------------------------------------------------


def _unexpected(path: Path, exc: Exception) -> ImageReadError:
    return ImageReadError(path, f"unexpected {type(exc).__name__} while decoding: {exc}")


def read_image(path: str | Path, *, slice_index: int | None = None) -> LoadedImage:
    """Read one 2-D image (a frame of a DICOM, a slice of a NIfTI volume) scaled to [0, 1].

    The format is taken from the content. ``slice_index`` picks the DICOM frame / NIfTI slice /
    TIFF page (defaults: middle frame, middle slice, first page); single images accept only
    ``None`` or 0. Every unreadable input raises :class:`~medlens.errors.ImageReadError`.
    """
    p = Path(path)
    try:
        kind, head = _sniff(p)
        if kind == "dicom":
            return _read_dicom(p, slice_index, bare=False)
        if kind in ("nifti", "nifti-gz"):
            return _read_nifti(p, kind, head, slice_index)
        if kind in ("npz", "npy"):
            raise ImageReadError(
                p, f"{kind} array file, not an image; use read_npz_image(path, key, index)"
            )
        try:
            return _read_pil(p, head, slice_index)
        except _NotPillow:
            pass
        if _looks_like_bare_dicom(head):
            try:
                return _read_dicom(p, slice_index, bare=True)
            except _NotDicom:
                pass
        raise _not_image(p, head)
    except ImageReadError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # anything a decoder let through is still a bad file
        raise _unexpected(p, exc) from exc


def read_mask(
    path: str | Path,
    *,
    slice_index: int | None = None,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Read a lesion mask as ``bool`` ``H x W``: any nonzero stored value is lesion.

    NIfTI masks are sliced exactly like :func:`read_image` slices NIfTI images
    (``volume[:, :, k].T``, default the middle slice), so the same ``slice_index`` gives aligned
    arrays. ``shape`` (rows, cols) resizes with nearest neighbour.
    """
    p = Path(path)
    if shape is not None and (
        len(shape) != 2 or any(not isinstance(v, (int, np.integer)) or v <= 0 for v in shape)
    ):
        raise ValueError(f"shape must be two positive integers (rows, cols), got {shape!r}")
    try:
        kind, head = _sniff(p)
        if kind in ("nifti", "nifti-gz"):
            data = _nifti_data(p, _load_nifti(p, kind, head))
            sl, _ = _nifti_slice(p, data, slice_index)
            mask = np.isfinite(sl) & (sl != 0)
        elif kind == "dicom":
            mask = _dicom_mask(p, _dcmread(p, bare=False), slice_index)
        elif kind in ("npz", "npy"):
            raise ImageReadError(p, f"{kind} array file, not a mask image")
        else:
            try:
                mask = _pil_mask(p, head, slice_index)
            except _NotPillow:
                if not _looks_like_bare_dicom(head):
                    raise _not_image(p, head) from None
                try:
                    ds = _dcmread(p, bare=True)
                except _NotDicom:
                    raise _not_image(p, head) from None
                mask = _dicom_mask(p, ds, slice_index)
        mask = np.asarray(mask, dtype=bool)
        if shape is not None:
            mask = _resize_nearest(mask, shape)
        return np.ascontiguousarray(mask)
    except ImageReadError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        raise _unexpected(p, exc) from exc


def _dicom_mask(path: Path, ds: Any, slice_index: int | None) -> np.ndarray:
    raw, _, _ = _dicom_frame(path, ds, slice_index)
    return raw != 0 if raw.ndim == 2 else (raw != 0).any(axis=-1)


def read_npz_image(path: str | Path, key: str, index: int) -> LoadedImage:
    """Image ``index`` of array ``key`` in a MedMNIST-style ``.npz`` (N x H x W [x 3])."""
    p = Path(path)
    _check_file(p)
    head = _read_head(p, 8)
    if head[:4] != b"PK\x03\x04":
        raise ImageReadError(p, f"not an npz archive ({_describe_unknown(head)}); key {key!r}")
    try:
        with np.load(p, allow_pickle=False) as archive:
            keys = list(archive.files)
            if key not in keys:
                raise ImageReadError(
                    p, f"no array {key!r} in the archive; available keys: {', '.join(keys)}"
                )
            arr = archive[key]
    except ImageReadError:
        raise
    except Exception as exc:
        if isinstance(exc, MemoryError):
            raise
        raise ImageReadError(p, f"corrupt npz archive (key {key!r}): {exc}") from exc
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] == 3)):
        raise ImageReadError(
            p, f"array {key!r} has shape {arr.shape}; expected N x H x W or N x H x W x 3"
        )
    n = int(arr.shape[0])
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < n:
        raise ImageReadError(
            p, f"index {index!r} out of range for array {key!r} with {n} images (0..{n - 1})"
        )
    item = arr[int(index)]
    if item.dtype == np.uint8:
        out, bits = item.astype(np.float32) / 255.0, 8
    elif item.dtype == np.uint16:
        out, bits = item.astype(np.float32) / 65535.0, 16
    elif item.dtype == np.bool_:
        out, bits = item.astype(np.float32), 1
    elif item.dtype.kind in "fiu":
        out, bits = _float01(item.astype(np.float32)), int(item.dtype.itemsize * 8)
    else:
        raise ImageReadError(p, f"array {key!r} has unsupported dtype {item.dtype}")
    return LoadedImage(
        array=np.ascontiguousarray(out, dtype=np.float32),
        source_format="npz",
        mode="RGB" if item.ndim == 3 else "L",
        bit_depth=bits,
        meta={
            "key": key,
            "index": int(index),
            "n_images": n,
            "original_shape": [int(s) for s in item.shape[:2]],
            "dtype": str(item.dtype),
        },
    )


def read_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI volume as float32 ``X x Y x Z`` (voxel order, scaling applied) and its 4x4 affine.

    2-D data come back as ``X x Y x 1``. Anything but NIfTI raises ImageReadError.
    """
    p = Path(path)
    try:
        kind, head = _sniff(p)
        if kind not in ("nifti", "nifti-gz"):
            found = "DICOM" if kind == "dicom" else "not NIfTI"
            raise ImageReadError(p, f"read_volume reads NIfTI (.nii/.nii.gz) only; this is {found}")
        img = _load_nifti(p, kind, head)
        data = _nifti_data(p, img)
        if data.ndim == 2:
            data = data[:, :, None]
        affine = np.asarray(img.affine, dtype=np.float64)
        return np.ascontiguousarray(data, dtype=np.float32), affine
    except ImageReadError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        raise _unexpected(p, exc) from exc
