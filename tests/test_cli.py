"""The command line: clear one-line errors (no traceback) and the main commands working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import tiny_recipe_dict


def medlens(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "medlens.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


def test_help_lists_commands():
    r = medlens("--help")
    assert r.returncode == 0
    for cmd in ("demo", "phantoms", "train", "evaluate", "predict"):
        assert cmd in r.stdout


def test_unknown_recipe_key_is_one_clear_message(tmp_path: Path):
    d = tiny_recipe_dict()
    d["model"]["nmae"] = "x"
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(d))
    r = medlens("train", str(p), "--out", str(tmp_path / "runs"))
    assert r.returncode == 2
    assert "model.nmae" in r.stderr and str(p) in r.stderr.replace("\n", "")
    assert "Traceback" not in r.stderr + r.stdout


def test_predict_missing_bundle_and_bad_files(tmp_path: Path):
    r = medlens("predict", str(tmp_path / "nobundle"), "x.png")
    assert r.returncode == 2 and "bundle not found" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_phantoms_train_predict_evaluate(tmp_path: Path):
    r = medlens(
        "phantoms", "chest_xray", str(tmp_path / "ph"), "--n", "45", "--size", "40", "--seed", "2"
    )
    assert r.returncode == 0, r.stderr
    manifest = tmp_path / "ph" / "manifest.csv"
    assert manifest.is_file()
    d = tiny_recipe_dict()
    d["data"] = {"source": "csv"}
    d["preprocess"][4]["size"] = 40
    d["train"]["epochs"] = 1
    rp = tmp_path / "r.yaml"
    rp.write_text(yaml.safe_dump(d))
    r = medlens(
        "train", str(rp), "--data", str(manifest), "--out", str(tmp_path / "runs"), "--no-progress"
    )
    assert r.returncode == 0, r.stderr
    assert "Held-out test metrics" in r.stdout
    bundle = tmp_path / "runs" / "tiny_cxr" / "bundle"

    good = sorted((tmp_path / "ph" / "images").glob("*.png"))[:2]
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / "empty.png").write_bytes(b"")
    (bad_dir / "text.jpg").write_text("this is not a jpeg")
    png = bad_dir / "trunc.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(png)
    png.write_bytes(png.read_bytes()[:200])
    out_csv = tmp_path / "preds.csv"
    r = medlens(
        "predict",
        str(bundle),
        *map(str, good),
        str(bad_dir),
        "--out",
        str(out_csv),
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    for name in ("empty.png", "text.jpg", "trunc.png"):
        assert name in r.stderr
    assert "clinician" in r.stdout
    rows = out_csv.read_text().splitlines()
    assert len(rows) == 1 + 2 + 3

    r = medlens(
        "evaluate", str(bundle), str(manifest), "--out", str(tmp_path / "m.json"), "--no-progress"
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.json").is_file() and "Confusion matrix" in r.stdout


@pytest.mark.slow
def test_compare_trains_candidates_on_one_split(tmp_path: Path):
    import csv
    import json

    d = tiny_recipe_dict()
    d["train"]["limit_train_batches"] = 2
    d["explain"]["enabled"] = False
    d["candidates"] = [
        {"label": "hog_rf", "model": {"name": "hog_rf", "kwargs": {"n_estimators": 20}}},
        {"label": "probe", "model": {"name": "linear_probe", "kwargs": {"backbone": "resnet18"}}},
    ]
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(d))
    out = tmp_path / "runs"
    r = medlens("compare", str(p), "--out", str(out), "--no-track", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "macro-F1" in r.stdout and "hog_rf" in r.stdout and "probe" in r.stdout
    root = out / "tiny_cxr-compare"
    rows = json.loads((root / "compare.json").read_text())
    assert {row["label"] for row in rows} == {"small_cnn", "hog_rf", "probe"}
    f1s = [row["macro_f1"]["value"] for row in rows]
    assert f1s == sorted(f1s, reverse=True)  # ranked
    for row in rows:
        assert row["macro_f1"]["ci_low"] <= row["macro_f1"]["value"] <= row["macro_f1"]["ci_high"]
    # one split for all: every candidate's splits.csv is the same file content
    splits = {
        (root / f"tiny_cxr-{lab}" / "splits.csv").read_text()
        for lab in ("small_cnn", "hog_rf", "probe")
    }
    assert len(splits) == 1
    with (root / "compare.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 3
    # a classical candidate gets the same report as the networks
    html = (root / "tiny_cxr-hog_rf" / "report.html").read_text()
    assert "macro-F1" in html
