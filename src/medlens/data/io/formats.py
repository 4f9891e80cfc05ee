"""What each supported file format is, and which one a file's bytes are.

Two readers of this module and one rule: the image readers (:mod:`medlens.data.io.readers`)
pick a decoder by :func:`detect_format`, and the service's upload checks ask the same function
before they accept a file, so "what is this file" is decided once, from the content. The name is
only a hint for the few cases the first bytes cannot settle (a gzip stream too short to inflate
its header, a zip whose first entry is not an array).

:data:`FORMATS` is the one table of supported formats: its name, the file-name endings that list
a file as a candidate (:func:`is_supported`), the MIME type a browser or an HTTP client sends, and
whether the web service accepts it as an upload. Storage, uploads and templates read it instead of
keeping their own lists.

This module imports only the standard library: it is cheap enough for a request handler.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CONTAINER_FORMATS",
    "FORMATS",
    "SNIFF_BYTES",
    "SUPPORTED_SUFFIXES",
    "UPLOAD_FORMATS",
    "ImageFormat",
    "detect_format",
    "file_suffix",
    "format_for_suffix",
    "is_supported",
    "looks_like_bare_dicom",
    "nifti_kind",
]

#: Bytes :func:`detect_format` needs to see: the DICOM preamble and ``DICM`` (132), a NIfTI-1
#: header (348), a NIfTI-2 header (540).
SNIFF_BYTES = 544


@dataclass(frozen=True)
class ImageFormat:
    """One supported format.

    ``name`` is what :func:`detect_format` returns and what the reader table is keyed by;
    ``suffixes`` the lower-case file-name endings that list a file as a candidate (the first is
    the canonical one); ``mime`` the media type; ``upload`` whether the web service accepts it
    as an upload; ``listed`` whether a folder listing picks such files (``.npz`` archives are
    addressed by key and index through a manifest, never listed as images).
    """

    name: str
    label: str
    suffixes: tuple[str, ...]
    mime: str
    upload: bool = False
    listed: bool = True


#: Every format medlens reads, in the order a user would look for them.
FORMATS: dict[str, ImageFormat] = {
    f.name: f
    for f in (
        ImageFormat("png", "PNG", (".png",), "image/png", upload=True),
        ImageFormat("jpeg", "JPEG", (".jpg", ".jpeg"), "image/jpeg", upload=True),
        ImageFormat("bmp", "BMP", (".bmp",), "image/bmp"),
        ImageFormat("tiff", "TIFF", (".tif", ".tiff"), "image/tiff"),
        ImageFormat("gif", "GIF", (".gif",), "image/gif", listed=False),
        ImageFormat("dicom", "DICOM", (".dcm", ".dicom"), "application/dicom", upload=True),
        ImageFormat("nifti", "NIfTI", (".nii", ".nii.gz"), "application/x-nifti"),
        ImageFormat("npz", "NumPy .npz", (".npz",), "application/x-npz", listed=False),
    )
}

#: The formats the web service accepts as single uploads (PNG, JPEG, DICOM).
UPLOAD_FORMATS: tuple[ImageFormat, ...] = tuple(f for f in FORMATS.values() if f.upload)

#: Names :func:`detect_format` may return that are not images medlens reads: a plain zip
#: archive, a gzip stream that is not NIfTI, a single ``.npy`` array, and the header of an
#: Analyze/NIfTI ``.hdr``/``.img`` pair.
CONTAINER_FORMATS: frozenset[str] = frozenset({"zip", "gzip", "npy", "nifti-pair"})

#: File-name endings a folder listing treats as image candidates (content is still checked).
SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    s for f in FORMATS.values() if f.listed for s in f.suffixes
)

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
)

# Sizes of the BMP info header (BITMAPCOREHEADER ... BITMAPV5HEADER): "BM" alone is two bytes
# of text, the header size behind it makes it a bitmap.
_BMP_INFO_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})

# Value representations of explicit-VR DICOM: a preamble-less file starting with a group 0002 or
# 0008 element followed by one of these (or, implicit VR, by a plausible length) is DICOM.
_DICOM_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN "
    b"UR US UT UV".split()
)


def file_suffix(name: str | Path) -> str:
    """The lower-case ending of a file name, treating ``.nii.gz`` as one ending."""
    low = Path(name).name.lower()
    if low.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(low).suffix


def is_supported(path: str | Path) -> bool:
    """True when the file name ends with a suffix in :data:`SUPPORTED_SUFFIXES` (any case).

    A cheap filter for listing folders; the readers themselves trust content, not names.
    """
    return file_suffix(path) in SUPPORTED_SUFFIXES


def format_for_suffix(name: str | Path) -> ImageFormat | None:
    """The table entry a file name's ending points to (a hint only), or None."""
    suffix = file_suffix(name)
    return next((f for f in FORMATS.values() if suffix in f.suffixes), None)


