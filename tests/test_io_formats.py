"""The format table, the one content sniffer, and the ``decoded`` figures every reader records.

``decoded`` is what an input check sees of the pixel data *before* the [0, 1] conversion hides
NaN, infinities and constant images, so each case here is one the conversion would mask.
"""

from __future__ import annotations

import gzip
import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.data.io import (
    CONTAINER_FORMATS,
    FORMATS,
    READERS,
    SNIFF_BYTES,
    SUPPORTED_SUFFIXES,
    UPLOAD_FORMATS,
    detect_format,
    format_for_suffix,
    read_image,
    read_npz_image,
)
from medlens.errors import ImageReadError

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")

DECODED_KEYS = {"finite_fraction", "min", "max", "std", "height", "width", "channels"}


def _pil_bytes(fmt: str, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (5, 4), 90).save(buf, fmt)
    return buf.getvalue()


def _dicom_bytes(pixels: np.ndarray, **attrs) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = np.asarray(pixels, dtype=np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _nifti_bytes(vol: np.ndarray) -> bytes:
    return nib.Nifti1Image(vol, np.eye(4)).to_bytes()


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# One real file per format in the table, built by the library that writes that format.
EXAMPLES = {
    "png": lambda: _pil_bytes("PNG"),
    "jpeg": lambda: _pil_bytes("JPEG", "RGB"),
    "bmp": lambda: _pil_bytes("BMP"),
    "tiff": lambda: _pil_bytes("TIFF"),
    "gif": lambda: _pil_bytes("GIF"),
    "dicom": lambda: _dicom_bytes(np.arange(12).reshape(3, 4)),
    "nifti": lambda: _nifti_bytes(np.zeros((4, 3, 2), np.int16)),
    "npz": lambda: _npz_bytes(train_images=np.zeros((2, 3, 3), np.uint8)),
}


# ---------------------------------------------------------------------------- the table


def test_every_table_format_has_an_example_and_a_reader():
    assert set(EXAMPLES) == set(FORMATS)
    for name in FORMATS:
        assert name in READERS
    assert {f.name for f in UPLOAD_FORMATS} == {"png", "jpeg", "dicom"}
    assert all(f.mime.count("/") == 1 for f in FORMATS.values())
    assert {
        ".png",
        ".jpg",
        ".jpeg",
        ".bmp",
        ".tif",
        ".tiff",
        ".dcm",
        ".dicom",
        ".nii",
        ".nii.gz",
    } == SUPPORTED_SUFFIXES
    assert format_for_suffix("scan.NII.GZ").name == "nifti"
    assert format_for_suffix("notes.txt") is None


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_is_detected_from_its_bytes(name):
    data = EXAMPLES[name]()
    assert detect_format(data) == name
    assert detect_format(data[:SNIFF_BYTES]) == name
    # The name is a hint only: a misleading one changes nothing.
    assert detect_format(data, "misleading.txt") == name


def test_gzipped_nifti_and_a_png_named_dcm():
    vol = _nifti_bytes(np.zeros((4, 3, 2), np.int16))
    assert detect_format(gzip.compress(vol)) == "nifti"
    assert detect_format(_pil_bytes("PNG"), "scan.dcm") == "png"
    assert detect_format(_pil_bytes("PNG"), Path("scan.nii.gz")) == "png"


def test_containers_and_unknown_content():
    assert detect_format(gzip.compress(b"hello" * 200)) == "gzip"
    buf = io.BytesIO()
    np.save(buf, np.zeros(3))
    assert detect_format(buf.getvalue()) == "npy"
    import zipfile

    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        zf.writestr("a.png", _pil_bytes("PNG"))
    assert detect_format(zbuf.getvalue()) == "zip"
    assert {"zip", "gzip", "npy", "nifti-pair"} == CONTAINER_FORMATS
    assert detect_format(b"this is a text file, not a picture\n") is None
    assert detect_format(b"") is None
    assert detect_format(b"BM-not a bitmap header") is None


def test_dicom_without_preamble_is_detected_and_noise_is_not():
    data = _dicom_bytes(np.arange(12).reshape(3, 4))
    assert detect_format(data[132:]) == "dicom"
    assert detect_format(bytes(range(256)) * 4, "noise.dcm") is None


def test_zip_batch_is_refused_by_the_image_reader(tmp_path):
    import zipfile

    path = tmp_path / "batch.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.png", _pil_bytes("PNG"))
    with pytest.raises(ImageReadError, match="zip archive"):
        read_image(path)


