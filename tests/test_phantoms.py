"""Chest X-ray phantoms: files, determinism, anatomy-aware lesion placement, and no shortcuts."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medlens.data.phantoms import (
    CHEST_CLASSES,
    generate_chest_phantoms,
    generate_phantoms,
    render_chest_case,
    render_chest_phantom,
)
from medlens.errors import DataError
from medlens.preprocess import crop_black_border


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_chest_phantoms(tmp_path_factory.mktemp("cxr"), n=31, size=64, seed=3)


# ---- files --------------------------------------------------------------------------------


def test_manifest_layout_and_balance(small_set: Path) -> None:
    root = small_set.parent
    rows = _rows(small_set)
    assert small_set.read_text().splitlines()[0] == "path,label,patient_id,mask_path"
    assert len(rows) == 31
    assert Counter(r["label"] for r in rows) == {"normal": 11, "pneumonia": 10, "tuberculosis": 10}
    assert [r["label"] for r in rows] != sorted(r["label"] for r in rows)  # shuffled
    assert len({r["patient_id"] for r in rows}) == 31
    for i, r in enumerate(rows):
        assert r["path"] == f"images/cxr_{i:05d}.png" and r["mask_path"] == f"masks/cxr_{i:05d}.png"
        assert r["patient_id"] == f"P{i:05d}"
        assert (root / r["path"]).is_file() and (root / r["mask_path"]).is_file()


def test_files_are_grey_pngs_and_masks_match_labels(small_set: Path) -> None:
    root = small_set.parent
    for r in _rows(small_set):
        with Image.open(root / r["path"]) as im:
            assert im.format == "PNG" and im.mode == "L" and im.size == (64, 64)
            img = np.asarray(im)
        with Image.open(root / r["mask_path"]) as mk:
            assert mk.format == "PNG" and mk.mode == "L"
            mask = np.asarray(mk)
        assert set(np.unique(mask)) <= {0, 255}
        assert img.std() > 10  # real content, not blank
        if r["label"] == "normal":
            assert not mask.any()
        else:
            assert mask.any()


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = generate_chest_phantoms(tmp_path / "a", n=9, size=48, seed=5).parent
    b = generate_chest_phantoms(tmp_path / "b", n=9, size=48, seed=5).parent
    c = generate_chest_phantoms(tmp_path / "c", n=9, size=48, seed=6).parent
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa == fb
    images = [k for k in fa if k.startswith("images/")]
    assert len(images) == 9 and all(fa[k] != fc[k] for k in images)


def test_rerun_overwrites_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "set"
    generate_chest_phantoms(out, n=12, size=32, seed=1)
    manifest = generate_chest_phantoms(out, n=6, size=32, seed=1)
    fresh = generate_chest_phantoms(tmp_path / "fresh", n=6, size=32, seed=1).parent
    assert len(_rows(manifest)) == 6
    assert _files(out) == _files(fresh)  # no stale files from the larger run


def test_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match="label"):
        render_chest_phantom(rng, "covid", 64)
    with pytest.raises(DataError, match="size"):
        render_chest_phantom(rng, "normal", 8)
    with pytest.raises(DataError, match="n:"):
        generate_chest_phantoms(Path("/nonexistent-never-created"), n=2)


# ---- rendering ----------------------------------------------------------------------------


def test_render_is_pure_and_well_formed() -> None:
    for label in CHEST_CLASSES:
        img, mask = render_chest_phantom(np.random.default_rng(42), label, 96)
        img2, mask2 = render_chest_phantom(np.random.default_rng(42), label, 96)
        np.testing.assert_array_equal(img, img2)
        np.testing.assert_array_equal(mask, mask2)
        assert img.shape == mask.shape == (96, 96)
        assert img.dtype == np.float32 and mask.dtype == np.bool_
        assert img.min() >= 0.0 and img.max() <= 1.0


def _lung_rows(lungs: np.ndarray, value: int) -> tuple[int, int]:
    rows = np.flatnonzero((lungs == value).any(axis=1))
    return int(rows[0]), int(rows[-1])


def test_pneumonia_is_unilateral_and_mid_lower_zone() -> None:
    for i in range(16):
        case = render_chest_case(np.random.default_rng([21, i]), "pneumonia", 128)
        ys, xs = np.nonzero(case.mask)
        assert ys.size > 0
        left, right = (xs < 64).sum(), (xs >= 64).sum()
        assert min(left, right) == 0, "pneumonia must involve one lung only"
        top, bottom = _lung_rows(case.lungs, 1 if left else 2)
        lower_two_thirds = ys >= top + (bottom - top) / 3
        assert lower_two_thirds.mean() >= 0.8


def test_tuberculosis_is_bilateral_upper_zone() -> None:
    for i in range(16):
        case = render_chest_case(np.random.default_rng([22, i]), "tuberculosis", 128)
        ys, xs = np.nonzero(case.mask)
        upper = np.zeros(ys.shape, dtype=bool)
        for value, on_side in ((1, xs < 64), (2, xs >= 64)):
            top, bottom = _lung_rows(case.lungs, value)
            in_upper = on_side & (ys <= top + (bottom - top) / 2)
            assert in_upper.any(), f"no lesion in the upper half of lung {value}"
            upper |= in_upper
        assert upper.mean() >= 0.8


# ---- learnable signal, no shortcut --------------------------------------------------------


def _global_features(img: np.ndarray) -> list[float]:
    """Statistics that do not look for a lesion: intensity, border, marker corner."""
    size = img.shape[0]
    q = size // 4
    _, (y0, y1, x0, x1) = crop_black_border(img)
    border = 1.0 - (y1 - y0) * (x1 - x0) / size**2
    corners = [img[:q, :q], img[:q, -q:], img[-q:, :q], img[-q:, -q:]]
    peak = [float(np.sort(c.ravel())[-8:].mean()) for c in corners]  # burned-in letter
    marker_side = (peak[1] + peak[3]) - (peak[0] + peak[2])
    marker_top = (peak[0] + peak[1]) - (peak[2] + peak[3])
    p5, p95 = np.percentile(img, [5, 95])
    return [
        float(img.mean()),
        float(img.std()),
        float(p5),
        float(p95),
        border,
        marker_side,
        marker_top,
    ]


def test_no_shortcut_in_global_statistics() -> None:
    """A classifier on acquisition statistics alone must be near chance (1/3)."""
    features, labels = [], []
    for i in range(150):
        label = i % 3
        img, _ = render_chest_phantom(np.random.default_rng([31, i]), CHEST_CLASSES[label], 64)
        img = np.rint(img * 255) / 255  # as stored on disk
        features.append(_global_features(img))
        labels.append(label)
    x, y = np.asarray(features), np.asarray(labels)
    assert x[:, 4].max() > 0 and np.ptp(x[:, 0]) > 0.1  # the nuisances really vary
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    pred = cross_val_predict(clf, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0))
    score = balanced_accuracy_score(y, pred)
    print(f"shortcut probe balanced accuracy: {score:.3f} (chance 0.333)")
    assert score < 0.55


def test_lesion_carries_the_signal() -> None:
    """Same patient and acquisition with and without the lesion: only the mask region changes.

    The label draws only the lesion stream, so rendering one generator state as ``normal`` and
    as a disease gives twins that differ by the lesion alone. The diseased twin must be brighter
    inside the lesion mask (a consolidation/nodule is denser than aerated lung) by a clear margin
    relative to the noise, and identical up to noise scaling outside it.
    """
    uplift, outside = [], []
    for i in range(24):
        label = ("pneumonia", "tuberculosis")[i % 2]
        sick = render_chest_case(np.random.default_rng([41, i]), label, 96)
        well = render_chest_case(np.random.default_rng([41, i]), "normal", 96)
        np.testing.assert_array_equal(sick.lungs, well.lungs)  # same anatomy and pose
        m = sick.mask
        uplift.append(float((sick.image[m] - well.image[m]).mean()))
        outside.append(float(np.abs(sick.image[~m] - well.image[~m]).mean()))
    uplift_arr = np.asarray(uplift)
    assert (uplift_arr > 0.02).all()  # every lesion is at least faintly visible
    assert uplift_arr.mean() > 0.06  # most are clearly visible (noise sigma is ~0.01-0.03)
    assert np.std(uplift_arr) > 0.015  # contrast varies: some subtle, some obvious
    assert max(outside) < 0.005


def test_generate_phantoms_by_kind(tmp_path: Path) -> None:
    manifest = generate_phantoms("chest_xray", tmp_path / "k", n=3, size=32, seed=0)
    assert {r["label"] for r in _rows(manifest)} == set(CHEST_CLASSES)
    with pytest.raises(DataError, match="chest_xray"):
        generate_phantoms("knee_mri", tmp_path / "x")
