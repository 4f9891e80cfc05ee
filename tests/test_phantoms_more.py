"""Liver, blood smear, brain and SIJ phantoms: files, determinism, designed signal, no shortcuts.

Each kind is checked the same way as the chest phantoms (parametrised over kinds), plus the
monotone or anatomical property its design promises.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medlens.data.phantoms import (
    BRAIN_CLASSES,
    LEUKEMIA_CLASSES,
    LIVER_CLASSES,
    PHANTOM_KINDS,
    SACROILIITIS_CLASSES,
    generate_phantoms,
    render_brain_case,
    render_brain_tumor_phantom,
    render_leukemia_case,
    render_leukemia_phantom,
    render_liver_case,
    render_liver_phantom,
    render_sacroiliitis_case,
    render_sacroiliitis_phantom,
)
from medlens.errors import DataError


@dataclass(frozen=True)
class Kind:
    name: str
    classes: tuple[str, ...]
    case: Callable[[np.random.Generator, str, int], Any]
    phantom: Callable[[np.random.Generator, str, int], tuple[np.ndarray, ...]]
    prefix: str
    columns: tuple[str, ...]
    rgb: bool = False


KINDS = {
    k.name: k
    for k in (
        Kind(
            "liver_fibrosis",
            LIVER_CLASSES,
            render_liver_case,
            render_liver_phantom,
            "liver",
            ("path", "label", "patient_id", "mask_path", "stage"),
        ),
        Kind(
            "leukemia",
            LEUKEMIA_CLASSES,
            render_leukemia_case,
            render_leukemia_phantom,
            "smear",
            ("path", "label", "patient_id", "mask_path"),
            rgb=True,
        ),
        Kind(
            "brain_tumor",
            BRAIN_CLASSES,
            render_brain_case,
            render_brain_tumor_phantom,
            "brain",
            ("path", "label", "patient_id", "mask_path", "ct_path", "stage", "risk"),
        ),
        Kind(
            "sacroiliitis",
            SACROILIITIS_CLASSES,
            render_sacroiliitis_case,
            render_sacroiliitis_phantom,
            "sij",
            (
                "path",
                "label",
                "patient_id",
                "mask_path",
                "joint_mask_path",
                "stage",
                "detected",
            ),
        ),
    )
}
HEALTHY = {"liver_fibrosis": "F0", "leukemia": "Benign", "brain_tumor": "notumor"}
HEALTHY["sacroiliitis"] = "none"
kinds = pytest.mark.parametrize("kind", list(KINDS))


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _read(path: Path) -> tuple[str, np.ndarray]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.mode, np.asarray(im)


@pytest.fixture(scope="module")
def small_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small data set per kind: two per class plus one (48 px)."""
    root = tmp_path_factory.mktemp("phantoms")
    return {
        name: PHANTOM_KINDS[name](root / name, n=2 * len(k.classes) + 1, size=48, seed=3)
        for name, k in KINDS.items()
    }


# ---- files --------------------------------------------------------------------------------


@kinds
def test_manifest_layout_and_balance(kind: str, small_sets: dict[str, Path]) -> None:
    spec, manifest = KINDS[kind], small_sets[kind]
    root, rows = manifest.parent, _rows(manifest)
    n = 2 * len(spec.classes) + 1
    assert manifest.read_text().splitlines()[0] == ",".join(spec.columns)
    assert len(rows) == n
    counts = Counter(r["label"] for r in rows)
    assert set(counts) == set(spec.classes) and set(counts.values()) <= {2, 3}
    order = [spec.classes.index(r["label"]) for r in rows]
    assert order != sorted(order)  # shuffled
    assert len({r["patient_id"] for r in rows}) == n
    file_cols = [c for c in spec.columns if c.endswith("_path") or c == "path"]
    for i, r in enumerate(rows):
        assert r["path"] == f"images/{spec.prefix}_{i:05d}.png"
        for col in file_cols:
            assert not Path(r[col]).is_absolute() and (root / r[col]).is_file()


