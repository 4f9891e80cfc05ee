"""External validation, shift, subgroups and local recalibration (``medlens evaluate``).

Fast tests check the rules on constructed numbers: the internal-vs-external verdict, the shift
tests, subgroup flags. The slow ones train a tiny chest model on phantoms once, then evaluate it
on a second phantom set drawn with another seed and a changed contrast plus noise (the "new
site"), with recalibration and subgroups.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import tiny_recipe_dict


def _pack(v: float, lo: float, hi: float) -> dict:
    return {"value": v, "ci_low": lo, "ci_high": hi}


# ---- rules on constructed figures ---------------------------------------------------------------


def test_verdict_needs_the_difference_interval_to_exclude_zero():
    from medlens.external import VERDICT_BELOW, compare_internal

    internal = {"overall": {"macro_f1": _pack(0.937, 0.916, 0.957)}}
    # the case: 0.862 outside the internal interval -> below
    below = compare_internal(internal, {"overall": {"macro_f1": _pack(0.862, 0.835, 0.888)}})
    assert below["rows"][0]["status"] == "below" and below["transfers"] is False
    assert VERDICT_BELOW in below["verdict"]
    # external point under the internal one but the intervals overlap widely -> no verdict
    close = compare_internal(internal, {"overall": {"macro_f1": _pack(0.925, 0.880, 0.960)}})
    assert close["rows"][0]["status"] == "indistinguishable" and close["transfers"] is True
    assert VERDICT_BELOW not in close["verdict"]
    # higher on the new data
    up = compare_internal(
        {"overall": {"macro_f1": _pack(0.70, 0.65, 0.75)}},
        {"overall": {"macro_f1": _pack(0.90, 0.87, 0.93)}},
    )
    assert up["rows"][0]["status"] == "above"
    assert compare_internal(None, {"overall": {}})["transfers"] is None


def test_shift_finds_a_changed_property_and_not_an_unchanged_one():
    from medlens.evaluate.gate import ACQ_NAMES
    from medlens.evaluate.shift import Measured, ShiftReference, shift_report

    rng = np.random.default_rng(0)
    ref = rng.normal(0.5, 0.1, (200, len(ACQ_NAMES)))
    same = rng.normal(0.5, 0.1, (150, len(ACQ_NAMES)))
    moved = same.copy()
    j = ACQ_NAMES.index("p50")
    moved[:, j] += 0.6  # six SDs brighter
    facts = [{"source_format": "png", "mode": "L", "image_size": "32x32", "channels": "1"}]
    reference = ShiftReference.from_samples(Measured(["r"] * 200, ref, facts * 200), "ref")
    a = shift_report(Measured(["n"] * 150, same, facts * 150), reference)
    b = shift_report(Measured(["n"] * 150, moved, facts * 150), reference)
    assert a["shifted_properties"] == [] and a["share_flagged"] < 0.1
    assert b["shifted_properties"] == ["p50"] and b["share_flagged"] > 0.9
    assert b["properties"][j]["test"] == "two-sample Kolmogorov-Smirnov"
    # with the gate's summary only: the sign test against the training median
    summary = ShiftReference("gate", median=np.median(ref, 0), scale=ref.std(0), threshold=4.0)
    c = shift_report(Measured(["n"] * 150, moved, facts * 150), summary)
    assert c["shifted_properties"] == ["p50"] and "sign test" in c["properties"][j]["test"]
    assert a["facts"]["source_format"]["share_unseen"] == 0


def test_a_subgroup_whose_interval_lies_below_the_overall_is_flagged():
    from medlens.evaluate.intervals import metrics_with_intervals
    from medlens.evaluate.subgroups import flagged_texts, subgroup_figures

    rng = np.random.default_rng(1)
    n = 300
    y = rng.integers(0, 2, n)
    site = np.where(np.arange(n) < 200, "A", "B")
    p1 = np.where(y == 1, 0.85, 0.15)  # site A: right, confidently
    p1 = np.where(site == "B", rng.uniform(0, 1, n), p1)  # site B: guessing
    probs = np.stack([1 - p1, p1], axis=1)
    overall = metrics_with_intervals(y, probs, ["no", "yes"], n_bootstrap=200)["overall"]
    sub = subgroup_figures(site.tolist(), y, probs, ["no", "yes"], overall, "site", n_bootstrap=200)
    assert {f["group"] for f in sub["flagged"]} == {"B"}
    assert sub["groups"]["A"]["below_overall"] == []
    assert any("site = B" in t for t in flagged_texts(sub))


def test_folds_partition_the_data_and_keep_patients_together(tmp_path: Path):
    from medlens.crossval import fold_splits
    from medlens.data.manifest import Manifest, Sample

    samples = [
        Sample(str(tmp_path / f"{i}.png"), ["a", "b"][i % 2], patient_id=f"P{i // 4}")
        for i in range(60)
    ]
    m = Manifest(samples, ["a", "b"], tmp_path)
    folds = fold_splits(m, 3, type("Cfg", (), {"val": 0.15, "seed": 0})(), None)
    tests = [{k for k, v in f.assignment.items() if v == "test"} for f in folds]
    assert set().union(*tests) == {m.key(s) for s in samples}
    assert sum(len(t) for t in tests) == 60  # each image tested exactly once
    for f in folds:
        where: dict[str, set[str]] = {}
        for s in samples:
            where.setdefault(s.patient_id, set()).add(f.assignment[m.key(s)])
        assert all(len(v) == 1 for v in where.values())
        assert f.counts()["val"] > 0


# ---- a tiny model, and a shifted "new site" ----------------------------------------------------


def shifted_copy(manifest: Path, out: Path, contrast: float, noise: float, seed: int) -> Path:
    """The phantom set's images with a global contrast change and noise: another scanner."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        a = np.asarray(Image.open(manifest.parent / r["path"]).convert("L"), np.float32) / 255
        a = np.clip(0.5 + contrast * (a - 0.5) + rng.normal(0, noise, a.shape), 0, 1)
        name = Path(r["path"]).name
        Image.fromarray((a * 255).astype(np.uint8)).save(out / name)
        r["path"] = name
        r.pop("mask_path", None)
    with (out / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out / "manifest.csv"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from medlens.data.phantoms import generate_phantoms
    from medlens.recipes import parse_recipe
    from medlens.workflow import run_recipe

    root = tmp_path_factory.mktemp("external")
    manifest = generate_phantoms("chest_xray", root / "train", n=64, size=32, seed=1)
    d = tiny_recipe_dict()
    d["data"] = {"source": "csv"}
    d["preprocess"][4]["size"] = 32
    d["train"]["epochs"] = 8
    d["explain"] = {"enabled": False}
    recipe = parse_recipe(d, str(root / "r.yaml"))
    result = run_recipe(recipe, root / "runs", data=manifest, progress=False, track=False)
    site = generate_phantoms("chest_xray", root / "site_raw", n=64, size=32, seed=7)
    shifted = shifted_copy(site, root / "site", contrast=0.35, noise=0.12, seed=7)
    return {"root": root, "recipe": recipe, "manifest": manifest, "run": result, "site": shifted}


@pytest.mark.slow
def test_evaluate_on_a_shifted_site_reports_the_drop_and_the_shift(tiny):
    from typer.testing import CliRunner

    from medlens.cli import app
    from medlens.external import VERDICT_BELOW

    out = tiny["root"] / "eval"
    r = CliRunner().invoke(
        app,
        [
            "evaluate", str(tiny["run"].bundle_dir), str(tiny["site"]), "--out", str(out),
            "--reference", str(tiny["manifest"]), "--no-progress",
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == "external" and "intervals" in m and "calibration" in m
    assert m["calibration"]["test_after"]["ece"] is not None
    ext = m["external"]
    assert ext["rows"] and ext["transfers"] is False, ext
    assert VERDICT_BELOW in ext["verdict"]
    assert m["shift"]["share_flagged"] > 0 and m["shift"]["shifted_properties"]
    html = (out / "report.html").read_text()
    assert VERDICT_BELOW in html and "Internal vs external" in html and "Shift" in html
    assert (out / "report.json").is_file() and (out / "worklists.csv").is_file()
    assert "VERDICT" in r.output


@pytest.mark.slow
def test_recalibration_writes_a_verified_bundle_that_records_its_source(tiny):
    from medlens.bundle import load_bundle
    from medlens.external import evaluate_external
    from medlens.inference import Predictor

    out = tiny["root"] / "recal"
    res = evaluate_external(tiny["run"].bundle_dir, tiny["site"], out, recalibrate=0.5)
    assert res.bundle_dir is not None
    b = load_bundle(res.bundle_dir)  # verified
    prov = b.read_json("recalibration.json")
    assert prov["fraction"] == 0.5 and prov["date"] and prov["data_fingerprint"]["n_samples"] > 0
    assert prov["recalibrated_from"]["bundle_sha256"] == load_bundle(tiny["run"].bundle_dir).sha256
    assert prov["n_calibration"] + prov["n_reported"] <= 64
    p = Predictor.from_bundle(res.bundle_dir)
    assert p.temperature == pytest.approx(prov["temperature_after"])
    assert res.metrics["n"] == prov["n_reported"]  # figures on the rest only
    if getattr(p, "sets", None) is not None:
        assert (
            b.read_json("conformal.json")
            != load_bundle(tiny["run"].bundle_dir).read_json("conformal.json")
            or "conformal sets" in prov["refitted"]
        )
    assert "Local recalibration" in res.report.read_text()


@pytest.mark.slow
def test_subgroups_flag_a_site_made_worse(tiny):
    from medlens.external import evaluate_external, subgroups_for_run

    # a site column; site "B" is made worse by construction: every label there is a class the
    # model does not predict, every label at site "A" the one it does
    from medlens.inference import Predictor

    classes = tiny["recipe"].task.classes
    predictor = Predictor.from_bundle(tiny["run"].bundle_dir)
    train_rows = list(csv.DictReader(tiny["manifest"].open(newline="")))
    for i, r in enumerate(train_rows):
        logits = predictor.predict(tiny["manifest"].parent / r["path"]).logits
        said = classes[int(np.argmax(logits))]
        r["site"] = "B" if i % 3 == 0 else "A"
        wrong = classes[(classes.index(said) + 1 + i % 2) % 3]
        r["label"] = said if r["site"] == "A" else wrong
    flipped = tiny["manifest"].parent / "with_site.csv"
    with flipped.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(train_rows[0]))
        w.writeheader()
        w.writerows(train_rows)
    res = evaluate_external(tiny["run"].bundle_dir, flipped, tiny["root"] / "sub", by="site")
    sub = res.metrics["subgroups"]
    assert set(sub["groups"]) == {"A", "B"}
    assert {f["group"] for f in sub["flagged"]} == {"B"}, sub["flagged"]
    assert "Subgroups by site" in res.report.read_text()
    # derived column on a run: every phantom is a PNG
    run_sub = subgroups_for_run(
        tiny["run"].run_dir, tiny["recipe"], tiny["manifest"], "source_format"
    )
    assert list(run_sub["groups"]) == ["png"]
    assert "subgroups" in json.loads((tiny["run"].run_dir / "metrics.json").read_text())
