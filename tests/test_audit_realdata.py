"""The audit on real, uncurated data in ../shared/data (skipped when that folder is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medlens.data.audit import audit, write_audit
from medlens.data.manifest import Manifest, from_folder

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

pytestmark = pytest.mark.realdata

REPORT_KEYS = {
    "severity",
    "verdict",
    "n_files",
    "n_readable",
    "class_counts",
    "problems",
    "duplicates",
    "class_stats",
    "shortcuts",
    "leakage",
}
DUP_KEYS = {"n_exact_groups", "n_near_groups", "n_groups", "n_cross_class", "groups"}


def _folder(rel: str) -> Path:
    path = DATA / rel
    if not path.is_dir():
        pytest.skip(f"{path} not found: real-data tests need ../shared/data beside the project")
    return path


def _every(m: Manifest, step: int) -> Manifest:
    """Every ``step``-th file of each class, so a sample keeps every class."""
    keep = []
    for c in m.classes:
        keep += [m.key(s) for s in m.samples if s.label == c][::step]
    return m.subset(keep)


def _check_structure(rep, n: int, classes: list[str]) -> dict:
    d = json.loads(json.dumps(rep.to_dict()))
    assert d.keys() >= REPORT_KEYS and d["duplicates"].keys() >= DUP_KEYS
    assert d["n_files"] == n and d["n_readable"] + len(d["problems"]["files"]) >= n
    assert set(d["class_counts"]) == set(classes) and sum(d["class_counts"].values()) == n
    for c in classes:
        assert d["class_stats"][c]["count"] == d["class_counts"][c]
        assert d["class_stats"][c]["mean_intensity"] is not None
    probe = d["shortcuts"]["probe"]
    assert probe["balanced_accuracy"] is not None and probe["chance"] == round(1 / len(classes), 4)
    assert d["verdict"] and all(
        f["severity"] in ("ok", "warning", "critical") for f in d["verdict"]
    )
    return d


def test_liver_exact_copies_and_format_shortcut(tmp_path: Path):
    root = _folder("liver_us_sample")
    m = from_folder(root)
    rep = audit(m, progress=False)
    d = _check_structure(rep, 40, ["F0", "F1", "F2", "F3", "F4"])
    exact = {frozenset(mm["key"] for mm in g.members) for g in rep.exact_groups}
    assert exact == {
        frozenset({"F1/C101.jpg", "F1/D204.jpg"}),
        frozenset({"F2/I2079.jpg", "F2/I6252.jpg"}),
        frozenset({"F3/K8264.jpg", "F3/L9570.jpg"}),
    }
    assert all(g.kind == "exact" and not g.cross_class for g in rep.exact_groups)
    fmt = next(a for a in rep.associations if a.prop == "format")
    assert fmt.level == "critical"
    assert any(f.code == "shortcut_property" and "format" in f.message for f in rep.verdict)
    assert d["class_stats"]["F2"]["name_mismatch"] == 8  # PNG data named .jpg
    p = rep.probe
    if p.z is not None and p.z >= 3 and p.balanced_accuracy > p.shuffled_p95:
        assert p.level != "ok"  # significantly above chance is never shown as "ok"
    html_path, _ = write_audit(rep, tmp_path)
    assert "data:image/png;base64," in html_path.read_text(encoding="utf-8")


def test_brain_mri_sample():
    m = _every(from_folder(_folder("brain_mri/Training")), 10)
    rep = audit(m, progress=False)
    _check_structure(rep, len(m), ["glioma", "meningioma", "notumor", "pituitary"])
    # JPEGs saved grey in one source and RGB in another line up with the class
    mode = next(a for a in rep.associations if a.prop == "mode")
    assert mode.level != "ok"


def test_blood_smear_sample():
    m = _every(from_folder(_folder("all_blood_smear")), 3)
    rep = audit(m, progress=False)
    _check_structure(rep, len(m), ["Benign", "Early", "Pre", "Pro"])
    assert rep.problems == []


def test_brain_mri_training_against_testing_counts_exact_copies_on_their_own_line():
    """Training vs Testing of the brain MRI set: the exact cross-folder count has its own line."""
    train = _folder("brain_mri/Training")
    test = DATA / "brain_mri" / "Testing"
    if not test.is_dir():
        pytest.skip(f"{test} not found: the shared brain MRI set holds only its Training folder")
    m = _every(from_folder(train), 20)
    rep = audit(m, against=_every(from_folder(test, m.classes), 5), progress=False, probe=False)
    lines = {f.code: f.message for f in rep.verdict}
    exact = rep.folder_leakage["exact"]["n_groups"]
    assert lines["folder_leakage"].startswith(f"across folders, exact copies: {exact} group(s)")
    assert lines["folder_leakage_near"].startswith("across folders, near-identical copies:")
    assert lines["folder_lookalikes"].startswith("across folders, look-alike pairs:")
