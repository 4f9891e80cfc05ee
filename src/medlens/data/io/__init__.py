"""Read medical images, masks and volumes into one predictable in-memory form.

Why this package exists
-----------------------
Users hand medlens folders of real, uncurated files: PNGs saved as ``.jpg``, 16-bit X-rays,
palette masks, DICOM with rescale and window tags, NIfTI volumes, MedMNIST ``.npz`` archives.
Everything downstream (datasets, training, calibration, explanations) needs the same thing from
each of them: a float32 array scaled to [0, 1] with a known layout, plus a few facts about where
it came from. Every read goes through here so that the conversion is decided once, is written
down, and a bad file ends in an :class:`~medlens.errors.ImageReadError` that names the file and
says why, never in a stray PIL/pydicom/nibabel exception or a silently wrong array.

Where things are
----------------
* :mod:`~medlens.data.io.formats` - the table of supported formats (:data:`FORMATS`: name,
  file endings, MIME type, accepted as upload) and :func:`detect_format`, the one content sniffer
  (magic bytes first, the name only as a hint), also used by the service's upload checks.
* :mod:`~medlens.data.io.readers` - :func:`read_image`, :func:`read_mask`, :func:`read_volume`
  and :data:`READERS`, the table from detected format to decoder.
* one module per decoder, each documenting its conversion to [0, 1]:
  :mod:`~medlens.data.io.pillow` (PNG, JPEG, BMP, TIFF, GIF...), :mod:`~medlens.data.io.dicom`,
  :mod:`~medlens.data.io.nifti`, :mod:`~medlens.data.io.npz`.
* :mod:`~medlens.data.io.base` - :class:`LoadedImage` and :func:`decoded_stats`.

Output form
-----------
:class:`LoadedImage.array` is float32, ``H x W`` (grey) or ``H x W x 3`` (RGB), finite, values in
[0, 1]. ``mode`` keeps the original colour mode / photometric interpretation and ``bit_depth`` the
bits per sample stored in the file; ``meta`` holds small JSON-serialisable facts and never a
patient identifier (no DICOM patient/study attributes, no EXIF text). ``decoded`` records what the
pixel data were *before* scaling (finite fraction, min, max, std, height, width, channels): the
scaling turns NaN and constant images into harmless zeros, and an input check must still be able
to see them.

``pydicom`` and ``nibabel`` are imported lazily inside the readers that need them, so
``import medlens.data.io`` stays cheap and works without them.
"""

from __future__ import annotations

from medlens.data.io.base import LoadedImage, decoded_stats
from medlens.data.io.formats import (
    CONTAINER_FORMATS,
    FORMATS,
    SNIFF_BYTES,
    SUPPORTED_SUFFIXES,
    UPLOAD_FORMATS,
    ImageFormat,
    detect_format,
    format_for_suffix,
    is_supported,
)
from medlens.data.io.npz import npz_item_image, read_npz_image
from medlens.data.io.readers import READERS, Reader, read_image, read_mask, read_volume

__all__ = [
    "CONTAINER_FORMATS",
    "FORMATS",
    "READERS",
    "SNIFF_BYTES",
    "SUPPORTED_SUFFIXES",
    "UPLOAD_FORMATS",
    "ImageFormat",
    "LoadedImage",
    "Reader",
    "decoded_stats",
    "detect_format",
    "format_for_suffix",
    "is_supported",
    "npz_item_image",
    "read_image",
    "read_mask",
    "read_npz_image",
    "read_volume",
]