# ---------------------------------------------------------------------------- decoded figures


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _check_safe(li) -> None:
    assert set(li.decoded) == DECODED_KEYS
    assert li.array.dtype == np.float32
    assert np.isfinite(li.array).all()
    assert li.array.min() >= 0.0 and li.array.max() <= 1.0


def test_all_zero_png_is_seen_as_constant(tmp_path):
    path = tmp_path / "zero.png"
    Image.fromarray(np.zeros((30, 20), np.uint8), "L").save(path)
    li = read_image(path)
    _check_safe(li)
    assert li.decoded == {
        "finite_fraction": 1.0,
        "min": 0.0,
        "max": 0.0,
        "std": 0.0,
        "height": 30,
        "width": 20,
        "channels": 1,
    }


def test_one_pixel_png(tmp_path):
    path = tmp_path / "one.png"
    Image.fromarray(np.full((1, 1, 3), 128, np.uint8), "RGB").save(path)
    li = read_image(path)
    _check_safe(li)
    d = li.decoded
    assert (d["height"], d["width"], d["channels"]) == (1, 1, 3)
    assert (d["min"], d["max"], d["std"], d["finite_fraction"]) == (128.0, 128.0, 0.0, 1.0)


def test_png_figures_are_in_stored_units(tmp_path):
    arr = np.array([[0, 1000], [65535, 4095]], dtype=np.uint16)
    path = tmp_path / "x16.png"
    Image.fromarray(arr).save(path)
    d = read_image(path).decoded
    assert (d["min"], d["max"]) == (0.0, 65535.0)
    assert d["std"] == pytest.approx(float(arr.astype(np.float64).std()))


def test_all_nan_float_npz_and_nifti(tmp_path):
    nan = np.full((2, 6, 5), np.nan, np.float32)
    path = _write(tmp_path, "nan.npz", _npz_bytes(images=nan))
    li = read_npz_image(path, "images", 1)
    _check_safe(li)
    assert li.array.max() == 0.0  # what the model gets: zeros ...
    assert li.decoded["finite_fraction"] == 0.0  # ... and what the data were
    assert li.decoded["min"] is None and li.decoded["max"] is None and li.decoded["std"] is None
    assert (li.decoded["height"], li.decoded["width"], li.decoded["channels"]) == (6, 5, 1)

    vol = np.full((5, 6, 3), np.nan, np.float32)
    vol[0, 0, 0] = 7.0  # a finite voxel on another slice: this slice is still all NaN
    nii = _write(tmp_path, "nan.nii.gz", gzip.compress(_nifti_bytes(vol)))
    li = read_image(nii, slice_index=1)
    _check_safe(li)
    assert li.decoded["finite_fraction"] == 0.0 and li.decoded["std"] is None
    assert (li.decoded["height"], li.decoded["width"]) == (6, 5)


def test_partly_nan_nifti_slice(tmp_path):
    vol = np.arange(5 * 4 * 2, dtype=np.float32).reshape(5, 4, 2)
    vol[:, :2, 1] = np.nan  # half of slice 1
    li = read_image(_write(tmp_path, "half.nii", _nifti_bytes(vol)), slice_index=1)
    _check_safe(li)
    finite = vol[:, 2:, 1]
    assert li.decoded["finite_fraction"] == 0.5
    assert li.decoded["min"] == float(finite.min()) and li.decoded["max"] == float(finite.max())
    assert li.decoded["std"] == pytest.approx(float(finite.astype(np.float64).std()))


def test_dicom_rescale_overflow_to_inf(tmp_path):
    raw = np.array([[0, 50, 100], [101, 150, 4095]], dtype=np.uint16)
    data = _dicom_bytes(raw, RescaleSlope="1e308", RescaleIntercept="0")
    li = read_image(_write(tmp_path, "overflow.dcm", data))
    _check_safe(li)
    d = li.decoded
    assert d["finite_fraction"] == pytest.approx(1 / 6)  # only 0 * 1e308 stays finite
    assert d["min"] == 0.0 and d["max"] == 0.0 and d["std"] == 0.0
    assert (d["height"], d["width"], d["channels"]) == (2, 3, 1)


def test_dicom_figures_are_after_rescale(tmp_path):
    raw = np.array([[0, 50, 100], [101, 150, 4095]], dtype=np.uint16)
    data = _dicom_bytes(raw, RescaleSlope="2", RescaleIntercept="-1024")
    d = read_image(_write(tmp_path, "hu.dcm", data)).decoded
    hu = raw.astype(np.float64) * 2 - 1024
    assert (d["min"], d["max"]) == (float(hu.min()), float(hu.max()))
    assert d["finite_fraction"] == 1.0 and math.isclose(d["std"], float(hu.std()))
