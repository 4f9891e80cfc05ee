"""Shared fixtures: tiny recipes and data, and the real-data folder beside the project."""

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
