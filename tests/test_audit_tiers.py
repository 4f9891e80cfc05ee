"""Copy tiers, probe severity, exposure by modality, --against inputs and the import order."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from medlens.data.audit import audit, duplicate_groups, load_against, split_leakage, write_audit
from medlens.data.audit import html as audit_html
from medlens.data.audit.shortcuts import probe_level
from medlens.data.manifest import from_csv, from_folder
from medlens.data.phantoms import generate_phantoms


def _texture(rng: np.random.Generator, size: int = 96) -> Image.Image:
    acc = np.zeros((size, size), np.float32)
    for cells, weight in ((4, 1.0), (8, 0.6), (16, 0.3)):
        low = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
        acc += weight * np.asarray(low.resize((size, size), Image.Resampling.BICUBIC), np.float32)
    acc = (acc - acc.min()) / (np.ptp(acc) + 1e-6)
    acc = 0.15 + 0.7 * acc + rng.normal(0, 0.02, acc.shape)
    return Image.fromarray((np.clip(acc, 0, 1) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def tiers(tmp_path_factory: pytest.TempPathFactory):
    """Two exact copies, two near-identical copies (resized, mirrored), 16 distinct images each."""
    root = tmp_path_factory.mktemp("tiers")
    rng = np.random.default_rng(11)
    for c in ("a", "b"):
        (root / c).mkdir()
        for i in range(16):
            _texture(rng).save(root / c / f"{c}_{i:02d}.png")
    shutil.copyfile(root / "a/a_00.png", root / "a/exact1.png")
    shutil.copyfile(root / "b/b_00.png", root / "b/exact2.png")
    Image.open(root / "a/a_01.png").resize((64, 64)).save(root / "a/resized.png")
    ImageOps.mirror(Image.open(root / "b/b_01.png")).save(root / "b/mirrored.png")
    m = from_folder(root)
    return root, m, audit(m, progress=False, probe=False)


def test_each_tier_is_counted_on_its_own_line(tiers):
    _, _, rep = tiers
    t = rep.tiers()
    assert t["exact"]["within_folder"] == 2
    assert t["near-identical"]["within_folder"] == 2
    assert t["look-alike"]["within_folder"] == 0
    by_code = {f.code: f.message for f in rep.verdict}
    assert by_code["exact_duplicates"].startswith("exact copies (same bytes or pixels): 2 group")
    assert by_code["near_duplicates"].startswith("near-identical copies")
    assert "2 group(s)" in by_code["near_duplicates"]
    assert {g.tier for g in rep.groups} == {"exact", "near-identical"}


def test_training_split_uses_the_audit_tiers(tiers):
    _, m, rep = tiers
    assert duplicate_groups(m) == rep.copies()  # one definition for audit and split
    assert len(set(rep.copies().values())) == 4


def test_template_lookalikes_are_not_copies_nor_chained(tmp_path: Path):
    """Phantoms share one rendered template: alike by hash, never copies, never a giant chain."""
    manifest = generate_phantoms("chest_xray", tmp_path / "p", n=60, size=96, seed=0)
    m = from_csv(manifest)
    rep = audit(m, progress=False, probe=False)
    assert not [g for g in rep.groups if g.kind == "near"]
    assert all(f.code != "conflicting_labels" for f in rep.verdict)
    assert rep.severity != "critical"
    assert duplicate_groups(m) == rep.copies() == {}
    # look-alikes, if any, are pairs; grouping them is an explicit choice
    grouped = duplicate_groups(m, group_lookalikes=True)
    assert bool(grouped) == bool(rep.lookalikes)


def test_probe_significantly_above_chance_is_never_ok():
    # the liver sample's figures: 0.425 against chance 0.200, z = 3.6
    assert probe_level(0.425, 0.2, 3.6, 0.30) == "warning"
    assert probe_level(0.60, 0.2, 5.0, 0.30) == "critical"
    assert probe_level(0.25, 0.2, 1.2, 0.30) == "ok"
    assert probe_level(0.425, 0.2, 3.6, 0.45) == "ok"  # not above the label-shuffled runs


def test_colour_smears_are_judged_against_their_own_exposure(tmp_path: Path):
    rng = np.random.default_rng(3)
    for c in ("x", "y"):
        (tmp_path / c).mkdir()
        for i in range(12):
            img = np.full((64, 64, 3), (236, 226, 240), np.float32)  # bright stained background
            for _ in range(6):  # purple cells
                cy, cx = rng.integers(8, 56, 2)
                yy, xx = np.ogrid[:64, :64]
                img[(yy - cy) ** 2 + (xx - cx) ** 2 < 30] = (120, 60, 150)
            img += rng.normal(0, 3, img.shape)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(tmp_path / c / f"{i}.png")
    dark = np.full((64, 64, 3), (70, 60, 80), np.uint8)
    Image.fromarray(dark).save(tmp_path / "x" / "dark.png")
    rep = audit(from_folder(tmp_path), progress=False, probe=False)
    assert rep.exposure_rule["rule"] == "relative" and "colour" in rep.exposure_rule["why"]
    exposure = {c: s["exposure"] for c, s in rep.class_stats.items()}
    assert exposure["y"] == {"ok": 12}  # the radiograph rule called every smear "over"
    assert exposure["x"] == {"ok": 12, "under": 1}
    html_path, _ = write_audit(rep, tmp_path / "out")
    assert "Exposure rule: <b>relative</b>" in html_path.read_text(encoding="utf-8")


def test_html_shows_values_and_says_where_left_out_groups_are(tiers, tmp_path, monkeypatch):
    _, _, rep = tiers
    monkeypatch.setattr(audit_html, "_MAX_THUMB_GROUPS", 1)
    monkeypatch.setattr(audit_html, "_MAX_LISTED", 2)
    html_path, _ = write_audit(rep, tmp_path)
    text = html_path.read_text(encoding="utf-8")
    assert "{&#x27;" not in text and "{'" not in text  # no Python dicts on the page
    assert "Thumbnails are drawn for the first 1 groups only: 1 group(s)" in text
    assert "2 more group(s) are not listed on this page" in text
    assert "audit.json (duplicates.groups)" in text


def _phantom_pair(tmp_path: Path) -> tuple[Path, Path]:
    """Two phantom folders (each with manifest.csv); the second holds a copy of one training image."""
    a = generate_phantoms("chest_xray", tmp_path / "train", n=24, size=96, seed=1).parent
    b = generate_phantoms("chest_xray", tmp_path / "test", n=24, size=96, seed=2).parent
    first = (a / "manifest.csv").read_text().splitlines()[1].split(",")
    shutil.copyfile(a / first[0], b / "images" / "copied.png")
    with (b / "manifest.csv").open("a") as fh:
        fh.write(f"images/copied.png,{first[1]},PX,\n")
    return a, b


def test_against_accepts_a_phantom_folder_and_a_csv(tmp_path: Path):
    a, b = _phantom_pair(tmp_path)
    m = from_csv(a / "manifest.csv")
    for against in (b, b / "manifest.csv"):
        assert len(load_against(against, m.classes)) == 25
        rep = audit(m, against=against, progress=False, probe=False)
        fl = rep.folder_leakage
        assert fl is not None and fl["exact"]["n_groups"] == 1
        (pair,) = fl["examples"]
        assert pair[0].startswith(str(a)) and pair[1] == str(b / "images" / "copied.png")
        line = next(f for f in rep.verdict if f.code == "folder_leakage")
        assert line.severity == "critical"
        assert line.message.startswith("across folders, exact copies: 1 group(s)")
    with pytest.raises(Exception, match="no such folder"):
        load_against(tmp_path / "missing", m.classes)


def test_split_leakage_examples_pair_two_splits(tiers):
    _, m, _ = tiers
    copies = duplicate_groups(m)
    keys = [m.key(s) for s in m.samples]
    assignment = {k: "train" for k in keys}
    assignment["a/exact1.png"] = "test"  # its original a/a_00.png stays in train
    leak = split_leakage(m, assignment, copies=copies)
    (example,) = leak.examples
    assert {line.split(": ", 1)[0] for line in example} == {"train", "test"}
    assert "a/exact1.png" in leak.message and "a/a_00.png" in leak.message


def test_no_import_circle_between_splits_and_audit():
    code = (
        "import sys; import medlens.data.splits; "
        "assert 'medlens.data.audit' not in sys.modules, 'splits imports the audit eagerly'; "
        "import medlens.data.audit; "
        "from medlens.data.audit.copies import duplicate_groups; "
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    src = Path(__file__).resolve().parents[1] / "src" / "medlens" / "data" / "audit"
    for f in src.glob("*.py"):
        for line in f.read_text(encoding="utf-8").splitlines():
            if "medlens.data.splits import" in line:  # only under TYPE_CHECKING
                assert line.startswith("    "), f"{f.name}: {line}"
