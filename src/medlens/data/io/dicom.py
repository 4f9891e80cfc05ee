"""DICOM, decoded by pydicom and mapped to [0, 1] the way the standard's transforms say.

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

``decoded`` is measured after the Modality LUT (physical units such as HU, where a rescale that
overflows shows up as non-finite values) and before the VOI transform; colour data as decoded.

``pydicom`` is imported inside these functions, so ``import medlens.data.io`` works without it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from medlens.common import json_safe, rescale_to_unit
from medlens.data.io.base import (
    LoadedImage,
    check_index,
    decoded_stats,
    float_unit,
    minmax_unit,
    safe_unit,
)
from medlens.errors import ImageReadError

__all__ = ["NotDicom", "dcmread", "dicom_image", "dicom_mask"]


def _import_pydicom(path: Path) -> Any:
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - pydicom is a project dependency
        raise ImageReadError(path, "reading DICOM needs pydicom: pip install pydicom") from exc
    return pydicom


class NotDicom(Exception):
    """Internal signal: a force-read found no DICOM image."""


def dcmread(path: Path, *, bare: bool) -> Any:
    """Parse the file (``bare``: no preamble, force-read) and make sure it has pixel data."""
    pydicom = _import_pydicom(path)
    try:
        ds = pydicom.dcmread(str(path), force=bare)
    except Exception as exc:
        if isinstance(exc, MemoryError):
            raise
        raise ImageReadError(path, f"corrupt DICOM file: {exc}") from exc
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if bare and len(ds) < 3:  # a force-read of something that is not DICOM at all
            raise NotDicom()
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


def _decode_error(path: Path, tsyntax: Any, exc: Exception) -> ImageReadError:
    compressed = bool(tsyntax is not None and getattr(tsyntax, "is_compressed", False))
    if not compressed:
        return ImageReadError(path, f"corrupt DICOM pixel data: {exc}")
    detail = " ".join(str(exc).split())
    name = f"{tsyntax.name} ({tsyntax})"
    no_handler = isinstance(exc, NotImplementedError) or any(
        s in detail for s in ("missing dependencies", "not supported", "not support")
    )
    if no_handler:
        return ImageReadError(
            path,
            f"compressed transfer syntax {name} could not be decoded: no installed "
            "pixel data handler supports it (pip install pylibjpeg pylibjpeg-libjpeg "
            f"pylibjpeg-openjpeg, or python-gdcm, adds more): {detail}",
        )
    return ImageReadError(
        path, f"truncated or corrupt compressed DICOM pixel data ({name}): {detail}"
    )


def _dicom_frame(path: Path, ds: Any, slice_index: int | None) -> tuple[np.ndarray, int, int]:
    """Decode one frame; return (array, frame index, number of frames)."""
    n = _n_frames(ds)
    if n > 1:
        frame = n // 2 if slice_index is None else check_index(path, slice_index, n, "frames")
    else:
        frame = check_index(path, slice_index, 1, "frames")
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
        raise _decode_error(path, ds.file_meta.get("TransferSyntaxUID"), exc) from exc
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
    if not isinstance(value, str | bytes) and hasattr(value, "__len__"):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray | None:
    """DICOM VOI windowing (PS3.3 C.11.2.1.2) mapped straight to [0, 1]; None if invalid.

    The standard's own formulas, kept as written there (a centre/width window, not a lo/hi
    range), so the output matches other DICOM viewers to the last bit.
    """
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


def _modality(ds: Any, raw: np.ndarray, frame: int, meta: dict) -> np.ndarray:
    """Stored values -> the modality's units (rescale slope/intercept or a Modality LUT)."""
    apply_modality_lut = _pixel_functions()[0]
    if ds.get("ModalityLUTSequence") or ("RescaleSlope" in ds and "RescaleIntercept" in ds):
        with np.errstate(over="ignore", invalid="ignore"):
            values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
        if "RescaleSlope" in ds:
            meta["rescale_slope"] = _first_number(ds.RescaleSlope)
            meta["rescale_intercept"] = _first_number(ds.RescaleIntercept)
        else:
            meta["modality_lut"] = True
        return values
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
        with np.errstate(over="ignore", invalid="ignore"):
            values = values * slope + intercept
        meta["rescale_slope"], meta["rescale_intercept"] = slope, intercept
    return values


