"""medlens.data.io on small synthetic files: every conversion rule, DICOM LUTs, NIfTI alignment,
npz, and bad input that must end in ImageReadError naming the file."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.data.io import (
    SUPPORTED_SUFFIXES,
    LoadedImage,
    is_supported,
    read_image,
    read_mask,
    read_npz_image,
    read_volume,
)
from medlens.errors import ImageReadError

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")

# Only the DICOM test files pydicom ships inside the wheel: asking get_testdata_file for one
# that is not there starts a download, so look in the package folder instead.
PYDICOM_FILES = Path(pydicom.__file__).resolve().parent / "data" / "test_files"
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "PatientAddress")
DICOM_META_KEYS = {
    "photometric_interpretation",
    "rows",
    "columns",
    "original_shape",
    "modality",
    "transfer_syntax",
    "frames",
    "frame_index",
    "rescale_slope",
    "rescale_intercept",
    "modality_lut",
    "voi_lut",
    "voi_lut_ignored",
    "window_center",
    "window_width",
    "voi_lut_function",
    "window_ignored",
    "scaling",
    "inverted",
}


def pydicom_file(name: str) -> Path:
    hits = sorted(PYDICOM_FILES.rglob(name))
    if not hits:
        pytest.skip(f"pydicom test file {name} is not shipped offline with this pydicom")
    return hits[0]


def save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def assert_unit(li: LoadedImage) -> None:
    assert li.array.dtype == np.float32
    assert li.array.ndim in (2, 3)
    if li.array.ndim == 3:
        assert li.array.shape[2] == 3
    assert float(li.array.min()) >= 0.0
    assert float(li.array.max()) <= 1.0
    json.dumps(li.meta)  # small and serialisable


# ---------------------------------------------------------------------------- names & imports


def test_suffixes_and_is_supported():
    assert {".png", ".jpg", ".jpeg", ".dcm", ".nii", ".nii.gz"} <= SUPPORTED_SUFFIXES
    assert all(s == s.lower() for s in SUPPORTED_SUFFIXES)
    assert is_supported("a/b/scan.NII.GZ")
    assert is_supported("x.Tiff") and is_supported(Path("y.dcm"))
    assert not is_supported("notes.txt")
    assert not is_supported("archive.gz")
    assert not is_supported("data.npz")


def test_import_is_lazy():
    code = (
        "import sys, medlens.data.io; "
        "assert 'pydicom' not in sys.modules and 'nibabel' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------- Pillow formats


def test_png_8bit_grey(tmp_path):
    arr = np.array([[0, 51, 255], [128, 7, 200]], dtype=np.uint8)
    li = read_image(save(Image.fromarray(arr, "L"), tmp_path / "g.png"))
    assert (li.source_format, li.mode, li.bit_depth) == ("png", "L", 8)
    np.testing.assert_allclose(li.array, arr / 255.0, atol=1e-7)
    assert li.meta["original_shape"] == [2, 3]
    assert_unit(li)


def test_png_16bit_scaled_by_65535(tmp_path):
    arr = np.array([[0, 1000], [65535, 4095]], dtype=np.uint16)
    li = read_image(save(Image.fromarray(arr), tmp_path / "x16.png"))
    assert li.mode.startswith("I")
    assert li.bit_depth == 16
    assert li.array[0, 1] == pytest.approx(1000 / 65535, abs=1e-7)
    assert li.array[1, 0] == 1.0
    assert li.array[1, 1] == pytest.approx(4095 / 65535, abs=1e-7)


def test_tiff_16bit_and_32bit_int_and_float(tmp_path):
    a16 = np.array([[0, 30000]], dtype=np.uint16)
    li = read_image(save(Image.fromarray(a16), tmp_path / "a.tif"))
    assert (li.source_format, li.bit_depth) == ("tiff", 16)
    assert li.array[0, 1] == pytest.approx(30000 / 65535, abs=1e-7)

    a32 = np.array([[-(2**31), 0, 2**31 - 1]], dtype=np.int32)  # signed: offset then scale
    li = read_image(save(Image.fromarray(a32), tmp_path / "b.tiff"))
    assert (li.mode, li.bit_depth) == ("I", 32)
    np.testing.assert_allclose(li.array[0], [0.0, 0.5, 1.0], atol=1e-6)

    af = np.array([[-2.0, 0.0, 6.0]], dtype=np.float32)  # outside [0, 1]: min-max
    li = read_image(save(Image.fromarray(af), tmp_path / "c.tif"))
    assert li.mode == "F"
    np.testing.assert_allclose(li.array[0], [0.0, 0.25, 1.0], atol=1e-6)


def test_rgb_stays_rgb_even_when_grey(tmp_path):
    arr = np.zeros((2, 2, 3), np.uint8)
    arr[0, 0] = (255, 0, 10)
    li = read_image(save(Image.fromarray(arr, "RGB"), tmp_path / "c.png"))
    assert (li.mode, li.array.shape) == ("RGB", (2, 2, 3))
    np.testing.assert_allclose(li.array[0, 0], [1.0, 0.0, 10 / 255], atol=1e-7)

    grey3 = np.repeat(np.arange(4, dtype=np.uint8).reshape(2, 2, 1) * 60, 3, axis=2)
    li = read_image(save(Image.fromarray(grey3, "RGB"), tmp_path / "g3.png"))
    assert li.array.shape == (2, 2, 3)


def test_rgba_composited_over_black(tmp_path):
    arr = np.array([[[200, 100, 50, 128], [10, 20, 30, 0]]], dtype=np.uint8)
    li = read_image(save(Image.fromarray(arr, "RGBA"), tmp_path / "a.png"))
    assert li.mode == "RGBA"
    assert li.array.shape == (1, 2, 3)
    np.testing.assert_allclose(
        li.array[0, 0], np.array([200, 100, 50]) / 255 * 128 / 255, atol=1e-6
    )
    np.testing.assert_array_equal(li.array[0, 1], [0, 0, 0])


def test_la_drops_alpha(tmp_path):
    arr = np.array([[[90, 0], [255, 255]]], dtype=np.uint8)
    li = read_image(save(Image.fromarray(arr, "LA"), tmp_path / "la.png"))
    assert li.mode == "LA"
    np.testing.assert_allclose(li.array, [[90 / 255, 1.0]], atol=1e-7)


def test_palette_grey_and_colour(tmp_path):
    idx = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    grey = Image.fromarray(idx, "P")
    grey.putpalette([0, 0, 0, 128, 128, 128, 255, 255, 255] + [0] * (256 * 3 - 9))
    li = read_image(save(grey, tmp_path / "pg.png"))
    assert (li.mode, li.array.shape) == ("P", (2, 2))
    np.testing.assert_allclose(li.array, [[0, 128 / 255], [1, 128 / 255]], atol=1e-7)

    colour = Image.fromarray(idx, "P")
    colour.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    li = read_image(save(colour, tmp_path / "pc.png"))
    assert (li.mode, li.array.shape) == ("P", (2, 2, 3))
    np.testing.assert_allclose(li.array[0, 1], [1, 0, 0])
    np.testing.assert_allclose(li.array[1, 0], [0, 0, 1])


def test_cmyk_jpeg_to_rgb(tmp_path):
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    li = read_image(save(img, tmp_path / "c.jpg", quality=95))
    assert (li.source_format, li.mode, li.array.shape) == ("jpeg", "CMYK", (16, 16, 3))
    np.testing.assert_allclose(li.array.mean(axis=(0, 1)), [1, 0, 0], atol=0.05)


def test_one_bit(tmp_path):
    arr = np.array([[True, False], [False, True]])
    li = read_image(save(Image.fromarray(arr).convert("1"), tmp_path / "b.png"))
    assert (li.mode, li.bit_depth) == ("1", 1)
    np.testing.assert_array_equal(li.array, arr.astype(np.float32))


def test_bmp(tmp_path):
    arr = np.array([[0, 255, 17]], dtype=np.uint8)
    li = read_image(save(Image.fromarray(arr, "L"), tmp_path / "b.bmp"))
    assert li.source_format == "bmp"
    np.testing.assert_allclose(li.array, arr / 255.0, atol=1e-7)


def test_jpeg_exif_orientation_applied(tmp_path):
    arr = np.zeros((16, 32), np.uint8)  # H=16, W=32: bright block in the stored top-left
    arr[:8, :8] = 255
    img = Image.fromarray(arr, "L")
    plain = save(img, tmp_path / "plain.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be turned 90 degrees clockwise to display
    rotated = save(img, tmp_path / "rot.jpg", quality=95, exif=exif.tobytes())
    a = read_image(plain).array
    b = read_image(rotated)
    assert b.array.shape == (32, 16)
    np.testing.assert_array_equal(b.array, np.rot90(a, k=-1))
    assert b.array[0, -1] > 0.9 and b.array[-1, 0] < 0.1
    assert b.meta["exif_orientation"] == 6
    assert b.meta["original_shape"] == [16, 32]


def test_multipage_tiff_slice_index(tmp_path):
    pages = [Image.fromarray(np.full((3, 3), v, np.uint8), "L") for v in (10, 20, 30)]
    path = tmp_path / "stack.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    assert read_image(path).array[0, 0] == pytest.approx(10 / 255)
    li = read_image(path, slice_index=2)
    assert li.array[0, 0] == pytest.approx(30 / 255)
    assert (li.meta["frames"], li.meta["frame_index"]) == (3, 2)
    with pytest.raises(ImageReadError, match="out of range"):
        read_image(path, slice_index=3)


def test_single_image_rejects_other_slice_index(tmp_path):
    path = save(Image.new("L", (2, 2)), tmp_path / "one.png")
    assert read_image(path, slice_index=0).array.shape == (2, 2)
    with pytest.raises(ImageReadError, match="slice_index 1 out of range"):
        read_image(path, slice_index=1)


# ---------------------------------------------------------------------------- DICOM (bundled)


def _no_identifiers(li: LoadedImage, ds) -> None:
    assert set(li.meta) <= DICOM_META_KEYS
    text = json.dumps(li.meta)
    for kw in IDENTIFYING:
        value = str(ds.get(kw, "") or "")
        if value:
            assert value not in text


def test_dicom_ct_small():
    path = pydicom_file("CT_small.dcm")
    li = read_image(path)
    ds = pydicom.dcmread(path)
    assert (li.source_format, li.mode, li.bit_depth) == ("dicom", "MONOCHROME2", ds.BitsStored)
    assert li.array.shape == (ds.Rows, ds.Columns)
    assert li.meta["rescale_intercept"] == float(ds.RescaleIntercept)
    assert li.array.min() == 0.0 and li.array.max() == 1.0  # no window: min-max
    assert_unit(li)
    _no_identifiers(li, ds)


def test_dicom_mr_small_window():
    path = pydicom_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    li = read_image(path)
    assert_unit(li)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    assert (li.meta["window_center"], li.meta["window_width"]) == (c, w)
    x = ds.pixel_array.astype(np.float64)
    expected = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(li.array, expected, atol=1e-6)
    _no_identifiers(li, ds)


def test_dicom_monochrome1_inverted():
    path = pydicom_file("6154")  # a CR image from pydicom's DICOMDIR tests
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    li = read_image(path)
    assert li.mode == "MONOCHROME1" and li.meta["inverted"] is True
    assert_unit(li)
    raw = ds.pixel_array.ravel()
    out = li.array.ravel()
    order = np.argsort(raw, kind="stable")
    assert np.all(np.diff(out[order]) <= 1e-7)  # brighter where the raw value is lower
    assert out[raw.argmin()] > out[raw.argmax()]
    _no_identifiers(li, ds)


def test_dicom_rgb_and_ybr_come_back_rgb():
    rgb = read_image(pydicom_file("SC_rgb_small_odd.dcm"))
    assert rgb.array.shape == (3, 3, 3) and rgb.mode == "RGB"
    assert_unit(rgb)
    ybr = read_image(pydicom_file("SC_ybr_full_422_uncompressed.dcm"))
    assert ybr.array.shape[2] == 3
    np.testing.assert_allclose(ybr.array[0, 0], [1, 0, 0], atol=0.02)  # the red bar


def test_dicom_truncated_pixel_data():
    path = pydicom_file("MR_truncated.dcm")
    with pytest.raises(ImageReadError, match="corrupt DICOM pixel data") as err:
        read_image(path)
    assert str(path) in str(err.value)


def test_dicom_without_pixel_data():
    path = pydicom_file("rtplan.dcm")
    with pytest.raises(ImageReadError, match="no pixel data"):
        read_image(path)


def test_dicom_compressed_without_handler():
    import importlib.util

    if any(importlib.util.find_spec(m) for m in ("pylibjpeg", "gdcm", "jpeg_ls")):
        pytest.skip("a JPEG-LS decoder is installed, so the file would decode")
    path = pydicom_file("JPEGLSNearLossless_08.dcm")
    with pytest.raises(ImageReadError, match=r"compressed transfer syntax .*JPEG-LS"):
        read_image(path)


# ---------------------------------------------------------------------------- DICOM (own)


def write_dicom(
    path: Path,
    frames: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    preamble: bool = True,
    **attrs,
) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    frames = np.asarray(frames, dtype=np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN-998877"
    ds.PatientBirthDate = "19700101"
    ds.Modality = "CR"
    ds.Rows, ds.Columns = frames.shape[-2:]
    if frames.ndim == 3:
        ds.NumberOfFrames = frames.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = frames.tobytes()
    ds.save_as(path, enforce_file_format=True)
    if not preamble:
        data = path.read_bytes()
        assert data[128:132] == b"DICM"
        path.write_bytes(data[132:])
    return path


RAW = np.array([[0, 50, 100], [101, 150, 4095]], dtype=np.uint16)


def test_own_dicom_rescale_window_monochrome1(tmp_path):
    path = write_dicom(
        tmp_path / "m1.dcm",
        RAW,
        photometric="MONOCHROME1",
        RescaleSlope="2",
        RescaleIntercept="-100",
        WindowCenter=["100", "900"],  # two windows: the first is used
        WindowWidth=["201", "50"],
    )
    li = read_image(path)
    x = RAW.astype(np.float64) * 2 - 100
    c, w = 100 - 0.5, 201 - 1  # DICOM LINEAR windowing
    expected = 1.0 - np.clip((x - c) / w + 0.5, 0, 1)
    np.testing.assert_allclose(li.array, expected, atol=1e-6)
    assert li.meta["window_center"] == 100.0 and li.meta["window_width"] == 201.0
    assert li.meta["rescale_slope"] == 2.0 and li.meta["rescale_intercept"] == -100.0
    assert (li.mode, li.bit_depth) == ("MONOCHROME1", 12)
    ds = pydicom.dcmread(path)
    _no_identifiers(li, ds)
    assert "Doe" not in json.dumps(li.meta) and "MRN" not in json.dumps(li.meta)


def test_own_dicom_no_window_is_min_max_and_sigmoid(tmp_path):
    li = read_image(write_dicom(tmp_path / "m2.dcm", RAW))
    np.testing.assert_allclose(li.array, RAW / 4095.0, atol=1e-6)
    assert li.meta["scaling"] == "min-max"

    path = write_dicom(
        tmp_path / "s.dcm", RAW, WindowCenter="100", WindowWidth="50", VOILUTFunction="SIGMOID"
    )
    expected = 1 / (1 + np.exp(-4 * (RAW.astype(np.float64) - 100) / 50))
    np.testing.assert_allclose(read_image(path).array, expected, atol=1e-6)


def test_own_dicom_without_preamble_reads_the_same(tmp_path):
    kw = {"WindowCenter": "120", "WindowWidth": "300"}
    with_pre = read_image(write_dicom(tmp_path / "a.dcm", RAW, **kw))
    bare_path = write_dicom(tmp_path / "b.bin", RAW, preamble=False, **kw)
    bare = read_image(bare_path)
    assert bare.source_format == "dicom"
    np.testing.assert_array_equal(bare.array, with_pre.array)
    np.testing.assert_array_equal(read_mask(bare_path), RAW != 0)


def test_own_dicom_multiframe(tmp_path):
    frames = np.stack([RAW, RAW + 1, RAW + 2])
    path = write_dicom(
        tmp_path / "mf.dcm",
        frames,
        RescaleSlope="1",
        RescaleIntercept="0",
        WindowCenter="2048",
        WindowWidth="4096",
    )
    mid = read_image(path)
    assert (mid.meta["frames"], mid.meta["frame_index"]) == (3, 1)
    first = read_image(path, slice_index=0)
    assert first.meta["frame_index"] == 0
    assert mid.array[0, 1] > first.array[0, 1]
    with pytest.raises(ImageReadError, match="out of range"):
        read_image(path, slice_index=3)


def test_own_dicom_no_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "np.dcm", RAW)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match="no pixel data"):
        read_image(path)


# ---------------------------------------------------------------------------- NIfTI


def make_volume() -> np.ndarray:
    x, y, z = 6, 5, 4
    return np.arange(x * y * z, dtype=np.int16).reshape(x, y, z) * 10


def test_nifti_slice_scaling_mask_alignment(tmp_path):
    vol = make_volume()
    affine = np.diag([0.5, 0.5, 3.0, 1.0])
    affine[:3, 3] = [-10, 5, 2]
    img_path = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), img_path)
    mask = np.zeros(vol.shape, np.uint8)
    mask[4, 1, 1] = 1  # voxel i=4, j=1 on slice 1
    mask[0, 0, 2] = 3
    mask_path = tmp_path / "t1_mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, affine), mask_path)

    lo, hi = np.percentile(vol.astype(np.float64), [0.5, 99.5])
    li = read_image(img_path, slice_index=1)
    assert (li.source_format, li.mode, li.bit_depth) == ("nifti", "int16", 16)
    assert li.array.shape == (5, 6)  # (Y, X): volume[:, :, k].T
    expected = np.clip((vol[:, :, 1].T - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(li.array, expected, atol=1e-5)
    assert li.meta["slice_index"] == 1 and li.meta["volume_shape"] == [6, 5, 4]
    assert_unit(li)

    m = read_mask(mask_path, slice_index=1)
    assert m.dtype == bool and m.shape == li.array.shape
    assert m[1, 4] and m.sum() == 1
    assert li.array[1, 4] == pytest.approx(np.clip((vol[4, 1, 1] - lo) / (hi - lo), 0, 1))

    default = read_image(img_path)
    assert default.meta["slice_index"] == 2  # middle of 4
    assert read_mask(mask_path)[0, 0]  # default mask slice is the same middle slice

    data, aff = read_volume(img_path)
    assert data.dtype == np.float32 and data.shape == (6, 5, 4)
    np.testing.assert_array_equal(data, vol)
    np.testing.assert_allclose(aff, affine)

    with pytest.raises(ImageReadError, match="out of range"):
        read_image(img_path, slice_index=4)


def test_nifti_content_wins_and_2d(tmp_path):
    vol = make_volume()
    odd = tmp_path / "volume.dat"  # plain .nii content under another name
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii")
    odd.write_bytes((tmp_path / "v.nii").read_bytes())
    assert read_image(odd).array.shape == (5, 6)
    gz_named_nii = tmp_path / "w.nii"  # gzip content named .nii
    gz_named_nii.write_bytes(gzip.compress((tmp_path / "v.nii").read_bytes()))
    np.testing.assert_array_equal(read_image(gz_named_nii).array, read_image(odd).array)

    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(6, dtype=np.float32).reshape(3, 2), np.eye(4)), flat)
    assert read_image(flat).array.shape == (2, 3)
    assert read_volume(flat)[0].shape == (3, 2, 1)


def test_read_volume_rejects_other_formats(tmp_path):
    path = save(Image.new("L", (2, 2)), tmp_path / "a.png")
    with pytest.raises(ImageReadError, match="NIfTI"):
        read_volume(path)


# ---------------------------------------------------------------------------- npz


def test_npz(tmp_path):
    grey = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    rgb = np.full((2, 4, 5, 3), 255, np.uint8)
    path = tmp_path / "m.npz"
    np.savez(path, train_images=grey, rgb_images=rgb, train_labels=np.zeros((3, 1)))
    li = read_npz_image(path, "train_images", 2)
    assert (li.source_format, li.mode, li.bit_depth, li.array.shape) == ("npz", "L", 8, (4, 5))
    np.testing.assert_allclose(li.array, grey[2] / 255.0, atol=1e-7)
    assert li.meta["n_images"] == 3
    assert read_npz_image(path, "rgb_images", 1).array.shape == (4, 5, 3)

    with pytest.raises(ImageReadError, match="val_images") as err:
        read_npz_image(path, "val_images", 0)
    assert str(path) in str(err.value) and "train_images" in str(err.value)
    with pytest.raises(ImageReadError, match="out of range") as err:
        read_npz_image(path, "train_images", 3)
    assert "train_images" in str(err.value)
    with pytest.raises(ImageReadError, match="shape"):
        read_npz_image(path, "train_labels", 0)
    with pytest.raises(ImageReadError, match="read_npz_image"):
        read_image(path)


# ---------------------------------------------------------------------------- masks


def test_png_masks(tmp_path):
    arr = np.array([[0, 255, 0, 1], [0, 0, 0, 0]], dtype=np.uint8)
    path = save(Image.fromarray(arr, "L"), tmp_path / "m.png")
    m = read_mask(path)
    assert m.dtype == bool
    np.testing.assert_array_equal(m, arr != 0)

    big = read_mask(path, shape=(4, 8))
    np.testing.assert_array_equal(big, np.repeat(np.repeat(arr != 0, 2, 0), 2, 1))

    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)
    rgba[0, 1] = (255, 0, 0, 0)  # transparent: background
    m = read_mask(save(Image.fromarray(rgba, "RGBA"), tmp_path / "r.png"))
    np.testing.assert_array_equal(m, [[True, False, False]])

    idx = Image.fromarray(np.array([[0, 2]], np.uint8), "P")
    idx.putpalette([0, 0, 0] * 256)
    np.testing.assert_array_equal(read_mask(save(idx, tmp_path / "p.png")), [[False, True]])


# ---------------------------------------------------------------------------- bad input


def _png_bytes(size: int = 64) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def _jpeg_bytes() -> bytes:
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB").save(buf, "JPEG")
    return buf.getvalue()


def bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, expected words in the reason)."""
    out: dict[str, tuple[Path, str]] = {}

    def put(name: str, data: bytes, words: str) -> None:
        path = tmp_path / name
        path.write_bytes(data)
        out[name] = (path, words)

    png, jpg = _png_bytes(), _jpeg_bytes()
    put("truncated.png", png[: len(png) // 2], "truncated or corrupt PNG data")
    put("truncated.jpg", jpg[: len(jpg) // 2], "truncated or corrupt JPEG data")
    put("header_only.png", png[:20], "truncated or corrupt PNG data")
    put("empty.png", b"", "file is empty (0 bytes)")
    put("x.jpg", b"this is a text file, not a picture\n", "not an image file")
    put("noise.dcm", bytes(range(256)) * 4, "not an image file")
    put("fake.nii.gz", gzip.compress(b"hello" * 100), "not NIfTI")
    put("cut.nii.gz", b"\x1f\x8b\x08\x00" + b"\x00" * 20, "gzip")
    nii = nib.Nifti1Image(make_volume(), np.eye(4)).to_bytes()
    gz = gzip.compress(nii)
    put("cut_volume.nii.gz", gz[: len(gz) - 6], "truncated or corrupt NIfTI data")  # no trailer
    put("cut_plain.nii", nii[: len(nii) - 100], "truncated or corrupt NIfTI data")
    out["missing.png"] = (tmp_path / "missing.png", "file not found")
    out["a_directory"] = (tmp_path, "directory")
    return out


@pytest.mark.parametrize(
    "name",
    [
        "truncated.png",
        "truncated.jpg",
        "header_only.png",
        "empty.png",
        "x.jpg",
        "noise.dcm",
        "fake.nii.gz",
        "cut.nii.gz",
        "cut_volume.nii.gz",
        "cut_plain.nii",
        "missing.png",
        "a_directory",
    ],
)
def test_bad_input_raises_image_read_error(tmp_path, name):
    path, words = bad_files(tmp_path)[name]
    for reader in (read_image, read_mask):
        try:
            reader(path)
        except ImageReadError as exc:  # any other exception type fails the test
            assert str(path) in str(exc)
            assert words in exc.reason
            assert exc.path == str(path)
        else:
            pytest.fail(f"{reader.__name__}({name}) did not raise")


def test_content_wins_over_name(tmp_path):
    path = tmp_path / "really_a_jpeg.png"
    path.write_bytes(_jpeg_bytes())
    li = read_image(path)
    assert li.source_format == "jpeg" and li.array.shape == (64, 64, 3)
    assert li.meta["suffix_matches_content"] is False
    assert read_mask(path).shape == (64, 64)

    png_as_dcm = tmp_path / "scan.dcm"
    png_as_dcm.write_bytes(_png_bytes(8))
    assert read_image(png_as_dcm).source_format == "png"


def test_npz_bad_input(tmp_path):
    missing = tmp_path / "none.npz"
    with pytest.raises(ImageReadError, match="file not found"):
        read_npz_image(missing, "train_images", 0)
    text = tmp_path / "t.npz"
    text.write_text("not a zip")
    with pytest.raises(ImageReadError, match="not an npz archive") as err:
        read_npz_image(text, "train_images", 0)
    assert "train_images" in str(err.value)
