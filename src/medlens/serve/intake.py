"""A batch file made safe to keep on disk until a worker processes it: checked and de-identified
while the upload request is answered, without decoding any pixels.

The batch queue is durable (files survive a restart), so a batch file is written to the
workspace before it is processed. What is written must already be free of identifiers, exactly
like a stored image:

* **DICOM** goes through the same header check and PS3.15 de-identification as a single upload
  (:data:`medlens.serve.uploads.HEADER_CHECKS`).
* **PNG** keeps only the chunks that carry pixels (``IHDR PLTE tRNS sBIT IDAT IEND``): text,
  EXIF, XMP and every other ancillary chunk (where a name or a date could hide) is dropped.
* **JPEG** keeps the segments a decoder needs and drops ``APP1``-``APP15`` (EXIF, XMP, ICC,
  Photoshop) and comments. ``APP0`` (JFIF) and ``APP14`` (Adobe colour transform) stay.

Header checks (pixel bombs, corrupt headers) run here too, so a file that would be refused later
is refused now and never written. The worker still runs the full single-upload path on the
staged bytes (decode, canonical PNG), so nothing stored differs from a single upload.
"""

from __future__ import annotations

import struct

from medlens.serve.uploads import HEADER_CHECKS, UploadRejected, sniff_kind

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_KEEP = frozenset({b"IHDR", b"PLTE", b"tRNS", b"sBIT", b"IDAT", b"IEND"})
JPEG_KEEP_APP = frozenset({0xE0, 0xEE})  # APP0 (JFIF) and APP14 (Adobe colour transform)


def strip_png(data: bytes) -> bytes:
    """``data`` with only the pixel-carrying chunks; refuses a truncated chunk list."""
    if not data.startswith(PNG_SIGNATURE):
        raise UploadRejected(400, "Corrupt PNG: the signature is missing.")
    out = [PNG_SIGNATURE]
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise UploadRejected(400, "Corrupt PNG: a chunk runs past the end of the file.")
        if kind in PNG_KEEP:
            out.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            break
    return b"".join(out)


def strip_jpeg(data: bytes) -> bytes:
    """``data`` without EXIF/XMP/ICC/Photoshop application segments and comments."""
    if not data.startswith(b"\xff\xd8"):
        raise UploadRejected(400, "Corrupt JPEG: the start-of-image marker is missing.")
    out = [b"\xff\xd8"]
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise UploadRejected(400, "Corrupt JPEG: a segment marker is missing.")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: the entropy-coded data and the rest are pixels
            out.append(data[pos:])
            return b"".join(out)
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        end = pos + 2 + length
        if length < 2 or end > len(data):
            raise UploadRejected(400, "Corrupt JPEG: a segment runs past the end of the file.")
        dropped = (0xE0 <= marker <= 0xEF and marker not in JPEG_KEEP_APP) or marker == 0xFE
        if not dropped:
            out.append(data[pos:end])
        pos = end
    raise UploadRejected(400, "Corrupt JPEG: no image data (start of scan) was found.")


STRIP = {"png": strip_png, "jpeg": strip_jpeg}


def stage_bytes(
    data: bytes, *, max_bytes: int, max_pixels: int, keep_dicom_identifiers: bool
) -> bytes:
    """The bytes of one batch file that may be written to the workspace, or
    :class:`UploadRejected` with the reason the file would be refused."""
    if not data:
        raise UploadRejected(400, "The file is empty.")
    if len(data) > max_bytes:
        raise UploadRejected(413, f"File too large: the limit is {max_bytes / 1024 / 1024:.0f} MB.")
    kind = sniff_kind(data)
    check = HEADER_CHECKS.get(kind)
    if check is None:
        raise UploadRejected(415, f"{kind.upper()} uploads are not supported by this server.")
    checked, _removed = check(data, max_pixels, keep_dicom_identifiers)
    strip = STRIP.get(kind)
    return strip(checked) if strip is not None else checked
