"""The command line: clear errors (no traceback), one decision everywhere, the main commands.

Fast tests check usage errors, ``--version``, ``python -m medlens``, recipe errors and class
folders. The slow ones train a tiny model once (phantoms, 2 epochs) and run predict, explain,
evaluate, split and MLflow tracking against it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import tiny_recipe_dict

CLASSES = ["normal", "pneumonia", "tuberculosis"]


def medlens(*args: str, cwd: Path | None = None, module: str = "medlens.cli"):
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=900,
    )


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def tiny_recipe_file(path: Path, **train) -> Path:
    """The conftest's tiny recipe reading a CSV manifest, resized to 32 px."""
    d = tiny_recipe_dict()
    d["data"] = {"source": "csv"}
    d["preprocess"][4]["size"] = 32
    d["train"].update(train)
    path.write_text(yaml.safe_dump(d))
    return path


def class_folders(manifest: Path, out: Path, names: dict[str, str]) -> Path:
    """Copy phantom images into one sub-folder per class, named by ``names``."""
    for r in rows(manifest):
        d = out / names[r["label"]]
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(manifest.parent / r["path"], d)
    return out


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    r = medlens("phantoms", "chest_xray", str(root / "ph"), "--n", "60", "--size", "48")
    assert r.returncode == 0, r.stderr
    return root / "ph" / "manifest.csv"


# ---- usage, version, entry points -------------------------------------------------------------


def test_help_lists_commands_without_loading_heavy_libraries():
    r = medlens("--help")
    assert r.returncode == 0
    for cmd in ("demo", "phantoms", "train", "evaluate", "predict", "explain", "slices"):
        assert cmd in r.stdout
    probe = (
        "import sys\n"
        "from medlens.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('torch', 'mlflow', 'fastapi', 'lightning', 'timm') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--epochs", "abc"], "Invalid value for '--epochs'"),
        (["predict"], "Missing argument"),
        (["train", "chest_xray", "--bogus"], "No such option: --bogus"),
        (["no-such-command"], "No such command"),
    ],
)
def test_usage_errors_are_short_and_exit_2(args, message):
    r = medlens(*args)
    assert r.returncode == 2
    assert message in r.stderr and "Usage: " in r.stderr
    assert "Traceback" not in r.stderr + r.stdout and "_click" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 6


def test_version_and_python_dash_m_medlens():
    from medlens import __version__

    r = medlens("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"medlens {__version__}"
    r = medlens("--version", module="medlens")
    assert r.returncode == 0 and r.stdout.strip() == f"medlens {__version__}"
    r = medlens("train", "--epochs", "abc", module="medlens")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_console_script_target_is_callable(capsys):
    from medlens import __version__
    from medlens.cli import main

    main(["--version"])  # success returns; failures exit with their status
    assert capsys.readouterr().out.strip() == f"medlens {__version__}"
    with pytest.raises(SystemExit) as exc:
        main(["train", "--epochs", "abc"])
    assert exc.value.code == 2


def test_prediction_table_shows_decision_first_and_never_100_percent_below_1():
    from types import SimpleNamespace

    from rich.console import Console

    from medlens.cli.cmd_predict import prediction_table
    from medlens.inference import Prediction

    probs = {"normal": 0.9996, "pneumonia": 0.0003, "tuberculosis": 0.0001}
    pred = Prediction(
        label="normal", index=0, probabilities=probs, model="m", bundle_sha256="x",
        decision="tuberculosis", decision_threshold=0.0001, decision_rule="policy",
    )  # fmt: skip
    fake = SimpleNamespace(classes=CLASSES, model_name="m")
    console = Console(record=True, width=140)
    console.print(prediction_table(fake, ["a.png", "b.png"], [pred, OSError("unreadable")]))
    text = console.export_text()
    row = next(line for line in text.splitlines() if "a.png" in line)
    assert row.index("tuberculosis") < row.index("normal")  # the decision, then the argmax
    assert "0.000" in row and ">99.9%" in row and "100" not in row
    assert "unreadable" in next(line for line in text.splitlines() if "b.png" in line)


# ---- recipes ----------------------------------------------------------------------------------


def test_unknown_recipe_key_is_one_clear_message(tmp_path: Path):
    d = tiny_recipe_dict()
    d["model"]["nmae"] = "x"
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(d))
    r = medlens("train", str(p), "--out", str(tmp_path / "runs"))
    assert r.returncode == 2
    assert "model.nmae" in r.stderr and str(p) in r.stderr.replace("\n", "")
    assert "Traceback" not in r.stderr + r.stdout