def nifti_kind(header: bytes) -> str | None:
    """nifti1 / nifti2 for a single-file NIfTI header, ``pair`` for a .hdr of .hdr/.img."""
    if len(header) >= 348 and header[344:348] == b"n+1\x00":
        return "nifti1"
    if len(header) >= 8 and header[4:8] == b"n+2\x00":
        return "nifti2"
    if (len(header) >= 348 and header[344:348] == b"ni1\x00") or header[4:8] == b"ni2\x00":
        return "pair"
    return None


def looks_like_bare_dicom(head: bytes) -> bool:
    """DICOM without the 128-byte preamble: a group 0002/0008 element, then a VR or a length.

    A heuristic, so the DICOM reader still confirms it by parsing; the VR/length check keeps two
    stray bytes from calling a file DICOM.
    """
    if len(head) < 8:
        return False
    group_le = int.from_bytes(head[0:2], "little")
    group_be = int.from_bytes(head[0:2], "big")
    if group_le not in (0x0002, 0x0008) and group_be != 0x0008:
        return False
    if head[4:6] in _DICOM_VRS:
        return True
    order = "little" if group_le in (0x0002, 0x0008) else "big"
    return int.from_bytes(head[4:8], order) < 0x0100_0000  # implicit VR: a sane length


def _gzip_inner(head: bytes) -> bytes:
    """As much of a gzip stream's content as the given bytes inflate to (errors give b"")."""
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, SNIFF_BYTES)
    except zlib.error:
        return b""


def _zip_first_name(head: bytes) -> str:
    """File name of the first local entry of a zip archive (empty when the head is too short)."""
    if len(head) < 30:
        return ""
    n = int.from_bytes(head[26:28], "little")
    return head[30 : 30 + n].decode("utf-8", "replace")


def detect_format(head: bytes, name: str | Path | None = None) -> str | None:
    """Which format a file is, from its first bytes; the name is a hint only.

    ``head`` is the start of the file (:data:`SNIFF_BYTES` is enough; more is fine - an upload
    passes all of it). Returns a key of :data:`FORMATS` (``"png"``, ``"jpeg"``, ``"bmp"``,
    ``"tiff"``, ``"gif"``, ``"dicom"``, ``"nifti"``, ``"npz"``), one of
    :data:`CONTAINER_FORMATS` (``"zip"``, ``"gzip"``, ``"npy"``, ``"nifti-pair"``) for files
    that are recognised but are not images medlens reads, or ``None`` when the bytes match
    nothing (other formats Pillow may still decode, text, noise).

    Magic bytes decide; ``name`` is consulted only where the bytes cannot: a gzip stream whose
    given bytes are too few to inflate a NIfTI header is ``"nifti"`` when named ``.nii.gz``, and
    a zip whose first entry is not ``*.npy`` is ``"npz"`` when named ``.npz``. A PNG named
    ``scan.dcm`` is ``"png"``.
    """
    head = bytes(head[: max(SNIFF_BYTES, 1024)])
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if (
        head.startswith(b"BM")
        and len(head) >= 18
        and int.from_bytes(head[14:18], "little") in _BMP_INFO_SIZES
    ):
        return "bmp"
    if head.startswith(b"\x1f\x8b"):
        inner = _gzip_inner(head)
        kind = nifti_kind(inner)
        if kind in ("nifti1", "nifti2"):
            return "nifti"
        if len(inner) < 348 and name is not None and file_suffix(name) == ".nii.gz":
            return "nifti"
        return "gzip"
    kind = nifti_kind(head)
    if kind in ("nifti1", "nifti2"):
        return "nifti"
    if kind == "pair":
        return "nifti-pair"
    if head.startswith(b"PK\x03\x04"):
        first = _zip_first_name(head)
        if first.endswith(".npy") or (name is not None and file_suffix(name) == ".npz"):
            return "npz"
        return "zip"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if looks_like_bare_dicom(head):
        return "dicom"
    return None