@kinds
def test_images_and_masks_match_labels(kind: str, small_sets: dict[str, Path]) -> None:
    spec, manifest = KINDS[kind], small_sets[kind]
    root = manifest.parent
    for r in _rows(manifest):
        mode, img = _read(root / r["path"])
        assert mode == ("RGB" if spec.rgb else "L") and img.shape[:2] == (48, 48)
        assert img.std() > 8  # real content
        mode, mask = _read(root / r["mask_path"])
        assert mode == "L" and mask.shape == (48, 48) and set(np.unique(mask)) <= {0, 255}
        if kind == "leukemia":  # benign lymphocytes are cells of interest too
            assert mask.any()
        else:
            assert mask.any() == (r["label"] != HEALTHY[kind]), r
        if kind == "brain_tumor":
            mode, ct = _read(root / r["ct_path"])
            assert mode == "L" and ct.shape == img.shape
            stage, risk = int(r["stage"]), float(r["risk"])
            assert (stage == 0) == (r["label"] == "notumor") and 0 <= stage <= 3
            assert 0.0 <= risk <= 1.0
        if kind == "sacroiliitis":
            _, joints = _read(root / r["joint_mask_path"])
            assert set(np.unique(joints)) == {0, 255}  # both joints in every image
            assert int(r["stage"]) == SACROILIITIS_CLASSES.index(r["label"])
            assert int(r["detected"]) == int(r["label"] != "none")
        if kind == "liver_fibrosis":
            assert int(r["stage"]) == LIVER_CLASSES.index(r["label"])


@kinds
def test_same_seed_same_bytes_other_seed_differs(kind: str, tmp_path: Path) -> None:
    n = len(KINDS[kind].classes)
    gen = PHANTOM_KINDS[kind]
    a = _files(gen(tmp_path / "a", n=n, size=32, seed=5).parent)
    b = _files(gen(tmp_path / "b", n=n, size=32, seed=5).parent)
    c = _files(gen(tmp_path / "c", n=n, size=32, seed=6).parent)
    assert a == b
    images = [k for k in a if k.startswith("images/")]
    assert len(images) == n and all(a[k] != c[k] for k in images)


def test_rerun_overwrites_cleanly(tmp_path: Path) -> None:
    """The shared writer removes stale files from every folder (here: three of them)."""
    out = tmp_path / "set"
    gen = PHANTOM_KINDS["sacroiliitis"]
    gen(out, n=10, size=32, seed=1)
    manifest = gen(out, n=5, size=32, seed=1)
    fresh = gen(tmp_path / "fresh", n=5, size=32, seed=1).parent
    assert len(_rows(manifest)) == 5
    assert _files(out) == _files(fresh)


@kinds
def test_bad_arguments(kind: str) -> None:
    spec = KINDS[kind]
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match="label"):
        spec.phantom(rng, "unknown", 64)
    with pytest.raises(DataError, match="size"):
        spec.phantom(rng, spec.classes[0], 8)
    with pytest.raises(DataError, match="n:"):
        PHANTOM_KINDS[kind](Path("/nonexistent-never-created"), n=len(spec.classes) - 1)
    with pytest.raises(DataError, match="seed"):
        PHANTOM_KINDS[kind](Path("/nonexistent-never-created"), n=8, seed=-1)


@kinds
def test_generate_phantoms_by_kind(kind: str, tmp_path: Path) -> None:
    spec = KINDS[kind]
    manifest = generate_phantoms(kind, tmp_path / kind, n=len(spec.classes), size=32, seed=0)
    assert {r["label"] for r in _rows(manifest)} == set(spec.classes)


# ---- rendering ----------------------------------------------------------------------------


