from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.data.manifest import from_csv, from_folder, from_npz
from medlens.data.splits import load_or_make_splits, make_splits, read_splits, write_splits
from medlens.errors import DataError
from medlens.recipes import SplitConfig

CLASSES = ["normal", "pneumonia", "tuberculosis"]


def _img(p: Path, value: int = 100) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(p)


def _folder(root: Path, per_class: int = 10) -> Path:
    for c in ["Normal", "Pneumonia", "Tuberculosis"]:
        for i in range(per_class):
            _img(root / c / f"{c}_{i}.png", i)
    (root / "Normal" / "notes.txt").write_text("not an image")
    (root / "other").mkdir()
    return root


def test_folder_manifest_matches_classes_case_insensitively(tmp_path: Path):
    m = from_folder(_folder(tmp_path / "d"), CLASSES)
    assert m.classes == CLASSES
    assert m.counts() == {"normal": 10, "pneumonia": 10, "tuberculosis": 10}
    assert any(s.endswith("notes.txt") for s in m.skipped)
    assert m.key(m.samples[0]).startswith("Normal/")


def test_folder_missing_class_is_clear(tmp_path: Path):
    root = tmp_path / "d"
    _img(root / "normal" / "a.png")
    with pytest.raises(DataError, match=r"pneumonia"):
        from_folder(root, CLASSES)
    with pytest.raises(DataError, match="not found"):
        from_folder(tmp_path / "nope", CLASSES)


def test_csv_manifest_with_patients_masks_and_boxes(tmp_path: Path):
    _img(tmp_path / "img" / "a.png")
    _img(tmp_path / "img" / "b.png")
    _img(tmp_path / "mask" / "a.png", 255)
    (tmp_path / "m.csv").write_text(
        "path,label,patient_id,mask_path,x0,y0,x1,y1\n"
        "img/a.png,tuberculosis,P1,mask/a.png,1,1,4,4\n"
        "img/a.png,tuberculosis,P1,mask/a.png,5,5,7,7\n"
        "img/b.png,normal,P2,,,,,\n"
    )
    m = from_csv(
        tmp_path / "m.csv", ["normal", "tuberculosis"], box_columns=["x0", "y0", "x1", "y1"]
    )
    a = next(s for s in m.samples if s.path.endswith("a.png"))
    assert a.patient_id == "P1" and a.boxes == ((1, 1, 4, 4), (5, 5, 7, 7))
    assert a.mask_path and Path(a.mask_path).is_file()
    (tmp_path / "bad.csv").write_text("file,label\nimg/a.png,normal\n")
    with pytest.raises(DataError, match="'path' is missing"):
        from_csv(tmp_path / "bad.csv", CLASSES)
    (tmp_path / "conflict.csv").write_text("path,label\nimg/a.png,normal\nimg/a.png,tuberculosis\n")
    with pytest.raises(DataError, match="two labels"):
        from_csv(tmp_path / "conflict.csv", ["normal", "tuberculosis"])


def test_npz_manifest(tmp_path: Path):
    f = tmp_path / "d.npz"
    np.savez(
        f,
        train_images=np.zeros((5, 8, 8), np.uint8),
        train_labels=np.array([[0], [1], [0], [1], [1]]),
    )
    m = from_npz(f, {0: "normal", 1: "pneumonia"}, classes=["normal", "pneumonia"])
    assert m.counts() == {"normal": 2, "pneumonia": 3}
    assert m.key(m.samples[1]) == "d.npz::train_images[1]"
    with pytest.raises(DataError, match="label_map"):
        from_npz(f, {0: "normal"})


def test_splits_stratified_grouped_and_reused(tmp_path: Path):
    root = tmp_path / "d"
    rows = ["path,label,patient_id"]
    for i in range(90):
        c = CLASSES[i % 3]
        _img(root / f"{i}.png", i)
        rows.append(f"{i}.png,{c},P{i // 2}")  # two images per patient
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    m = from_csv(root / "m.csv", CLASSES)
    s = make_splits(m, val=0.2, test=0.2, seed=3)
    counts = s.counts()
    assert sum(counts.values()) == 90 and all(v > 0 for v in counts.values())
    assert 12 <= counts["test"] <= 24
    # no patient in two splits
    by_patient: dict[str, set[str]] = {}
    for smp in m.samples:
        by_patient.setdefault(smp.patient_id, set()).add(s.assignment[m.key(smp)])
    assert all(len(v) == 1 for v in by_patient.values())
    # every class in every split
    for split in ("train", "val", "test"):
        assert {x.label for x in s.samples(m, split)} == set(CLASSES)
    path = tmp_path / "run" / "splits.csv"
    s1, reused1 = load_or_make_splits(m, SplitConfig(val=0.2, test=0.2, seed=3), path)
    s2, reused2 = load_or_make_splits(m, SplitConfig(val=0.2, test=0.2, seed=99), path)
    assert not reused1 and reused2 and s1.assignment == s2.assignment
    # a split file from other data is refused
    other = m.subset([m.key(x) for x in m.samples[:80]])
    with pytest.raises(DataError, match="does not match"):
        read_splits(path, other)
    write_splits(s, m, tmp_path / "again.csv")
    assert read_splits(tmp_path / "again.csv", m).assignment == s.assignment


def test_fingerprint_changes_with_file_content(tmp_path: Path):
    root = _folder(tmp_path / "d", 3)
    f1 = from_folder(root, CLASSES).fingerprint()
    _img(root / "Normal" / "Normal_0.png", 250)
    f2 = from_folder(root, CLASSES).fingerprint()
    assert f1["manifest_sha256"] == f2["manifest_sha256"]
    assert f1["files_sha256"] != f2["files_sha256"]


def test_few_patients_hold_out_whole_patients():
    from medlens.data.manifest import Manifest, Sample
    from medlens.data.splits import make_splits

    samples = [
        Sample(f"/d/p{p}_s{k}.png", "a" if k % 2 else "b", patient_id=f"P{p}")
        for p in range(5)
        for k in range(10)
    ]
    m = Manifest(samples, ["a", "b"])
    splits = make_splits(m, 0.15, 0.15, seed=0)  # asks for 7 folds of 5 patients
    by_patient: dict[str, set[str]] = {}
    for s in samples:
        by_patient.setdefault(s.patient_id, set()).add(splits.assignment[m.key(s)])
    assert all(len(v) == 1 for v in by_patient.values())  # no patient crosses splits
    assert {next(iter(v)) for v in by_patient.values()} == {"train", "val", "test"}


def test_one_patient_cannot_be_split_and_says_why():
    from medlens.data.manifest import Manifest, Sample
    from medlens.data.splits import make_splits
    from medlens.errors import DataError

    samples = [Sample(f"/d/s{k}.png", "a" if k % 2 else "b", patient_id="P0") for k in range(12)]
    with pytest.raises(DataError, match="group_by_patient"):
        make_splits(Manifest(samples, ["a", "b"]), 0.15, 0.15, seed=0)
