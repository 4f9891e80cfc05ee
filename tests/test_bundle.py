from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medlens.bundle import add_file, load_bundle, save_bundle, verify_bundle
from medlens.errors import BundleError
from medlens.inference import Predictor
from medlens.models import create_model

PRE = [
    {"step": "grayscale"},
    {"step": "resize", "size": 32},
    {"step": "normalize", "mean": [0.5], "std": [0.25]},
]


def _bundle(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=3, in_chans=1, widths=[4, 8, 8]).eval()
    path = save_bundle(
        tmp_path / "b",
        model,
        name="t",
        model_spec={
            "name": "small_cnn",
            "num_classes": 3,
            "in_chans": 1,
            "kwargs": {"widths": [4, 8, 8]},
        },
        classes=["a", "b", "c"],
        task={"classes": ["a", "b", "c"]},
        preprocess=PRE,
        recipe_yaml="name: t\n",
        data_fingerprint={"n_samples": 0},
        intended_use="tests",
        metrics={"macro_f1": 0.5},
    )
    return path, model


def test_roundtrip_and_predictor(tmp_path: Path):
    path, model = _bundle(tmp_path)
    b = load_bundle(path)
    assert b.classes == ["a", "b", "c"] and b.metrics == {"macro_f1": 0.5}
    assert {"torch", "python", "numpy"} <= set(b.meta["versions"])
    rebuilt = b.build_model()
    for (k1, v1), (k2, v2) in zip(
        model.state_dict().items(), rebuilt.state_dict().items(), strict=True
    ):
        assert k1 == k2 and torch.equal(v1, v2)
    pred = Predictor.from_bundle(path).predict(
        np.random.default_rng(0).random((40, 50)).astype(np.float32)
    )
    assert pred.label in {"a", "b", "c"} and abs(sum(pred.probabilities.values()) - 1) < 1e-6
    assert "clinician" in pred.disclaimer and pred.model.startswith("t (small_cnn)")
    assert len(pred.bundle_sha256) == 64


def test_bundle_holds_no_pickles(tmp_path: Path):
    path, _ = _bundle(tmp_path)
    names = sorted(p.name for p in path.iterdir())
    assert names == [
        "SHA256SUMS",
        "bundle.json",
        "metrics.json",
        "model.safetensors",
        "recipe.yaml",
    ]


@pytest.mark.parametrize(
    "damage", ["flip_byte", "truncate", "extra_file", "delete", "edit_json", "no_sums"]
)
def test_tampered_bundle_refused(tmp_path: Path, damage: str):
    path, _ = _bundle(tmp_path)
    w = path / "model.safetensors"
    if damage == "flip_byte":
        data = bytearray(w.read_bytes())
        data[len(data) // 2] ^= 0xFF
        w.write_bytes(bytes(data))
        match = "does not match its SHA-256"
    elif damage == "truncate":
        w.write_bytes(w.read_bytes()[:-100])
        match = "truncated"
    elif damage == "extra_file":
        (path / "evil.py").write_text("print('hi')")
        match = "not listed"
    elif damage == "delete":
        (path / "recipe.yaml").unlink()
        match = "missing"
    elif damage == "edit_json":
        meta = json.loads((path / "bundle.json").read_text())
        meta["classes"] = ["c", "b", "a"]
        (path / "bundle.json").write_text(json.dumps(meta))
        match = "bundle.json"
    else:
        (path / "SHA256SUMS").unlink()
        match = "not a medlens bundle"
    with pytest.raises(BundleError, match=match):
        Predictor.from_bundle(path)


def test_add_file_reseals(tmp_path: Path):
    path, _ = _bundle(tmp_path)
    add_file(path, "notes.json", "{}")
    assert "notes.json" in verify_bundle(path)
    with pytest.raises(BundleError):
        add_file(path, "../escape.txt", "x")


def test_missing_bundle_is_clear(tmp_path: Path):
    with pytest.raises(BundleError, match="bundle not found"):
        load_bundle(tmp_path / "nothing")


def test_bundle_records_its_training_data(tmp_path: Path):
    """Given explicitly, or read from the recipe: phantoms or real, how many, from where."""
    from medlens.bundle import describe_training_data

    path, _ = _bundle(tmp_path)  # recipe "name: t" says nothing about its data
    b = load_bundle(path)
    assert b.meta["training_data"] == {
        "source": "unknown",
        "synthetic": False,
        "n_images": 0,
        "origin": "not recorded",
    }
    assert b.created == b.meta["created"] and not b.synthetic

    model = create_model("small_cnn", num_classes=3, in_chans=1, widths=[4, 8, 8])
    spec = {"name": "small_cnn", "num_classes": 3, "in_chans": 1, "kwargs": {"widths": [4, 8, 8]}}
    common = {
        "model_spec": spec,
        "classes": ["a", "b", "c"],
        "task": {"classes": ["a", "b", "c"]},
        "preprocess": PRE,
        "data_fingerprint": {"n_samples": 120},
        "intended_use": "tests",
    }
    phantom_yaml = "name: p\ndata:\n  source: phantoms\n  phantoms:\n    kind: chest_xray\n"
    p = load_bundle(
        save_bundle(tmp_path / "p", model, name="p", recipe_yaml=phantom_yaml, **common)
    )
    assert p.synthetic and p.training_data == {
        "source": "phantoms",
        "synthetic": True,
        "n_images": 120,
        "origin": "generated chest_xray phantoms",
    }
    real_yaml = "name: r\ndata:\n  source: folder\n  path: /data/cxr/train\n"
    r = load_bundle(save_bundle(tmp_path / "r", model, name="r", recipe_yaml=real_yaml, **common))
    assert not r.synthetic and r.training_data["origin"] == "/data/cxr/train"
    assert r.training_data["n_images"] == 120
    given = describe_training_data("csv", 75, "site A export, 2025")
    g = load_bundle(
        save_bundle(
            tmp_path / "g", model, name="g", recipe_yaml=real_yaml, training_data=given, **common
        )
    )
    assert g.training_data == given and not g.synthetic
    # A bundle written before the field existed is described from its recipe.
    meta = json.loads((tmp_path / "p" / "bundle.json").read_text())
    del meta["training_data"]
    (tmp_path / "p" / "bundle.json").write_text(json.dumps(meta))
    from medlens.bundle import write_sums

    write_sums(tmp_path / "p")
    assert load_bundle(tmp_path / "p").synthetic
