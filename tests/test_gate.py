"""The input gate: gradability of decoded data, OOD thresholds from validation, stored state."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from medlens.data.io import decoded_stats
from medlens.evaluate.gate import (
    ACQ_NAMES,
    FEATURE_SCORES,
    InputGate,
    acquisition_properties,
    check_gradable,
    features_and_logits,
    saturation_fractions,
)


def _grade(arr: np.ndarray, min_size: int = 16) -> str | None:
    # the loader's [0, 1] array: 8-bit by its type, floats as given with NaN → 0 (as it does)
    if arr.dtype == np.uint8:
        unit = arr.astype(np.float32) / 255.0
    else:
        unit = np.clip(np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0), 0, 1)
    return check_gradable(decoded_stats(arr), min_size, unit_array=unit)


def _normal_image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:128, :128] / 128.0
    img = 0.5 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy) + 0.05 * rng.standard_normal((128, 128))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("arr", "expect"),
    [
        (np.full((64, 64), np.nan, np.float32), "no finite"),
        (np.where(np.eye(64) > 0, np.nan, 0.5).astype(np.float32), "not finite"),
        (np.where(np.eye(64) > 0, np.inf, 0.5).astype(np.float32), "not finite"),
        (np.zeros((700, 700), np.uint8), "constant"),
        (np.full((1, 1), 128, np.uint8), "1×1"),
        (np.random.default_rng(0).integers(0, 255, (8, 40), dtype=np.uint8), "8×40"),
    ],
)
def test_ungradable_images_say_why(arr, expect):
    why = _grade(arr)
    assert why is not None and expect in why


@pytest.mark.parametrize("side", [100, 400, 2000])
def test_one_stray_pixel_on_a_blank_field_is_ungradable(side):
    a = np.zeros((side, side), np.float32)
    a[1, 1] = 1.0
    why = _grade(a)
    assert why is not None and ("near-constant" in why or "no usable exposure" in why)


def test_saturated_image_has_no_usable_exposure():
    a = np.zeros((100, 100), np.uint8)
    a[:, 70:] = 255
    a[0, 0] = 100  # not constant, not near-constant: only the exposure test catches it
    assert "no usable exposure" in _grade(a)
    assert saturation_fractions(a / 255.0) == pytest.approx((0.6999, 0.3), abs=1e-3)
    # decoded figures carrying the shares take precedence over the array
    d = {**decoded_stats(a), "at_min_fraction": 0.1, "at_max_fraction": 0.1}
    assert check_gradable(d, 16) is None


def test_overflowing_values_are_ungradable():
    d = {**decoded_stats(np.ones((32, 32))), "std": float("inf")}
    assert "overflow" in check_gradable(d, 16)


def test_a_normal_image_is_gradable():
    assert _grade(_normal_image()) is None
    assert _grade(_normal_image(), min_size=200) is not None  # the recipe's minimum size counts


def _clouds(seed: int, d: int = 16):
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 3, (3, d))
    y = rng.integers(0, 3, 3000)
    f = means[y] + rng.normal(0, 1, (3000, d))
    acq = np.abs(rng.normal(0.3, 0.05, (3000, len(ACQ_NAMES))))
    return f, y, acq, means


@pytest.mark.parametrize("method", ["mahalanobis", "knn"])
def test_in_distribution_passes_and_another_cloud_is_flagged(method):
    f, y, acq, _ = _clouds(0)
    tr, va, te = slice(0, 1500), slice(1500, 2000), slice(2000, 3000)
    gate = InputGate.fit(f[tr], acq[tr], f[va], acq[va], 0.99, method=method, train_labels=y[tr])
    assert gate.val_pass_achieved >= 0.99
    _, flags = gate.score(f[te], acq[te])
    assert flags.mean() <= 0.03
    other, *_ = _clouds(99)  # same kind of data, other class centres: "another modality"
    _, flags_out = gate.score(other[te], acq[te])
    assert flags_out.mean() > 0.95


def test_mahalanobis_flags_a_shifted_cloud():
    f, y, acq, _ = _clouds(0)
    gate = InputGate.fit(f[:1500], acq[:1500], f[1500:2000], acq[1500:2000], train_labels=y[:1500])
    _, flags_out = gate.score(f[2000:] + 4.0, acq[2000:])  # every feature moved by 4 SD
    assert flags_out.mean() > 0.95


def test_acquisition_alone_can_flag_and_names_the_property():
    f, y, acq, _ = _clouds(1)
    gate = InputGate.fit(f[:1500], acq[:1500], f[1500:2000], acq[1500:2000], train_labels=y[:1500])
    odd = acq[2000:2010].copy()
    odd[:, ACQ_NAMES.index("colourfulness")] += 0.5  # a colour image to a grey model
    _, flags = gate.score(f[2000:2010], odd)
    assert flags.all()
    res = gate.assess(decoded_stats(_normal_image()), f[2000], odd[0])
    assert res.status == "out_of_distribution" and "colourfulness" in res.reason
    assert res.score > res.threshold == gate.acq_threshold


def test_validation_pass_rate_follows_the_requested_share():
    f, y, acq, _ = _clouds(2)
    g90 = InputGate.fit(f[:1500], acq[:1500], f[1500:], acq[1500:], 0.90, train_labels=y[:1500])
    g99 = InputGate.fit(f[:1500], acq[:1500], f[1500:], acq[1500:], 0.99, train_labels=y[:1500])
    assert 0.90 <= g90.val_pass_achieved < 0.95
    assert g99.val_pass_achieved >= 0.99
    assert g99.feature_threshold > g90.feature_threshold


def test_assess_order_ungradable_then_ood_then_ok():
    f, y, acq, _ = _clouds(3)
    gate = InputGate.fit(f[:1500], acq[:1500], f[1500:2000], acq[1500:2000], train_labels=y[:1500])
    blank = gate.assess(decoded_stats(np.zeros((64, 64), np.uint8)), None, None)
    assert blank.status == "ungradable" and not blank.assessed and blank.score is None
    far = gate.assess(decoded_stats(_normal_image()), f[2001] + 10.0, acq[2001])
    assert far.status == "out_of_distribution" and "feature score" in far.reason
    assert far.score > far.threshold == gate.feature_threshold
    ok = gate.assess(decoded_stats(_normal_image()), f[2002], acq[2002])
    assert ok.status == "ok" and ok.reason is None and ok.assessed
    json.dumps(far.to_dict(), allow_nan=False)


@pytest.mark.parametrize("method", FEATURE_SCORES)
def test_state_round_trip(method):
    f, y, acq, _ = _clouds(4)
    use = f[:, :3] if method == "energy" else f  # energy scores logits
    gate = InputGate.fit(
        use[:1500], acq[:1500], use[1500:2000], acq[1500:2000], method=method, train_labels=y[:1500]
    )
    meta, arrays = gate.to_state()
    meta = json.loads(json.dumps(meta, allow_nan=False))
    assert all(k.startswith("gate.") and v.dtype == np.float32 for k, v in arrays.items())
    back = InputGate.from_state(meta, arrays)
    s1, f1 = gate.score(use[2000:], acq[2000:])
    s2, f2 = back.score(use[2000:], acq[2000:])
    np.testing.assert_allclose(s1["feature"], s2["feature"], rtol=1e-3, atol=1e-4)
    assert (f1 != f2).mean() < 0.005  # float32 storage may move a case sitting on the threshold
    with pytest.raises(ValueError, match="version"):
        InputGate.from_state({**meta, "version": 99}, arrays)


def test_bad_fit_inputs_are_explained():
    f, _, acq, _ = _clouds(5)
    with pytest.raises(ValueError, match="method"):
        InputGate.fit(f, acq, f, acq, method="odin")
    with pytest.raises(ValueError, match="acquisition"):
        InputGate.fit(f, acq[:, :3], f, acq[:, :3])


def test_acquisition_properties_see_colour_and_aspect_of_the_decoded_image():
    rng = np.random.default_rng(0)
    grey = rng.random((1, 64, 64)).astype(np.float32)
    base = acquisition_properties(grey, rng.random((100, 100)))
    colour = rng.random((100, 200, 3)).astype(np.float32)
    col = acquisition_properties(grey, colour)
    i_c, i_a = ACQ_NAMES.index("colourfulness"), ACQ_NAMES.index("log_aspect")
    assert base[i_c] == 0 and col[i_c] > 0.2
    assert base[i_a] == 0 and col[i_a] == pytest.approx(np.log(0.5))
    assert len(base) == len(ACQ_NAMES) and np.isfinite(base).all()
    smooth = acquisition_properties(np.tile(np.linspace(0, 1, 64), (1, 64, 1)))
    assert smooth[ACQ_NAMES.index("texture")] < base[ACQ_NAMES.index("texture")]


def test_features_are_the_pooled_input_of_the_classifier():
    from medlens.models.small_cnn import SmallCNN

    model = SmallCNN(num_classes=3, widths=(4, 8))
    x = torch.randn(5, 1, 32, 32)
    feats, logits = features_and_logits(model, x)
    assert feats.shape == (5, model.num_features) and logits.shape == (5, 3)
    assert model.training  # its mode is given back
    model.eval()
    with torch.no_grad():
        expect = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    np.testing.assert_allclose(feats, expect, rtol=1e-5, atol=1e-6)

    class NoHead(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3)).repeat(1, 2)

    f2, l2 = features_and_logits(NoHead(), x)
    np.testing.assert_array_equal(f2, l2)  # falls back to the logits


@pytest.mark.slow
def test_gate_on_a_small_trained_cnn_flags_another_kind_of_phantom(tmp_path):
    """A CNN trained briefly on chest phantoms: its own held-out images pass, smears do not."""
    from medlens.data.io import read_image
    from medlens.data.phantoms import generate_phantoms
    from medlens.models.small_cnn import SmallCNN
    from medlens.preprocess import Pipeline

    pipe = Pipeline.from_config([{"step": "grayscale"}, {"step": "resize", "size": 32}])

    def load(kind: str, n: int):
        man = generate_phantoms(kind, tmp_path / kind, n=n, size=64, seed=0)
        rows = list(csv.DictReader(man.open()))
        imgs = [read_image(man.parent / r["path"]).array for r in rows]
        x = np.stack([pipe(a).image for a in imgs])
        acq = np.stack([acquisition_properties(xi, a) for xi, a in zip(x, imgs, strict=True)])
        return torch.as_tensor(x), np.array([r["label"] for r in rows]), acq

    x, labels, acq = load("chest_xray", 150)
    y = torch.as_tensor(np.unique(labels, return_inverse=True)[1])
    torch.manual_seed(0)
    model = SmallCNN(num_classes=3, widths=(8, 16))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        for i in range(0, 90, 30):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i : i + 30]), y[i : i + 30]).backward()
            opt.step()
    f, _ = features_and_logits(model, x)
    gate = InputGate.fit(f[:90], acq[:90], f[90:120], acq[90:120], train_labels=y[:90].numpy())
    _, own = gate.score(f[120:], acq[120:])
    xs, _, acq_s = load("leukemia", 30)
    _, smear = gate.score(features_and_logits(model, xs)[0], acq_s)
    assert own.mean() <= 0.15  # 30 held-out images: at most a few over a max-of-30 threshold
    assert smear.mean() >= 0.9