@kinds
def test_render_is_pure_and_well_formed(kind: str) -> None:
    spec = KINDS[kind]
    for label in spec.classes:
        out1 = spec.phantom(np.random.default_rng(42), label, 64)
        out2 = spec.phantom(np.random.default_rng(42), label, 64)
        for arr1, arr2 in zip(out1, out2, strict=True):
            np.testing.assert_array_equal(arr1, arr2)
        img, masks = out1[0], out1[1:]
        assert img.shape == ((64, 64, 3) if spec.rgb else (64, 64))
        assert img.dtype == np.float32 and img.min() >= 0.0 and img.max() <= 1.0
        assert all(m.shape == (64, 64) and m.dtype == np.bool_ for m in masks)


# Dilation (pixels at 64 px) of the lesion/cell region that must hold the twins' difference.
_REACH = {"liver_fibrosis": 3, "leukemia": 2, "brain_tumor": 2, "sacroiliitis": 3}


def _region(kind: str, case: Any) -> np.ndarray:
    """Where the label may change the image: the lesion, plus the structures it belongs to."""
    region = case.mask.copy()
    if kind == "leukemia":
        region |= case.cells  # cell size and cytoplasm change with the stage
    if kind == "liver_fibrosis":
        region |= case.liver  # septa are mean-preserving inside the liver; nodular capsule
    if kind == "sacroiliitis":
        region |= case.joints  # erosions break the subchondral plates
    if kind == "brain_tumor" and case.label == "glioma":
        region |= case.brain  # oedema spreads along the white matter
    return region


@kinds
def test_twins_differ_only_at_the_lesion(kind: str) -> None:
    """Same generator state, healthy vs diseased: same anatomy and acquisition, the difference
    lies in (a neighbourhood of) the lesion, and the lesion really changes the image."""
    spec = KINDS[kind]
    kernel = np.ones((2 * _REACH[kind] + 1,) * 2, np.uint8)
    for i, label in enumerate(spec.classes[1:] * 2):
        sick = spec.case(np.random.default_rng([51, i]), label, 64)
        well = spec.case(np.random.default_rng([51, i]), HEALTHY[kind], 64)
        diff = np.abs(sick.image - well.image)
        diff = diff.sum(axis=2) if diff.ndim == 3 else diff
        region = _region(kind, sick) | _region(kind, well)
        near = cv2.dilate(region.astype(np.uint8), kernel) > 0
        energy = float((diff**2).sum())
        assert energy > 0 and float((diff[near] ** 2).sum()) / energy > 0.9, (label, i)
        assert float(diff[sick.mask].mean()) > 0.03, (label, i)
        if kind == "sacroiliitis":
            np.testing.assert_array_equal(sick.joints, well.joints)
        if kind == "liver_fibrosis":
            np.testing.assert_array_equal(sick.fov, well.fov)


# ---- designed, monotone signal -------------------------------------------------------------


def _per_class(kind: str, *fns: Callable[[Any], float], n: int = 10) -> list[list[float]]:
    """For each ``fn``: its mean per class over the same ``n`` generator states (twins)."""
    spec = KINDS[kind]
    out = [[0.0] * len(spec.classes) for _ in fns]
    for j, c in enumerate(spec.classes):
        cases = [spec.case(np.random.default_rng([61, i]), c, 64) for i in range(n)]
        for f, fn in enumerate(fns):
            out[f][j] = float(np.mean([fn(case) for case in cases]))
    return out


def _increasing(values: list[float]) -> bool:
    return all(b > a for a, b in pairwise(values))


def test_liver_septa_grow_with_stage() -> None:
    (fraction,) = _per_class("liver_fibrosis", lambda c: float(c.mask.mean()))
    assert fraction[0] == 0.0 and _increasing(fraction), fraction


