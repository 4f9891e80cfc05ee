"""Shared fixtures: tiny recipes and data, the real-data folder beside the project, and one
trained tiny bundle per test session for the web-service and browser tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def tiny_recipe_dict(**overrides) -> dict:
    """A chest X-ray recipe shrunk to seconds: 48 px, small CNN, 2 epochs."""
    d = {
        "name": "tiny_cxr",
        "task": {
            "classes": ["normal", "pneumonia", "tuberculosis"],
            "positive": ["pneumonia", "tuberculosis"],
            "priority": ["tuberculosis", "pneumonia"],
        },
        "data": {
            "source": "phantoms",
            "phantoms": {"kind": "chest_xray", "n": 60, "size": 48, "seed": 1},
        },
        "split": {"val": 0.2, "test": 0.2, "seed": 0},
        "preprocess": [
            {"step": "grayscale"},
            {"step": "crop_border"},
            {"step": "exposure_check"},
            {"step": "clahe", "only_if_flagged": True},
            {"step": "resize", "size": 48},
            {"step": "normalize", "mean": [0.5], "std": [0.25]},
        ],
        "model": {"name": "small_cnn", "kwargs": {"widths": [8, 16, 16]}},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.003, "early_stopping_patience": None},
        "evaluate": {"batch_size": 16, "n_bootstrap": 100},
        "explain": {"max_images": 8, "faithfulness_images": 2, "n_bootstrap": 50},
    }
    for k, v in overrides.items():
        d[k] = v
    return d


@pytest.fixture
def tiny_recipe():
    from medlens.recipes import parse_recipe

    return parse_recipe(tiny_recipe_dict(), "tiny.yaml")


def shrunk_recipe(name: str, n: int = 40, size: int = 48):
    """A built-in recipe cut to seconds: few phantoms, small images, one short epoch."""
    from medlens.recipes import load_recipe, parse_recipe

    r = load_recipe(name)
    d = r.model_dump(mode="json", exclude={"source_dir"})
    d["data"]["phantoms"].update({"n": n, "size": size})
    for step in d["preprocess"]:
        if step["step"] == "resize":
            step["size"] = size
    d["train"].update(
        {"epochs": 1, "batch_size": 8, "limit_train_batches": 2, "early_stopping_patience": None}
    )
    d["evaluate"].update({"n_bootstrap": 20, "batch_size": 16})
    d["explain"].update({"max_images": 3, "faithfulness_images": 1, "n_bootstrap": 20})
    if d.get("segmentation"):
        d["segmentation"].update({"epochs": 1, "batch_size": 8})
    for m in d["model"].get("members") or []:
        if "img_size" in m["kwargs"]:
            m["kwargs"]["img_size"] = size
    for c in d.get("candidates", []):
        c["train"] = {k: v for k, v in c["train"].items() if k != "epochs"}
    return parse_recipe(d, f"{name} (shrunk)", r.source_dir)


@pytest.fixture(scope="session")
def serve_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"a": bundle, "b": a copy under another name, "images": its phantom PNG folder}``.

    Trained once per session (seconds) from :func:`tiny_recipe_dict` and shared by every serve
    and browser test module; ``b`` differs from ``a`` only in its name (and so its hash), as two
    bundles of one recipe would.
    """
    import json
    import shutil

    from medlens.bundle import write_sums
    from medlens.recipes import parse_recipe
    from medlens.workflow import run_recipe

    root = tmp_path_factory.mktemp("serve_bundle")
    res = run_recipe(parse_recipe(tiny_recipe_dict(), "t.yaml"), root, progress=False, track=False)
    a = Path(res.bundle_dir)
    b = root / "bundle_b"
    shutil.copytree(a, b)
    meta = json.loads((b / "bundle.json").read_text())
    meta["name"] = "tiny_cxr_second"
    (b / "bundle.json").write_text(json.dumps(meta, indent=2))
    write_sums(b)
    images = next(root.glob("data/phantoms_*/images"))
    return {"a": a, "b": b, "images": images}
