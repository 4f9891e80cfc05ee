"""Audit speed parts (issue #12): JPEG hashes from the reduced-scale (DCT) decode agree with the
full decode's within the documented tolerance, and the process pool gives the same records as
one process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.data.audit import records as R
from medlens.data.audit.copies import DEFAULT_NEAR_THRESHOLD
from medlens.data.io import read_image
from medlens.data.manifest import from_folder
from tests.conftest import SHARED_DATA


def _bits(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def _distances(files: list[Path]) -> np.ndarray:
    """Per file: pHash, mirrored pHash, dHash, mirrored dHash distance, reduced vs full decode."""
    out = []
    for f in files:
        reduced, size = R._jpeg_thumb(f)
        arr = read_image(f).array
        assert size == (arr.shape[1], arr.shape[0])  # the stored size, not the reduced one
        grey = arr if arr.ndim == 2 else arr @ R._LUMA
        a = R._perceptual(reduced)
        b = R._perceptual(R._thumb_from_grey(grey))
        out.append([_bits(a[i], b[i]) for i in range(4)])
    return np.array(out)


def _assert_within_tolerance(d: np.ndarray) -> None:
    tol = R.REDUCED_DECODE_TOLERANCE
    combined = d[:, 0] + d[:, 2]  # pHash + dHash, as the near-copy search measures
    assert np.median(combined) <= tol["median_bits"]
    assert (combined <= DEFAULT_NEAR_THRESHOLD).mean() >= tol["within_threshold_share"]
    assert d.max() <= tol["max_bits_one"]


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """224-px brain-MRI phantoms saved as JPEGs (quality 90), in class folders."""
    import csv

    from medlens.data.phantoms import generate_phantoms

    root = tmp_path_factory.mktemp("audit_jpeg")
    manifest = generate_phantoms("brain_tumor", root / "src", n=120, size=224, seed=3)
    out = root / "jpeg"
    with manifest.open(newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            (out / row["label"]).mkdir(parents=True, exist_ok=True)
            with Image.open(manifest.parent / row["path"]) as im:
                im.convert("L").save(out / row["label"] / f"{i:04d}.jpg", quality=90)
    return out


def test_reduced_jpeg_decode_hashes_match_full_decode_within_tolerance(jpegs: Path):
    files = sorted(jpegs.rglob("*.jpg"))
    with Image.open(files[0]) as im:
        im.draft("L", (R.THUMB, R.THUMB))
        assert im.size[0] < 224  # the decoder really scales (DCT), not a full decode
    _assert_within_tolerance(_distances(files))


@pytest.mark.realdata
def test_reduced_decode_tolerance_on_real_brain_mri():
    folder = SHARED_DATA / "brain_mri"
    files = sorted(folder.rglob("*.jpg"))[::25][:200] if folder.is_dir() else []
    if not files:
        pytest.skip(f"{folder} has no JPEGs (the shared real data is absent)")
    _assert_within_tolerance(_distances(files))


def test_process_pool_records_equal_one_process(jpegs: Path):
    m = from_folder(jpegs)
    tasks = R._tasks(R._entries(m, {}, None), "data")
    one = R._compute_records(tasks, 1, None)
    two = R._compute_records(tasks, 2, None)
    assert [r.index for r in two] == list(range(len(tasks)))  # order kept
    for a, b in zip(one, two, strict=True):
        assert (a.sha256, a.pixels, a.phash, a.dhash, a.thumb) == (
            b.sha256,
            b.pixels,
            b.phash,
            b.dhash,
            b.thumb,
        )
        assert (a.mean, a.p50, a.exposure) == (b.mean, b.p50, b.exposure)
    # The hash-only path (splits) and the audit hash JPEGs the same way: same groups.
    hash_only = R._compute_records(R._tasks(R._entries(m, {}, None), None), 2, None)
    assert [(r.phash, r.dhash, r.thumb) for r in hash_only] == [
        (r.phash, r.dhash, r.thumb) for r in one
    ]
