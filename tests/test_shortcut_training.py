"""Shortcut-aware training on a phantom set with a planted acquisition cue.

Class ``a`` is saved as tinted RGB JPEG with a brightness offset, class ``b`` as grey PNG: the
audit's probe reads the class off the files. The anatomy (``content=True``) is stripe
orientation, which has the same histogram in both classes, so a probe on pixels the model sees
after ``grayscale`` + ``standardize`` has nothing left to read, and a model trained with the
neutralisation (and JPEG/gamma augmentation) keeps its accuracy when the acquisition is
randomised at test. With no anatomy at all (``content=False``) a model without neutralisation
can only learn the cue, and the cue test names the class whose sensitivity rests on it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from medlens.data.manifest import from_csv
from medlens.preprocess import Pipeline
from medlens.shortcuts import probe_before_after, randomise_acquisition

NEUTRAL = [
    {"step": "grayscale"},
    {"step": "standardize"},
    {"step": "resize", "size": 32},
    {"step": "normalize", "mean": [0.5], "std": [0.25]},
]
PLAIN = [
    {"step": "rgb"},
    {"step": "resize", "size": 32},
    {"step": "normalize", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
]


def _planted_set(root: Path, n: int = 120, content: bool = True, seed: int = 0) -> Path:
    """``n`` 40 x 40 images, half ``a`` (RGB JPEG, tinted, +0.15) and half ``b`` (grey PNG)."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    yy, xx = np.mgrid[0:40, 0:40].astype(np.float32)
    for i in range(n):
        label = "ab"[i % 2]
        phase = rng.uniform(0, 2 * np.pi)
        period = rng.uniform(5, 8)
        if content:  # anatomy: horizontal stripes in a, vertical in b (same histogram)
            coord = yy if label == "a" else xx
            img = 0.45 + 0.2 * np.sin(2 * np.pi * coord / period + phase)
        else:  # no anatomy at all: the same random texture law for both classes
            img = np.full((40, 40), 0.45, np.float32)
        img = img + rng.normal(0, 0.08, (40, 40))
        if label == "a":  # the source: brighter, colour, JPEG
            img = np.clip(img + 0.15, 0, 1)
            rgb = np.stack([img * 1.08, img, img * 0.9], axis=2).clip(0, 1)
            name = f"img/{i:04d}.jpg"
            bgr = np.rint(rgb[..., ::-1] * 255).astype(np.uint8)
            cv2.imwrite(str(root / name), bgr, [cv2.IMWRITE_JPEG_QUALITY, 85])
        else:
            name = f"img/{i:04d}.png"
            cv2.imwrite(str(root / name), np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8))
        rows.append([name, label, f"P{i:04d}"])
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "patient_id"])
        w.writerows(rows)
    return manifest


def _recipe(preprocess: list[dict], augment: dict, name: str):
    from medlens.recipes import parse_recipe

    d = {
        "name": name,
        "task": {"classes": ["a", "b"], "positive": ["a"]},
        "data": {"source": "folder"},
        "split": {"val": 0.2, "test": 0.25, "seed": 0},
        "preprocess": preprocess,
        "model": {"name": "small_cnn", "kwargs": {"widths": [8, 16, 16]}},
        "train": {
            "epochs": 8,
            "batch_size": 16,
            "lr": 0.01,
            "early_stopping_patience": None,
            "augment": {"hflip": 0.0, "rotate_degrees": 0, "scale": [1, 1], **augment},
        },
        "evaluate": {"batch_size": 32, "n_bootstrap": 50, "shortcut_check": True},
        "explain": {"enabled": False},
    }
    return parse_recipe(d, f"{name}.yaml")


def test_randomise_acquisition_keeps_shape_and_range():
    rng = np.random.default_rng(0)
    img = np.random.default_rng(1).random((20, 24)).astype(np.float32)
    outs = [randomise_acquisition(img, rng) for _ in range(20)]
    assert all(o.shape[:2] == (20, 24) and o.min() >= 0 and o.max() <= 1 for o in outs)
    assert any(o.ndim == 3 for o in outs) and any(o.ndim == 2 for o in outs)
    assert any(not np.allclose(o if o.ndim == 2 else o.mean(2), img, atol=0.02) for o in outs)


def test_probe_finds_the_planted_cue_and_drops_after_neutralisation(tmp_path):
    manifest = from_csv(_planted_set(tmp_path, n=80), ["a", "b"])
    out = probe_before_after(manifest, Pipeline.from_config(NEUTRAL))
    before, after = out["files"], out["preprocessed"]
    assert before["balanced_accuracy"] >= 0.9 and before["level"] == "critical"
    assert out["decoded"]["balanced_accuracy"] >= 0.9  # the pixels as read carry it too
    assert after["balanced_accuracy"] <= before["balanced_accuracy"] - 0.25
    assert after["level"] != "critical"
    plain = probe_before_after(manifest, Pipeline.from_config(PLAIN))
    assert plain["preprocessed"]["balanced_accuracy"] >= 0.9  # rgb + resize keep the cue


@pytest.mark.slow
def test_neutralised_model_keeps_accuracy_and_a_cue_model_is_named(tmp_path):
    from medlens.workflow import run_recipe

    data = _planted_set(tmp_path / "content", n=160, content=True)
    neutral = _recipe(NEUTRAL, {"jpeg": 0.5, "gamma": 0.3, "blur": 0.5}, "neutral")
    res = run_recipe(
        neutral, tmp_path / "runs", data=data, progress=False, track=False, export_onnx=False
    )
    sc = res.metrics["shortcuts"]  # cue test on the run's own held-out test split
    assert sc["probe"]["files"]["level"] == "critical"
    assert sc["probe"]["preprocessed"]["level"] != "critical"
    cue = sc["cue_test"]
    assert cue["n"] == res.split_counts["test"]
    assert cue["accuracy"]["as_is"]["value"] >= 0.8
    assert cue["accuracy"]["randomised"]["value"] >= 0.8  # accuracy holds without the cue
    assert cue["named"] == []
    assert "Shortcuts: acquisition cues" in res.report.read_text()

    cue_only = _planted_set(tmp_path / "cue", n=160, content=False, seed=1)
    res2 = run_recipe(
        _recipe(PLAIN, {}, "plain"),
        tmp_path / "runs",
        data=cue_only,
        progress=False,
        track=False,
        export_onnx=False,
    )
    cue2 = res2.metrics["shortcuts"]["cue_test"]
    assert cue2["accuracy"]["as_is"]["value"] >= 0.8  # the cue alone predicts the class
    assert cue2["named"]  # ... and the class whose sensitivity rests on it is named
    assert "Sensitivity that rests on the source" in res2.report.read_text()