def test_yaml_syntax_error_names_file_line_and_column(tmp_path: Path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: x\ntask:\n  classes: [a, b\nmodel: {name: small_cnn}\n")
    r = medlens("train", str(p), "--out", str(tmp_path / "runs"))
    err = r.stderr.replace("\n", "")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{p}:4:" in err and "line 4, column" in err


def test_train_without_recipe_or_data_says_what_to_give():
    r = medlens("train")
    assert r.returncode == 2 and "--data FOLDER" in r.stderr and "Traceback" not in r.stderr


def test_predict_missing_bundle(tmp_path: Path):
    r = medlens("predict", str(tmp_path / "nobundle"), "x.png")
    assert r.returncode == 2 and "bundle not found" in r.stderr and "Traceback" not in r.stderr


# ---- class folders ----------------------------------------------------------------------------


def test_class_folders_match_case_insensitively_and_through_aliases(tmp_path: Path, phantoms):
    names = {"normal": "NORMAL", "pneumonia": "Pneumonia", "tuberculosis": "TB"}
    folders = class_folders(phantoms, tmp_path / "folders", names)
    recipe = tiny_recipe_file(tmp_path / "r.yaml")
    r = medlens("split", str(folders), "--recipe", str(recipe), "--out", str(tmp_path / "s.csv"))
    assert r.returncode == 2 and "TB" in r.stderr and "class_aliases" in r.stderr

    d = yaml.safe_load(recipe.read_text())
    d["data"] = {"source": "folder", "class_aliases": {"tb": "tuberculosis"}}
    recipe.write_text(yaml.safe_dump(d))
    out = tmp_path / "s.csv"
    r = medlens("split", str(folders), "--recipe", str(recipe), "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    got = rows(out)
    assert len(got) == 60
    assert {row["label"] for row in got} == set(CLASSES)
    truth = {Path(row["path"]).name: row["label"] for row in rows(phantoms)}
    assert all(truth[Path(row["key"]).name] == row["label"] for row in got)


def test_slices_cuts_volumes_into_a_manifest(tmp_path: Path):
    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(0)
    vol = rng.uniform(0, 1000, (24, 20, 5)).astype(np.float32)
    mask = np.zeros((24, 20, 5), dtype=np.uint8)
    mask[5:10, 5:10, 1:3] = 1  # slices 1 and 2 hold a lesion
    (tmp_path / "img").mkdir()
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "img" / "s01_stir.nii.gz"))
    nib.save(nib.Nifti1Image(mask, np.eye(4)), str(tmp_path / "s01_lesion.nii.gz"))
    out = tmp_path / "slices"
    r = medlens(
        "slices", str(tmp_path / "img"), str(out), "--mask",
        f"lesion={tmp_path / 's01_lesion.nii.gz'}", "--label-from", "lesion",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = rows(out / "manifest.csv")
    assert len(got) == 5 and {row["patient_id"] for row in got} == {"s01"}
    labels = {int(row["slice_index"]): row["label"] for row in got}
    assert [labels[k] for k in range(5)] == ["none", "inflamed", "inflamed", "none", "none"]
    r = medlens("slices", str(tmp_path / "img"), str(out), "--mask", "no-equals-sign")
    assert r.returncode == 2 and "NAME=VALUE" in r.stderr and "Traceback" not in r.stderr


def test_heatmap_goes_back_through_crop_and_letterbox_to_the_original_pixels():
    """`medlens explain` draws at the original resolution: the heatmap of a region, carried back,
    lies on that region of the original image (the inverse of how a mask is carried forward)."""
    from medlens.explain.draw import to_original
    from medlens.preprocess import Pipeline, align_mask

    pipeline = Pipeline.from_config(
        [
            {"step": "grayscale"},
            {"step": "crop_border", "threshold": 0.04},
            {"step": "resize", "size": 32, "keep_aspect": True},
            {"step": "normalize", "mean": [0.5], "std": [0.25]},
        ]
    )
    image = np.zeros((60, 90), np.float32)
    image[5:55, 10:85] = 0.5  # a black border the pipeline crops
    region = np.zeros((60, 90), bool)
    region[20:30, 40:60] = True
    pre = pipeline(image)
    heat = align_mask(region, pipeline, pre.info).astype(np.float32)  # 32 x 32, letterboxed
    back = to_original(heat, pipeline, pre.info)
    assert back.shape == (60, 90)
    assert ((back > 0.5) == region).mean() > 0.98
    assert back[:5].max() == 0 and back[:, :10].max() == 0  # the cropped border stays empty


# ---- a trained tiny model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, phantoms):
    """``medlens split`` then ``medlens train`` (tracked) on the same data, recipe and seed."""
    root = tmp_path_factory.mktemp("trained")
    recipe = tiny_recipe_file(root / "r.yaml")
    split = medlens(
        "split", str(phantoms), "--recipe", str(recipe), "--out", str(root / "split.csv")
    )
    assert split.returncode == 0, split.stderr
    r = medlens(
        "train", str(recipe), "--data", str(phantoms), "--out", str(root / "runs"), "--no-progress"
    )
    assert r.returncode == 0, r.stderr
    return {
        "root": root,
        "recipe": recipe,
        "manifest": phantoms,
        "runs": root / "runs",
        "bundle": root / "runs" / "tiny_cxr" / "bundle",
        "train": r,
        "split_csv": root / "split.csv",
    }


@pytest.mark.slow
def test_train_is_never_silent_and_keeps_mlflow_quiet(trained):
    r = trained["train"]
    assert "Held-out test metrics" in r.stdout
    for phase in ("calibrating", "testing on", "writing the report", "logging the run to MLflow"):
        assert phase in r.stderr, r.stderr
    both = r.stdout + r.stderr
    assert "INFO mlflow" not in both and "alembic" not in both.lower()


@pytest.mark.slow
def test_split_and_train_draw_the_same_split(trained):
    drawn = trained["split_csv"].read_text()
    used = (trained["runs"] / "tiny_cxr" / "splits.csv").read_text()
    assert drawn == used
    assert {row["split"] for row in rows(trained["split_csv"])} == {"train", "val", "test"}


@pytest.mark.slow
def test_train_uses_a_given_split_and_refuses_to_mix_splits(trained, tmp_path: Path):
    given = rows(trained["split_csv"])
    a = next(i for i, row in enumerate(given) if row["split"] == "train")
    b = next(
        i
        for i, row in enumerate(given)
        if row["split"] == "test" and row["label"] == given[a]["label"]
    )
    given[a]["split"], given[b]["split"] = "test", "train"
    custom = tmp_path / "custom.csv"
    with custom.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(given[0]))
        w.writeheader()
        w.writerows(given)
    recipe, data = str(trained["recipe"]), str(trained["manifest"])
    # The trained run holds another split: replacing it quietly would mix train and test.
    r = medlens(
        "train", recipe, "--data", data, "--out", str(trained["runs"]), "--splits", str(custom)
    )
    assert r.returncode == 2 and "--fresh" in r.stderr and "Traceback" not in r.stderr

    out = tmp_path / "runs"
    r = medlens(
        "train", recipe, "--data", data, "--out", str(out), "--splits", str(custom),
        "--epochs", "1", "--no-track", "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    used = rows(out / "tiny_cxr" / "splits.csv")
    assert [(x["key"], x["split"]) for x in used] == [(x["key"], x["split"]) for x in given]
    assert "reused" in r.stdout


@pytest.mark.slow
def test_generic_recipe_from_folders_and_split_agree(phantoms, tmp_path: Path):
    folders = class_folders(phantoms, tmp_path / "cxr", {c: c for c in CLASSES})
    r = medlens("split", str(folders), "--out", str(tmp_path / "s.csv"), "--no-progress")
    assert r.returncode == 0, r.stderr
    r = medlens(
        "train", "--data", str(folders), "--out", str(tmp_path / "runs"), "--epochs", "1",
        "--no-track", "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "generic recipe" in r.stdout
    run = tmp_path / "runs" / "cxr"
    meta = json.loads((run / "bundle" / "bundle.json").read_text())
    assert meta["classes"] == CLASSES
    assert (run / "splits.csv").read_text() == (tmp_path / "s.csv").read_text()


@pytest.mark.slow
def test_predict_shows_the_policy_decision_and_fails_on_unreadable(trained, tmp_path: Path):
    from medlens.inference import Predictor

    images = sorted((trained["manifest"].parent / "images").glob("*.png"))[:3]
    long_name = tmp_path / ("scan_" + "x" * 150 + ".png")
    shutil.copy(images[0], long_name)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.jpg").write_text("this is not a jpeg")
    png = bad / "trunc.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(png)
    png.write_bytes(png.read_bytes()[:200])
    out_csv = tmp_path / "preds.csv"
    args = ["predict", str(trained["bundle"]), *map(str, images), str(long_name), str(bad)]
    r = medlens(*args, "--out", str(out_csv), "--no-progress")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert "3 of 7 input(s) could not be read" in r.stderr.replace("\n", " ")
    for name in ("empty.png", "text.jpg", "trunc.png"):
        assert name in r.stderr
    assert "clinician" in r.stdout and "decision" in r.stdout

    got = rows(out_csv)
    assert len(got) == 7
    for col in ("decision", "decision_threshold", "most_probable", "probability", "error"):
        assert col in got[0]
    assert str(long_name) in {row["path"] for row in got}  # never cut
    predictor = Predictor.from_bundle(trained["bundle"])
    for row in got:
        if row["error"]:
            continue
        p = predictor.predict(row["path"])
        assert row["decision"] == (p.decision or p.label)
        assert row["most_probable"] == p.label
        assert float(row["probability"]) == pytest.approx(p.confidence, abs=1e-5)
        thr = "" if p.decision_threshold is None else f"{p.decision_threshold:.6f}"
        assert row["decision_threshold"] == thr

    r = medlens(*args, "--skip-unreadable", "--no-progress")
    assert r.returncode == 0, r.stderr
    r = medlens("predict", str(trained["bundle"]), str(bad), "--skip-unreadable", "--no-progress")
    assert r.returncode == 2  # nothing could be read at all


@pytest.mark.slow
def test_predict_many_files_prints_a_summary(trained, tmp_path: Path):
    folder = trained["manifest"].parent / "images"
    n = len(list(folder.glob("*.png")))
    r = medlens("predict", str(trained["bundle"]), str(folder), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert f"{n} images" in r.stdout
    assert "cxr_00001" not in r.stdout  # no row per file
    counts = [int(x) for x in re.findall(r"│\s*(\d+)\s*│", r.stdout)]
    assert sum(counts) == n


@pytest.mark.slow
def test_explain_takes_folders_and_draws_at_the_original_resolution(trained, tmp_path: Path):
    src = sorted((trained["manifest"].parent / "images").glob("*.png"))[0]
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(src).resize((80, 64)).save(folder / "wide.png")  # the model sees 32 x 32
    shutil.copy(src, folder / "square.png")
    out = tmp_path / "overlays"
    r = medlens("explain", str(trained["bundle"]), str(folder), "--out", str(out))
    assert r.returncode == 0, r.stderr
    pngs = {p.name: Image.open(p).size for p in out.glob("*.png")}
    assert len(pngs) == 2
    assert next(s for n, s in pngs.items() if "wide" in n) == (80, 64)
    assert next(s for n, s in pngs.items() if "square" in n) == Image.open(src).size


@pytest.mark.slow
def test_evaluate_prints_warnings_first(trained, tmp_path: Path):
    r = medlens(
        "evaluate", str(trained["bundle"]), str(trained["manifest"]), "--out",
        str(tmp_path / "m.json"), "--no-progress",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.json").is_file() and "Confusion matrix" in r.stdout

    from rich.console import Console

    import medlens.cli.summaries as summaries

    m = json.loads((trained["runs"] / "tiny_cxr" / "metrics.json").read_text())
    m["warnings"] = [{"message": "policy gives up most of normal's specificity"}, "plain text"]
    console = Console(record=True, width=100)
    old = summaries.console
    summaries.console = console
    try:
        summaries.print_metrics(m, "test")
    finally:
        summaries.console = old
    text = console.export_text()
    assert text.index("WARNING") < text.index("Confusion matrix")
    assert "normal's specificity" in text and "plain text" in text


@pytest.mark.slow
def test_mlflow_curves_and_artifacts_survive_moving_the_runs_folder(trained, tmp_path: Path):
    from mlflow.tracking import MlflowClient

    from medlens.track import epoch_curves, promote

    moved = tmp_path / "elsewhere" / "runs"
    shutil.copytree(trained["runs"], moved)
    client = MlflowClient(f"sqlite:///{moved / 'mlflow.db'}")
    exp = client.get_experiment_by_name("medlens")
    (run,) = client.search_runs([exp.experiment_id])
    curves = epoch_curves(trained["runs"] / "tiny_cxr")
    assert set(curves) == {"epoch/train_loss", "epoch/val_loss", "epoch/val_macro_f1"}
    for key, points in curves.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert [s for s, _ in history] == [0, 1]  # two epochs, step = epoch
        assert [v for _, v in history] == pytest.approx([v for _, v in points])
    assert "val_macro_f1" in run.data.metrics  # the ranked best value is still there
    assert not run.info.artifact_uri.startswith(("/", "file:"))  # no absolute path stored

    out = promote(moved, run.info.run_id, tmp_path / "promoted")
    assert (out / "bundle.json").is_file()

    # What `cd runs && mlflow ui --backend-store-uri sqlite:///mlflow.db` serves.
    probe = (
        "from mlflow.server import app\n"
        f"r = app.test_client().get('/api/2.0/mlflow/artifacts/list?run_id={run.info.run_id}"
        "&path=bundle')\n"
        "print(r.status_code, r.get_data(as_text=True))\n"
    )
    env = {
        **os.environ,
        "_MLFLOW_SERVER_FILE_STORE": "sqlite:///mlflow.db",
        "_MLFLOW_SERVER_ARTIFACT_DESTINATION": "./mlartifacts",
        "_MLFLOW_SERVER_SERVE_ARTIFACTS": "true",
    }
    res = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=moved,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.stdout.startswith("200") and "bundle/model.safetensors" in res.stdout, res.stderr


@pytest.mark.slow
def test_compare_trains_candidates_on_one_split(tmp_path: Path):
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
    got = json.loads((root / "compare.json").read_text())
    assert {row["label"] for row in got} == {"small_cnn", "hog_rf", "probe"}
    f1s = [row["macro_f1"]["value"] for row in got]
    assert f1s == sorted(f1s, reverse=True)  # ranked
    for row in got:  # a bound is None where the interval is one-sided or not estimable
        f1 = row["macro_f1"]
        assert f1["ci_low"] is None or f1["ci_low"] <= f1["value"]
        assert f1["ci_high"] is None or f1["value"] <= f1["ci_high"]
    # one split for all: every candidate's splits.csv is the same file content
    splits = {
        (root / f"tiny_cxr-{lab}" / "splits.csv").read_text()
        for lab in ("small_cnn", "hog_rf", "probe")
    }
    assert len(splits) == 1
    assert len(rows(root / "compare.csv")) == 3
    # a classical candidate gets the same report as the networks
    html = (root / "tiny_cxr-hog_rf" / "report.html").read_text()
    assert "macro-F1" in html
