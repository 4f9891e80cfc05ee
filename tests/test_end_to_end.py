"""The whole spine on tiny phantoms: train → bundle → fresh Predictor reproduces → tamper refused."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medlens.errors import BundleError
from medlens.inference import Predictor

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from medlens.recipes import parse_recipe
    from medlens.workflow import run_recipe
    from tests.conftest import tiny_recipe_dict

    out = tmp_path_factory.mktemp("runs")
    recipe = parse_recipe(tiny_recipe_dict(), "tiny.yaml")
    return recipe, out, run_recipe(recipe, out, progress=False)


def test_run_writes_bundle_metrics_and_splits(run):
    recipe, _, result = run
    assert (result.run_dir / "splits.csv").is_file()
    assert (result.bundle_dir / "model.safetensors").is_file()
    metrics = json.loads((result.bundle_dir / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n"] == result.split_counts["test"]
    assert 0.0 <= metrics["macro_f1"] <= 1.0
    meta = json.loads((result.bundle_dir / "bundle.json").read_text())
    assert meta["classes"] == recipe.task.classes
    assert meta["preprocess"] == recipe.pipeline().to_config()
    assert (
        meta["data_fingerprint"]["n_samples"]
        == result.split_counts["train"] + result.split_counts["val"]
    )
    # test images never used to fit: bundle fingerprint counts only train + val
    with (result.run_dir / "test_predictions.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == result.split_counts["test"]


def test_fresh_predictor_reproduces_trained_model(run):
    recipe, _, result = run
    pipeline = recipe.pipeline()
    with (result.run_dir / "test_predictions.csv").open() as fh:
        sources = [r["source"] for r in csv.DictReader(fh)]
    from medlens.data.io import read_image

    batch = np.stack([pipeline(read_image(s).array).image for s in sources])
    with torch.inference_mode():
        logits = result.model.eval()(torch.from_numpy(batch)).double()
    temperature = json.loads((result.bundle_dir / "calibration.json").read_text())["temperature"]
    expected = torch.softmax(logits / temperature, 1).numpy()
    predictor = Predictor.from_bundle(result.bundle_dir)
    assert predictor.temperature == temperature
    got = predictor.predict_many(sources, batch_size=len(sources))
    np.testing.assert_allclose([p.logits for p in got], logits.numpy(), rtol=0, atol=1e-6)
    # an image the input gate refuses keeps what the network said in details, for audit only
    shown = [p.probabilities or p.details["probabilities"] for p in got]
    probs = np.array([[s[c] for c in predictor.classes] for s in shown])
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)
    assert [p.index for p in got if p.assessed] == [
        int(e.argmax()) for e, p in zip(expected, got, strict=True) if p.assessed
    ]
    assert all(p.label == "" and p.decision is None for p in got if not p.assessed)
    # one image at a time gives the same answer as the batch
    single = predictor.predict(sources[0])
    assert single.label == got[0].label
    np.testing.assert_allclose(list(single.probabilities.values()), probs[0], atol=1e-5)


def test_rerun_reuses_split_and_training(run):
    recipe, out, first = run
    from medlens.workflow import run_recipe

    again = run_recipe(recipe, out, progress=False)
    assert again.splits_reused and again.resumed
    assert again.metrics["macro_f1"] == first.metrics["macro_f1"]


def test_tampered_bundle_refused_after_training(run, tmp_path: Path):
    import shutil

    _, _, result = run
    copy = tmp_path / "bundle"
    shutil.copytree(result.bundle_dir, copy)
    w = copy / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0x01
    w.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.safetensors"):
        Predictor.from_bundle(copy)


def test_run_is_tracked_ranked_and_promotable(run, tmp_path: Path):
    from medlens.bundle import load_bundle
    from medlens.errors import MedlensError
    from medlens.track import leaderboard, promote

    _, out, result = run
    assert result.mlflow_run_id is not None
    rows = leaderboard(out, "val_macro_f1")
    assert rows and rows[0]["run_id"] in {result.mlflow_run_id, *[r["run_id"] for r in rows]}
    ours = next(r for r in rows if r["run_id"] == result.mlflow_run_id)
    assert ours["test_macro_f1"] == pytest.approx(result.metrics["macro_f1"])
    with pytest.raises(MedlensError, match="validation metric"):
        leaderboard(out, "test_macro_f1")
    exported = promote(out, result.mlflow_run_id, tmp_path / "promoted")
    # the exported bundle is the one that run logged (a later re-run re-seals run_dir/bundle)
    assert load_bundle(exported).sha256 == ours["bundle_sha256"]


def test_report_has_intervals_calibration_and_policy(run):
    _, _, result = run
    html = result.report.read_text()
    for needle in (
        "95 % CI",
        "Calibration",
        "argmax vs risk-prioritised",
        "Worklists",
        "clinician",
    ):
        assert needle in html
    assert "<script" not in html  # self-contained, static
    assert "data:image/png;base64," in html
    m = result.metrics
    assert m["calibration"]["fitted_on"] == "validation"
    assert set(m["policy"]["thresholds"]) == {"tuberculosis", "pneumonia"}
    f1 = m["intervals"]["overall"]["macro_f1"]
    if f1.get("interval") == "not estimable":  # every replicate equal: no interval, said so
        assert f1["value"] == pytest.approx(m["macro_f1"]) and f1["ci_low"] is None
    else:
        assert f1["ci_low"] <= m["macro_f1"] <= f1["ci_high"]