def _voi(ds: Any, values: np.ndarray, frame: int, meta: dict) -> np.ndarray:
    """Modality values -> [0, 1] by the VOI LUT, else the window, else min-max."""
    apply_voi = _pixel_functions()[1]
    out: np.ndarray | None = None
    voi_seq = ds.get("VOILUTSequence")
    if voi_seq and voi_seq[0].get("LUTDescriptor") is not None and "LUTData" in voi_seq[0]:
        try:
            looked_up = np.asarray(apply_voi(np.rint(values).astype(np.int64), ds, 0))
            top = float(looked_up.max()) if looked_up.size else 0.0
            full = 2.0 ** max(1, math.ceil(math.log2(top + 1.0))) - 1.0 if top > 0 else 1.0
            out = rescale_to_unit(looked_up, 0.0, full)
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
            with np.errstate(over="ignore", invalid="ignore"):
                out = _window(values, center, width, function)
            if out is not None:
                meta["window_center"], meta["window_width"] = center, width
                meta["voi_lut_function"] = function
            else:
                meta["window_ignored"] = f"invalid width {width} for {function}"
    if out is None:
        out = minmax_unit(values)
        meta["scaling"] = "min-max"
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        out = 1.0 - out
        meta["inverted"] = True
    return out


def _dicom_colour(ds: Any, raw: np.ndarray, photometric: str, bits: int) -> np.ndarray:
    """Colour samples as decoded (RGB): palette through its LUT, YBR converted."""
    if photometric == "PALETTE COLOR":
        apply_color_lut = _pixel_functions()[2]
        return np.asarray(apply_color_lut(raw, ds))
    if photometric.startswith("YBR_FULL") and not _pydicom_converts_ybr():
        from pydicom.pixel_data_handlers.util import convert_color_space

        return np.asarray(convert_color_space(raw, photometric, "RGB"))
    return raw


def _colour_unit(rgb: np.ndarray, photometric: str, bits: int) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        top = float(np.iinfo(rgb.dtype).max) if rgb.dtype.kind in "ui" else 1.0
        return rescale_to_unit(rgb, 0.0, top)
    if rgb.dtype.kind == "f":
        return float_unit(rgb)
    return rescale_to_unit(rgb, 0.0, 2.0**bits - 1.0)


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


def dicom_image(path: Path, slice_index: int | None, *, bare: bool) -> LoadedImage:
    """Read one frame (``bare``: the file has no preamble; may raise NotDicom)."""
    ds = dcmread(path, bare=bare)
    raw, frame, n = _dicom_frame(path, ds, slice_index)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 0) or raw.dtype.itemsize * 8)
    meta = _dicom_facts(ds, raw, frame, n)
    try:
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        if photometric == "PALETTE COLOR" or samples == 3 or raw.ndim == 3:
            values = _dicom_colour(ds, raw, photometric, bits)
            decoded = decoded_stats(values)
            array = _colour_unit(values, photometric, bits)
        else:
            values = _modality(ds, raw, frame, meta)
            decoded = decoded_stats(values)
            array = _voi(ds, values, frame, meta)
    except ImageReadError:
        raise
    except Exception as exc:
        if isinstance(exc, MemoryError):
            raise
        raise ImageReadError(path, f"cannot apply the DICOM LUTs ({photometric}): {exc}") from exc
    return LoadedImage(
        array=safe_unit(array),
        source_format="dicom",
        mode=photometric,
        bit_depth=bits,
        meta=json_safe(meta),
        decoded=decoded,
    )


def dicom_mask(path: Path, slice_index: int | None, *, bare: bool) -> np.ndarray:
    """Any nonzero raw pixel value is lesion (no LUTs: a label map is not an intensity)."""
    raw, _, _ = _dicom_frame(path, dcmread(path, bare=bare), slice_index)
    return raw != 0 if raw.ndim == 2 else (raw != 0).any(axis=-1)
