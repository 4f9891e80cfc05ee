"""The upload formats, as this service uses them: read from the one format table of
:mod:`medlens.data.io` (through :mod:`medlens.inference`: the entries marked ``upload``), with
the one rule the service adds - what is kept. Storage (allowed suffixes), the upload checks and
the page templates (labels, the file picker's ``accept`` list) all read this module, so a format
marked as an upload in that table needs only its header check in :mod:`.uploads` here.

Content decides the format (:func:`medlens.inference.detect_format`), never the file name.
"""

from __future__ import annotations

from medlens.inference import UPLOAD_FORMATS, ImageFormat, detect_format

BY_KIND: dict[str, ImageFormat] = {f.name: f for f in UPLOAD_FORMATS}


def stored_suffix(fmt: ImageFormat) -> str:
    """What is kept: the de-identified DICOM itself, else a metadata-free PNG of the pixels."""
    return ".dcm" if fmt.name == "dicom" else ".png"


def decode_suffix(fmt: ImageFormat) -> str:
    """Suffix of the private temporary file the loader decodes (the format's canonical one)."""
    return fmt.suffixes[0]


STORED_SUFFIXES: tuple[str, ...] = tuple(sorted({stored_suffix(f) for f in UPLOAD_FORMATS}))


def names_text() -> str:
    """``"PNG, JPEG or DICOM"`` for labels and messages."""
    labels = [f.label for f in UPLOAD_FORMATS]
    return ", ".join(labels[:-1]) + " or " + labels[-1] if len(labels) > 1 else labels[0]


def accept_attribute() -> str:
    """The file input's ``accept`` list: file endings, then MIME types."""
    exts = [s for f in UPLOAD_FORMATS for s in f.suffixes]
    return ",".join([*exts, *dict.fromkeys(f.mime for f in UPLOAD_FORMATS)])


def sniff(head: bytes) -> tuple[ImageFormat | None, str | None]:
    """The accepted format the content announces (else None), and what the content is, if known
    (``"tiff"``, ``"zip"``...)."""
    kind = detect_format(head)
    return BY_KIND.get(kind) if kind else None, kind
