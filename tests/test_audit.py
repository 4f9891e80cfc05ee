"""Dataset audit: planted problems are all caught, clean data raises no alarm (synthetic data)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from medlens.data.audit import (
    AuditError,
    LeakageError,
    audit,
    duplicate_groups,
    split_leakage,
    write_audit,
)
from medlens.data.audit.nearsearch import _near_pairs
from medlens.data.manifest import from_csv, from_folder
from medlens.data.splits import load_or_make_splits, make_splits

SIZE = 96


def _texture(rng: np.random.Generator, size: int = SIZE) -> Image.Image:
    """A distinct random textured grey image: blobs at three scales plus fine noise."""
    acc = np.zeros((size, size), np.float32)
    for cells, weight in ((4, 1.0), (8, 0.6), (16, 0.3)):
        low = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
        acc += weight * np.asarray(low.resize((size, size), Image.Resampling.BICUBIC), np.float32)
    acc = (acc - acc.min()) / (np.ptp(acc) + 1e-6)
    acc = 0.15 + 0.7 * acc + rng.normal(0, 0.02, acc.shape)
    return Image.fromarray((np.clip(acc, 0, 1) * 255).astype(np.uint8))


def _save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def _distinct(root: Path, classes: dict[str, int], seed: int, fmt: dict[str, str] | None = None):
    rng = np.random.default_rng(seed)
    fmt = fmt or {}
    for c, n in classes.items():
        ext = fmt.get(c, "png")
        for i in range(n):
            kw = {"quality": 95} if ext == "jpg" else {}
            _save(_texture(rng), root / c / f"{c}_{i:03d}.{ext}", **kw)


def _jpeg70(img: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=70)
    buf.seek(0)
    return Image.open(buf).copy()


PLANTED = {  # copy file -> (original file, how)
    "a/copy_exact.png": ("a/a_000.png", "exact"),
    "a/copy_resized.png": ("a/a_001.png", "resize"),
    "a/copy_q70.jpg": ("a/a_002.png", "jpeg70"),
    "a/copy_bright.png": ("a/a_003.png", "bright"),
    "a/copy_flipped.png": ("a/a_004.png", "flip"),
    "b/copy_conflict.png": ("a/a_005.png", "exact"),
}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory):
    """24 distinct images per class, six planted copies and three broken files."""
    root = tmp_path_factory.mktemp("planted")
    _distinct(root, {"a": 24, "b": 24}, seed=1)
    for copy, (orig, how) in PLANTED.items():
        src = Image.open(root / orig)
        if how == "exact":
            shutil.copyfile(root / orig, root / copy)
        elif how == "resize":
            _save(src.resize((64, 64), Image.Resampling.BILINEAR), root / copy)
        elif how == "jpeg70":
            _save(src, root / copy, quality=70)
        elif how == "bright":
            _save(ImageEnhance.Brightness(src).enhance(1.1), root / copy)
        elif how == "flip":
            _save(ImageOps.mirror(src), root / copy)
    good = (root / "a" / "a_010.png").read_bytes()
    (root / "a" / "broken_truncated.png").write_bytes(good[: len(good) // 2])
    (root / "b" / "broken_empty.png").write_bytes(b"")
    (root / "b" / "broken_text.jpg").write_text("this is not an image\n")
    (root / "b" / "notes.txt").write_text("unsupported file")
    m = from_folder(root)
    return root, m, audit(m, progress=False, probe=False)


def _group_of(report, rel: str) -> set[str]:
    for g in report.groups:
        keys = {m["key"] for m in g.members}
        if rel in keys:
            return keys
    return set()


def test_planted_copies_are_grouped_and_classified(planted):
    _, _, rep = planted
    for copy, (orig, _how) in PLANTED.items():
        assert _group_of(rep, copy) == {copy, orig}, copy
    assert len(rep.groups) == len(PLANTED)  # and nothing else: no false pairs among distinct
    exact = sorted(sorted(m["key"] for m in g.members) for g in rep.exact_groups)
    assert exact == [["a/a_000.png", "a/copy_exact.png"], ["a/a_005.png", "b/copy_conflict.png"]]
    kinds = {g.members[-1]["key"]: g.kind for g in rep.groups}
    assert kinds["a/copy_flipped.png"] == "near" and kinds["a/copy_q70.jpg"] == "near"
    conflict = [g for g in rep.groups if g.cross_class]
    assert len(conflict) == 1 and conflict[0].labels == ["a", "b"]
    codes = {f.code: f.severity for f in rep.verdict}
    assert codes["conflicting_labels"] == "critical"
    assert {"exact_duplicates", "near_duplicates"} <= codes.keys()
    summary = rep.duplicate_summary()
    assert summary["n_cross_class"] == 1 and summary["n_within_class"] == 5


def test_broken_files_are_reported_with_reasons(planted):
    _, _, rep = planted
    kinds = {Path(p["path"]).name: p["kind"] for p in rep.problems}
    assert kinds["broken_truncated.png"] == "truncated_or_corrupt"
    assert kinds["broken_empty.png"] == "zero_byte"
    assert kinds["broken_text.jpg"] == "not_an_image"
    assert kinds["notes.txt"] == "unsupported"
    assert all(p["reason"] for p in rep.problems)
    assert rep.n_readable == rep.n_files - 3
    unread = next(f for f in rep.verdict if f.code == "unreadable")
    assert "3 file(s) cannot be read" in unread.message


def test_duplicate_groups_match_the_audit(planted):
    _, m, rep = planted
    groups = duplicate_groups(m)  # the hash-only path (JPEGs decoded at reduced scale)
    assert groups == rep.copies()
    assert set(groups) == {k for pair in PLANTED.items() for k in (pair[0], pair[1][0])}
    assert len(set(groups.values())) == len(PLANTED)


def test_write_audit_html_is_self_contained(planted, tmp_path: Path):
    _, _, rep = planted
    html_path, json_path = write_audit(rep, tmp_path / "out")
    text = html_path.read_text(encoding="utf-8")
    assert "data:image/png;base64," in text
    assert "http://" not in text and "https://" not in text and "<script" not in text
    d = json.loads(json_path.read_text(encoding="utf-8"))
    assert d["severity"] == "critical"
    assert d["duplicates"]["n_groups"] == len(PLANTED)
    assert d["problems"]["counts"]["zero_byte"] == 1
    (tmp_path / "blocked").write_text("a file, not a folder")
    with pytest.raises(AuditError, match="writable"):
        write_audit(rep, tmp_path / "blocked")


def test_format_shortcut_is_flagged_and_named(tmp_path: Path):
    _distinct(tmp_path / "d", {"neg": 30, "pos": 30}, seed=2, fmt={"pos": "jpg"})
    rep = audit(from_folder(tmp_path / "d"), progress=False)
    p = rep.probe
    assert p is not None and p.balanced_accuracy is not None
    assert p.balanced_accuracy >= 0.9 and p.chance == 0.5
    assert p.balanced_accuracy > p.shuffled_p95
    assert p.level == "critical" and "format" in p.carriers
    fmt = next(a for a in rep.associations if a.prop == "format")
    assert fmt.level == "critical" and fmt.cramers_v > 0.9
    finding = next(f for f in rep.verdict if f.code == "shortcut_probe")
    assert finding.severity == "critical" and "format" in finding.message
    assert not rep.groups


def test_clean_data_raises_no_alarm(tmp_path: Path):
    _distinct(tmp_path / "d", {"neg": 40, "pos": 40}, seed=3)
    m = from_folder(tmp_path / "d")
    splits = make_splits(m, val=0.2, test=0.2, seed=0)
    rep = audit(m, splits=splits, progress=False)
    assert rep.groups == [] and rep.exact_groups == [] and rep.problems == []
    assert rep.probe is not None and rep.probe.level == "ok"
    assert rep.probe.balanced_accuracy is not None
    assert abs(rep.probe.balanced_accuracy - 0.5) < 0.15
    assert all(a.level == "ok" for a in rep.associations)
    assert rep.leakage is not None and rep.leakage.ok
    assert rep.severity == "ok" and [f.code for f in rep.verdict] == ["clean"]
    json.dumps(rep.to_dict())  # JSON-safe


def _patients(root: Path) -> Path:
    """Twelve patients with three images each, plus one copy of a train image under a new name."""
    rng = np.random.default_rng(4)
    rows = ["path,label,patient_id"]
    for p in range(12):
        for i in range(3):
            name = f"img/p{p}_{i}.png"
            _save(_texture(rng), root / name)
            rows.append(f"{name},{'pos' if p % 2 else 'neg'},P{p}")
    shutil.copyfile(root / "img/p0_0.png", root / "img/renamed.png")
    rows.append("img/renamed.png,neg,P99")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv"


def test_patient_and_copy_leakage_across_given_splits(tmp_path: Path):
    m = from_csv(_patients(tmp_path), ["neg", "pos"])
    assignment = {}
    for s in m.samples:
        k = m.key(s)
        p = int(s.patient_id[1:])
        assignment[k] = "test" if p in (1, 99) or k == "img/p2_2.png" else "train"
    leak = split_leakage(m, assignment)
    assert not leak.ok
    assert leak.patients_crossing == {"P2": ["test", "train"]}
    assert leak.n_groups_crossing == 1 and leak.n_images_crossing == 2
    assert leak.split_pairs == {"test+train": 1}
    assert "renamed.png" in leak.message and "1 patient(s)" in leak.message
    with pytest.raises(LeakageError, match="leaks"):
        leak.raise_if_leaking()
    rep = audit(m, splits=assignment, progress=False, probe=False)
    codes = {f.code: f.severity for f in rep.verdict}
    assert codes["split_leakage"] == "critical"
    assert [g.splits for g in rep.groups if g.cross_split] == [["test", "train"]]
    with pytest.raises(AuditError, match="does not cover"):
        audit(m, splits={"elsewhere/x.png": "train"}, progress=False)


def test_against_folder_finds_train_test_copies(tmp_path: Path):
    _distinct(tmp_path / "train", {"a": 8, "b": 8}, seed=5)
    _distinct(tmp_path / "test", {"a": 8, "b": 8}, seed=6)
    src = Image.open(tmp_path / "train" / "b" / "b_003.png")
    _save(src.resize((120, 120), Image.Resampling.BICUBIC), tmp_path / "test" / "b" / "dup.png")
    rep = audit(
        from_folder(tmp_path / "train"),
        against=from_folder(tmp_path / "test"),
        progress=False,
        probe=False,
    )
    assert rep.folder_leakage is not None and rep.folder_leakage["n_groups_crossing"] == 1
    (g,) = rep.groups
    assert g.cross_folder and {m["key"] for m in g.members} == {"b/b_003.png", "b/dup.png"}
    codes = {f.code: f for f in rep.verdict}
    assert codes["folder_leakage_near"].severity == "critical"  # a resized copy: near-identical
    assert codes["folder_leakage"].severity == "ok"  # the exact tier has its own line: 0
    assert codes["folder_leakage"].message.startswith("across folders, exact copies: 0 group(s)")
    assert rep.folder_leakage["examples"] == [
        [str(tmp_path / "train" / "b" / "b_003.png"), str(tmp_path / "test" / "b" / "dup.png")]
    ]
    assert rep.copies() == {}  # the copy is in the other folder: nothing to tie within train


def test_make_splits_keeps_copies_and_patients_together(tmp_path: Path):
    root = tmp_path / "d"
    _distinct(root, {"neg": 30, "pos": 30}, seed=7)
    for c in ("neg", "pos"):
        for i in range(4):  # groups of three: original, mirrored copy, resized copy
            src = Image.open(root / c / f"{c}_{i:03d}.png")
            _save(ImageOps.mirror(src), root / c / f"{c}_{i:03d}_flip.png")
            _save(src.resize((70, 70)), root / c / f"{c}_{i:03d}_small.png")
    m = from_folder(root)
    copies = duplicate_groups(m)
    assert len(copies) == 24 and len(set(copies.values())) == 8
    for seed in range(4):
        s = make_splits(m, val=0.2, test=0.2, seed=seed, copies=copies)
        by_group: dict[int, set[str]] = {}
        for k, gid in copies.items():
            by_group.setdefault(gid, set()).add(s.assignment[k])
        assert all(len(v) == 1 for v in by_group.values())
        assert split_leakage(m, s, copies=copies).ok
        assert all(v > 0 for v in s.counts().values())
    # found on request, and through the config used by training
    s2 = make_splits(m, val=0.2, test=0.2, seed=1, find_copies=True)
    assert split_leakage(m, s2, copies=copies).ok
    cfg = SimpleNamespace(val=0.2, test=0.2, seed=2, group_copies=True)
    s3, reused = load_or_make_splits(m, cfg, tmp_path / "run" / "splits.csv")
    assert not reused and split_leakage(m, s3, copies=copies).ok


def test_near_pair_search_mih_equals_all_pairs():
    rng = np.random.default_rng(8)
    n = 3000
    codes = rng.integers(0, 2**63, size=(n, 4), dtype=np.int64).astype(np.uint64)
    codes[:, :] |= rng.integers(0, 2, size=(n, 4), dtype=np.int64).astype(np.uint64) << np.uint64(
        63
    )
    planted = set()
    for k in range(60):
        i, j = 2 * k, 2 * k + 1000
        src = codes[i].copy()
        if k % 2:  # a mirrored copy: j's own hashes are i's mirrored ones
            src = src[[1, 0, 3, 2]]
        flips = rng.choice(128, size=int(rng.integers(0, 12)), replace=False)
        for b in flips:
            col = 0 if b < 64 else 2
            src[col] ^= np.uint64(1) << np.uint64(b % 64)
        codes[j] = src
        planted.add((i, j))
    mih = {tuple(p) for p in _near_pairs(codes, 12, method="mih").tolist()}
    brute = {tuple(p) for p in _near_pairs(codes, 12, method="brute").tolist()}
    assert mih == brute
    assert planted <= mih
