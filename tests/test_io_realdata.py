"""medlens.data.io on real, uncurated files read in place from ../shared/data.

A handful of files per folder, not thousands: the module runs in a few seconds.
"""

from __future__ import annotations

import collections
import csv
import random
from pathlib import Path

import numpy as np
import pytest

from medlens.data.io import read_image, read_mask, read_npz_image, read_volume
from medlens.errors import ImageReadError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

if not DATA.is_dir():
    pytest.skip(
        f"real-data folder {DATA} is absent (it sits beside the project checkout and is never "
        "copied into it); these tests only run where it exists",
        allow_module_level=True,
    )

pytestmark = pytest.mark.realdata


def sample(folder: Path, pattern: str, n: int, seed: int = 0) -> list[Path]:
    """The first two files plus a seeded random few: deterministic, but not only the first."""
    files = sorted(folder.glob(pattern))
    if not files:
        pytest.skip(f"no {pattern} files in {folder}")
    rest = files[2:]
    picked = files[:2] + random.Random(seed).sample(rest, min(len(rest), max(0, n - 2)))
    return picked


def assert_unit(array: np.ndarray) -> None:
    assert array.dtype == np.float32
    assert np.isfinite(array).all()
    assert float(array.min()) >= 0.0 and float(array.max()) <= 1.0


def class_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    return sorted(p for p in root.iterdir() if p.is_dir())


@pytest.mark.parametrize("root", ["brain_mri/Training", "all_blood_smear"])
def test_jpeg_class_folders(root):
    folders = class_folders(DATA / root)
    assert len(folders) == 4
    for folder in folders:
        for path in sample(folder, "*.jpg", 4):
            li = read_image(path)
            assert li.source_format == "jpeg", path
            assert li.array.shape[:2] == (224, 224), path
            assert li.mode in ("L", "RGB"), (path, li.mode)
            assert_unit(li.array)


def test_tbx11k_pngs_and_boxes():
    folder = DATA / "chest_tbx11k"
    with (folder / "boxes.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    boxed = [r for r in rows if r["x1"].strip()]
    # The file also lists images without a box as rows with empty coordinates.
    assert all(
        not any(r[k].strip() for k in ("x1", "y1", "x2", "y2")) for r in rows if r not in boxed
    )
    assert {r["finding"] for r in boxed} <= {"active_tb", "obsolete_tb"}
    present = {p.name for p in (folder / "images").iterdir()}
    assert {r["image"] for r in rows} <= present

    images = sorted({r["image"] for r in boxed})
    for name in images[:3] + random.Random(1).sample(images[3:], 3):
        li = read_image(folder / "images" / name)
        assert (li.source_format, li.mode, li.array.shape) == ("png", "L", (256, 256))
        assert_unit(li.array)
        h, w = li.array.shape
        for r in (r for r in boxed if r["image"] == name):
            x1, y1, x2, y2 = (float(r[k]) for k in ("x1", "y1", "x2", "y2"))
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h, r
    for r in boxed:  # every box, not only the sampled images, lies inside 256 px
        x1, y1, x2, y2 = (float(r[k]) for k in ("x1", "y1", "x2", "y2"))
        assert 0 <= x1 < x2 <= 256 and 0 <= y1 < y2 <= 256, r


def test_liver_every_file_loads():
    """Mixed originals: 640x480 greyscale JPEGs and 449x464 RGB PNGs *named .jpg*.

    Decision: every file must load (content wins over the name); none may raise. The PNGs hold
    grey pictures stored as RGB (three equal channels) and come back as RGB, as documented.
    """
    files = sorted((DATA / "liver_us_sample").glob("F*/*"))
    if not files:
        pytest.skip("liver_us_sample is empty")
    found: collections.Counter[tuple[str, str, int]] = collections.Counter()
    failures = []
    for path in files:
        try:
            li = read_image(path)
        except ImageReadError as exc:  # collected so the report names every bad file
            failures.append(str(exc))
            continue
        assert_unit(li.array)
        found[(li.source_format, li.mode, li.bit_depth)] += 1
        if li.source_format == "jpeg":
            assert li.mode == "L" and li.array.shape == (480, 640), path
            assert li.meta["suffix_matches_content"] is True
        else:
            assert (li.source_format, li.mode) == ("png", "RGB"), path
            assert li.array.shape == (464, 449, 3), path
            assert li.meta["suffix_matches_content"] is False  # a PNG named .jpg
            assert np.array_equal(li.array[..., 0], li.array[..., 2]), path
    assert not failures, failures
    assert set(found) == {("jpeg", "L", 8), ("png", "RGB", 8)}, found
    assert sum(found.values()) == len(files)


def test_pneumoniamnist_npz():
    path = DATA / "chest_pneumoniamnist" / "pneumoniamnist_dev.npz"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    first = read_npz_image(path, "train_images", 0)
    assert (first.source_format, first.mode, first.array.shape) == ("npz", "L", (28, 28))
    assert_unit(first.array)
    n = first.meta["n_images"]
    assert read_npz_image(path, "train_images", n - 1).array.shape == (28, 28)
    assert read_npz_image(path, "val_images", 0).array.shape == (28, 28)
    with pytest.raises(ImageReadError, match="out of range"):
        read_npz_image(path, "train_images", n)
    with pytest.raises(ImageReadError, match="test_images"):
        read_npz_image(path, "test_images", 0)


def test_sij_stir_with_reader1_masks():
    images = sorted((DATA / "sij_mri" / "images").glob("*_STIR.nii.gz"))
    if not images:
        pytest.skip("no sij_mri STIR volumes")
    for image_path in images:
        subject = image_path.name.split("_")[0]
        mask_path = DATA / "sij_mri" / "inflammation" / "R11" / f"{subject}_inflammation_R11.nii.gz"
        assert mask_path.is_file(), mask_path
        volume, affine = read_volume(image_path)
        mask_volume, mask_affine = read_volume(mask_path)
        assert volume.shape == mask_volume.shape and volume.ndim == 3
        np.testing.assert_allclose(affine, mask_affine, atol=1e-3)  # same grid (float noise)

        k = int(np.argmax((mask_volume != 0).sum(axis=(0, 1))))  # the most inflamed slice
        li = read_image(image_path, slice_index=k)
        mask = read_mask(mask_path, slice_index=k)
        assert li.source_format == "nifti" and li.meta["slice_index"] == k
        assert li.array.shape == mask.shape == (volume.shape[1], volume.shape[0])
        assert_unit(li.array)
        assert mask.sum() == int((mask_volume[:, :, k] != 0).sum()) > 0
        # STIR shows inflammation bright: an aligned mask sits on brighter than average tissue.
        assert li.array[mask].mean() > li.array.mean(), subject
