"""k-fold cross-validation end to end: ``medlens train RECIPE --folds 3`` on tiny phantoms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_recipe_dict


@pytest.mark.slow
def test_three_folds_give_a_pooled_estimate_and_one_verified_bundle(tmp_path: Path):
    from typer.testing import CliRunner

    from medlens.bundle import load_bundle
    from medlens.cli import app
    from medlens.data.phantoms import generate_phantoms

    manifest = generate_phantoms("chest_xray", tmp_path / "ph", n=48, size=32, seed=2)
    d = tiny_recipe_dict()
    d["data"] = {"source": "csv"}
    d["preprocess"][4]["size"] = 32
    d["explain"] = {"enabled": False}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(d))
    out = tmp_path / "runs"
    r = CliRunner().invoke(
        app,
        [
            "train", str(recipe), "--data", str(manifest), "--out", str(out), "--folds", "3",
            "--no-track", "--no-progress",
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    cv = json.loads((out / "tiny_cxr_cv" / "crossval.json").read_text())
    assert cv["k"] == 3 and len(cv["folds"]) == 3
    # every image tested once, by the fold that did not train on it
    tested = []
    for f in cv["folds"]:
        splits = (Path(f["run_dir"]) / "splits.csv").read_text().splitlines()[1:]
        tested += [line.split(",")[0] for line in splits if line.endswith(",test")]
    assert len(tested) == len(set(tested)) == 48
    pooled = cv["pooled"]
    assert pooled["n"] == sum(f["n_test"] for f in cv["folds"])
    f1 = pooled["overall"]["macro_f1"]
    assert f1["value"] is not None and (f1["ci_low"] is not None or f1.get("interval"))
    bundle = load_bundle(out / "tiny_cxr_cv" / "bundle")  # verified
    assert bundle.read_json("crossval.json")["chosen_fold"] == cv["chosen_fold"]
    chosen = cv["folds"][cv["chosen_fold"] - 1]
    scores = [f["val_score"] for f in cv["folds"]]
    assert chosen["val_score"] == max(scores)  # chosen on validation, never on test
    assert (out / "tiny_cxr_cv" / "crossval.html").is_file()
    assert "pooled" in r.output and "kept" in r.output