def test_smear_nuclei_grow_and_pale_with_stage() -> None:
    def nucleus_area(c: Any) -> float:
        return float(c.mask.sum()) / len(c.meta["cells"])

    def nucleus_brightness(c: Any) -> float:  # finer, less dense chromatin: paler nuclei
        return float(c.image[c.mask].mean())

    def nc_ratio(c: Any) -> float:
        return float(np.mean([m["nc_ratio"] for m in c.meta["cells"]]))

    area, brightness, ratio = _per_class("leukemia", nucleus_area, nucleus_brightness, nc_ratio)
    assert _increasing(area), area
    assert _increasing(brightness), brightness
    assert _increasing(ratio), ratio


def test_sij_inflammation_grows_with_severity() -> None:
    (area,) = _per_class("sacroiliitis", lambda c: float(c.mask.mean()))
    assert area[0] == 0.0 and _increasing(area), area
    # Oedema lies next to the joints (subchondral bone), not anywhere in the pelvis.
    for i in range(6):
        case = render_sacroiliitis_case(np.random.default_rng([62, i]), "moderate", 64)
        near = cv2.dilate(case.joints.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        assert case.mask[near].sum() >= 0.9 * case.mask.sum()


def test_brain_ct_pairs_mri_and_tumour_is_hyperdense() -> None:
    stages: dict[str, list[int]] = {c: [] for c in BRAIN_CLASSES}
    risks: dict[str, list[float]] = {c: [] for c in BRAIN_CLASSES}
    for i in range(32):
        label = BRAIN_CLASSES[i % 4]
        case = render_brain_case(np.random.default_rng([63, i]), label, 64)
        assert case.ct.shape == case.image.shape and case.ct.dtype == np.float32
        stages[label].append(case.stage)
        risks[label].append(case.risk)
        if label == "notumor":
            assert not case.mask.any() and case.stage == 0
            continue
        # Brain tissue away from the tumour and its oedema, vs the tumour, on CT.
        ring = cv2.dilate(case.mask.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
        background = case.brain & ~ring & (case.ct > 0.2) & (case.ct < 0.8)
        level = float(np.median(case.ct[background]))
        # Most of the tumour is hyperdense (a necrotic glioma centre is not), and the hyperdense
        # part of the brain is where the tumour is.
        assert np.percentile(case.ct[case.mask], 75) > level + 0.08, (label, i)
        hyper = case.ct > level + 0.1
        assert hyper[case.mask].mean() > 3 * hyper[background].mean(), (label, i)
    assert all(1 <= s <= 3 for c in BRAIN_CLASSES[1:] for s in stages[c])
    assert max(stages["glioma"]) > min(stages["glioma"])  # stage follows size, not class
    mean_risk = [float(np.mean(risks[c])) for c in ("notumor", "pituitary", "glioma")]
    assert _increasing(mean_risk), mean_risk


# ---- no shortcut --------------------------------------------------------------------------


@kinds
def test_no_shortcut_in_global_statistics(kind: str) -> None:
    """A classifier on global intensity statistics (mean, std, p5, p95, per-channel means) must
    be near chance: nuisances (gain, gamma, noise, stain) never see the label, and lesions are
    too small or mean-preserving to move a histogram."""
    spec = KINDS[kind]
    k = len(spec.classes)
    n = 20 * k if k == 5 else 25 * k  # 100 images
    features, labels = [], []
    for i in range(n):
        img, *_ = spec.phantom(np.random.default_rng([71, i]), spec.classes[i % k], 64)
        img = np.rint(img * 255) / 255  # as stored on disk
        p5, p95 = np.percentile(img, [5, 95])
        row = [float(img.mean()), float(img.std()), float(p5), float(p95)]
        if img.ndim == 3:
            row += [float(m) for m in img.reshape(-1, 3).mean(axis=0)]
        features.append(row)
        labels.append(i % k)
    x, y = np.asarray(features), np.asarray(labels)
    assert np.ptp(x[:, 0]) > 0.05  # the nuisances really vary
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    pred = cross_val_predict(clf, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0))
    score = balanced_accuracy_score(y, pred)
    print(f"{kind}: shortcut probe balanced accuracy {score:.3f} (chance {1 / k:.3f})")
    assert score < 1 / k + 0.2
