"""HOG + MLP / random forest / XGBoost behind the network interface: fit, predict, bundle, refuse."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("skimage")
pytest.importorskip("xgboost")
sio = pytest.importorskip("skops.io")

import medlens.models.classical  # noqa: E402, F401  (registers the hog_* models)
from medlens.bundle import WEIGHTS, save_bundle  # noqa: E402
from medlens.errors import BundleError, MedlensError  # noqa: E402
from medlens.inference import Predictor  # noqa: E402
from medlens.models import create_model, model_info  # noqa: E402
from medlens.models.classical import ClassicalModel  # noqa: E402
from medlens.train.classical import fit_classical  # noqa: E402

NAMES = ["hog_mlp", "hog_rf", "hog_xgboost"]
CLASSES = ["horizontal", "vertical", "diagonal"]
# Small estimators so the whole file runs in seconds on one core.
KWARGS: dict[str, dict] = {
    "hog_mlp": {"hidden_layer_sizes": [32], "max_iter": 300},
    "hog_rf": {"n_estimators": 40},
    "hog_xgboost": {"n_estimators": 30, "max_depth": 3},
}
PRE = [{"step": "grayscale"}, {"step": "resize", "size": 32}]


def stripes(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``n x 1 x size x size`` images of noisy stripes; the class is their orientation."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    y = np.arange(n) % len(CLASSES)
    rng.shuffle(y)
    x = np.empty((n, 1, size, size), np.float32)
    for i, c in enumerate(y):
        coord = (yy, xx, (xx + yy) / np.sqrt(2))[c]
        period = rng.uniform(5, 9)
        wave = 0.5 + 0.35 * np.sin(2 * np.pi * coord / period + rng.uniform(0, 2 * np.pi))
        x[i, 0] = np.clip(wave + rng.normal(0, 0.1, (size, size)), 0, 1)
    return x, y


@pytest.fixture(scope="module")
def data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"train": stripes(60, seed=0), "test": stripes(45, seed=1)}


@pytest.fixture(scope="module")
def fitted(data) -> dict[str, ClassicalModel]:
    x, y = data["train"]
    out = {}
    for name in NAMES:
        model = create_model(name, num_classes=3, in_chans=1, **KWARGS[name])
        out[name] = model.fit_arrays(x, y)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_fits_and_beats_chance(fitted, data, name: str):
    model = fitted[name]
    assert model_info(model).kind == "classical" and model.is_fitted
    small = create_model("small_cnn", num_classes=3, in_chans=1, widths=[4])
    assert model_info(small).kind == "network"
    x, y = data["test"]
    with torch.inference_mode():
        logits = model.eval()(torch.from_numpy(x))
    assert logits.shape == (len(x), 3) and logits.dtype == torch.float32
    accuracy = float((logits.argmax(1).numpy() == y).mean())
    assert accuracy >= 0.8, f"{name}: held-out accuracy {accuracy:.2f} (chance 0.33)"


@pytest.mark.parametrize("name", NAMES)
def test_softmax_of_logits_is_the_estimators_probabilities(fitted, data, name: str):
    model = fitted[name]
    x = data["test"][0][:10]
    probs = model.estimator.predict_proba(model.features(x))
    got = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(got, probs, atol=1e-5)
    np.testing.assert_allclose(got.sum(1), 1, atol=1e-6)


def _save(tmp_path: Path, model: torch.nn.Module, name: str) -> Path:
    return save_bundle(
        tmp_path / name,
        model,
        name="baseline",
        model_spec={"name": name, "num_classes": 3, "in_chans": 1, "kwargs": KWARGS[name]},
        classes=CLASSES,
        task={"classes": CLASSES},
        preprocess=PRE,
        recipe_yaml="name: baseline\n",
        data_fingerprint={"n_samples": 60},
        intended_use="tests",
    )


@pytest.mark.parametrize("name", NAMES)
def test_bundle_round_trip_same_probabilities(fitted, data, tmp_path: Path, name: str):
    from safetensors.torch import load_file

    model = fitted[name]
    path = _save(tmp_path, model, name)
    state = load_file(str(path / WEIGHTS))
    assert list(state) == ["payload"] and state["payload"].dtype == torch.uint8
    raw = state["payload"].numpy().tobytes()
    if name == "hog_xgboost":
        assert json.loads(raw)["learner"]["learner_model_param"]["num_class"] == "3"
    else:  # a skops zip of JSON and .npy members: no pickle anywhere
        members = zipfile.ZipFile(io.BytesIO(raw)).namelist()
        assert members and all(m.endswith((".json", ".npy")) for m in members), members

    predictor = Predictor.from_bundle(path)
    assert model_info(predictor.model).kind == "classical" and predictor.model.is_fitted
    x = data["test"][0]
    np.testing.assert_allclose(predictor.predict_tensor(x), model.predict_proba(x), atol=1e-5)
    pred = predictor.predict(x[0, 0])
    assert pred.label in CLASSES and abs(sum(pred.probabilities.values()) - 1) < 1e-6


def test_fit_classical_from_memory_map_is_deterministic(data, tmp_path: Path):
    x, y = data["train"]
    np.save(tmp_path / "cache.npy", np.concatenate([x, x[:5]]))  # extra rows not trained on
    cache = np.load(tmp_path / "cache.npy", mmap_mode="r")
    rows = np.random.default_rng(3).permutation(len(x))
    weights = [1.0, 2.0, 0.5]
    a = fit_classical(
        create_model("hog_rf", 3, 1, n_estimators=20), cache, rows, y[rows], weights, chunk=7
    )
    b = create_model("hog_rf", 3, 1, n_estimators=20).fit_arrays(x[rows], y[rows], weights)
    test_x = data["test"][0]
    np.testing.assert_array_equal(a.predict_proba(test_x), b.predict_proba(test_x))
    mlp = fit_classical(create_model("hog_mlp", 3, 1, **KWARGS["hog_mlp"]), cache, rows, y[rows])
    assert mlp.is_fitted
    with pytest.raises(MedlensError, match="labels"):
        fit_classical(create_model("hog_rf", 3, 1), cache, rows, y[rows][:-1])


@pytest.mark.parametrize("name", ["hog_mlp", "hog_rf"])
def test_untrusted_payload_refused(fitted, tmp_path: Path, name: str):
    from sklearn.preprocessing import FunctionTransformer

    crafted = sio.dumps(FunctionTransformer(os.system))  # would call os.system if trusted
    fresh = create_model(name, 3, 1)
    with pytest.raises(BundleError, match="system"):
        fresh.load_state_dict({"payload": torch.tensor(list(crafted), dtype=torch.uint8)})

    # The same payload inside a correctly sealed bundle is refused when the bundle is opened.
    model = create_model(name, 3, 1, **KWARGS[name])
    model.payload = torch.frombuffer(bytearray(crafted), dtype=torch.uint8)
    path = _save(tmp_path, model, name)
    with pytest.raises(BundleError, match="does not trust"):
        Predictor.from_bundle(path)

    # A trusted type, but not the estimator this model is.
    other = "hog_rf" if name == "hog_mlp" else "hog_mlp"
    with pytest.raises(BundleError, match="payload holds a"):
        create_model(name, 3, 1).load_state_dict(fitted[other].state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_pickle_bytes_never_unpickled(name: str):
    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("a pickle payload was unpickled",))

    blob = torch.frombuffer(bytearray(pickle.dumps(Boom())), dtype=torch.uint8)
    with pytest.raises(BundleError, match="payload"):
        create_model(name, 3, 1).load_state_dict({"payload": blob})


@pytest.mark.parametrize("name", NAMES)
def test_unfitted_model_and_bad_input(fitted, name: str):
    x = torch.rand(2, 1, 32, 32)
    with pytest.raises(MedlensError, match="train it first"):
        create_model(name, 3, 1)(x)
    with pytest.raises(MedlensError, match="image size differs"):
        fitted[name](torch.rand(2, 1, 48, 48))
    with pytest.raises(MedlensError, match="channel"):
        fitted[name](torch.rand(2, 3, 32, 32))
    # An unfitted model still saves and loads (empty payload) under strict loading.
    fresh = create_model(name, 3, 1)
    fresh.load_state_dict(create_model(name, 3, 1).state_dict(), strict=True)
    with pytest.raises(RuntimeError, match="Unexpected"):
        fresh.load_state_dict({"payload": torch.zeros(0, dtype=torch.uint8), "w": x})


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_refused(name: str, tmp_path: Path):
    with pytest.raises(MedlensError, match="no pretrained weights"):
        create_model(name, 3, 1, pretrained=True)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(MedlensError, match="no pretrained weights"):
        create_model(name, 3, 1, pretrained=str(weights))


def test_colour_input_and_bad_kwargs():
    x, y = stripes(30, seed=4)
    rgb = np.repeat(x, 3, axis=1)
    model = create_model("hog_rf", 3, in_chans=3, n_estimators=10).fit_arrays(rgb, y)
    assert model(torch.from_numpy(rgb[:4])).shape == (4, 3)
    with pytest.raises(MedlensError, match="not accepted"):
        create_model("hog_rf", 3, 1, no_such_option=1).fit_arrays(x, y)
    with pytest.raises(MedlensError, match="smaller than one HOG block"):
        create_model("hog_rf", 3, 1, pixels_per_cell=32).fit_arrays(x, y)
