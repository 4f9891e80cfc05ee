"""Soft-voting ensembles: probabilities, weights, bundle round trip and CAM target layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medlens.bundle import load_bundle, save_bundle
from medlens.errors import MedlensError
from medlens.explain.cam import compute_cam, explain
from medlens.explain.targets import resolve_target_layer
from medlens.inference import Predictor
from medlens.models import create_model
from medlens.models.ensemble import (
    SoftVotingEnsemble,
    fit_ensemble_weights,
    from_members,
    normalise_weights,
)

MEMBERS = [
    {"name": "small_cnn", "kwargs": {"widths": [8, 16]}, "label": "cnn"},
    {"name": "resnet18", "kwargs": {}},
    {"name": "small_cnn", "kwargs": {"widths": [4, 8], "pool": "avg"}},
]
PRE = [
    {"step": "grayscale"},
    {"step": "resize", "size": 32},
    {"step": "normalize", "mean": [0.5], "std": [0.25]},
]


def _ensemble(weights: list[float] | None = None, in_chans: int = 3) -> SoftVotingEnsemble:
    torch.manual_seed(0)
    m = create_model("soft_voting", 4, in_chans, members=MEMBERS, weights=weights)
    return m.eval()


def _randomise_heads(model: torch.nn.Module, seed: int = 1) -> None:
    """Fresh members predict nearly uniform probabilities; spread them so tests can tell apart."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for member in model.members:
            head = member.get_classifier()
            head.weight.copy_(torch.randn(head.weight.shape, generator=g) * 2.0)


def test_probabilities_are_the_weighted_mean_of_members():
    model = _ensemble([2.0, 1.0, 1.0])
    _randomise_heads(model)
    assert isinstance(model, SoftVotingEnsemble) and len(model) == 3
    assert model.weights == pytest.approx([0.5, 0.25, 0.25])
    assert model.labels == ["cnn", "resnet18", "small_cnn"]
    x = torch.randn(5, 3, 48, 48)
    with torch.no_grad():
        alone = [torch.softmax(m(x), 1) for m in model.members]
        expected = 0.5 * alone[0] + 0.25 * alone[1] + 0.25 * alone[2]
        got = torch.softmax(model(x), 1)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)  # the members do disagree
    assert torch.allclose(got.sum(1), torch.ones(5), atol=1e-6)


def test_member_probabilities_match_each_member_alone():
    model = _ensemble()
    _randomise_heads(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        per = model.member_probabilities(x)
        assert per.shape == (3, 3, 4)
        for i, member in enumerate(model.members):
            assert torch.allclose(per[i], torch.softmax(member(x), 1), atol=1e-6)
        # Equal default weights: the ensemble is the plain mean of the per-member rows.
        assert torch.allclose(torch.softmax(model(x), 1), per.mean(0), atol=1e-6)


def test_multi_head_members_vote_with_their_primary_head_and_classes_must_agree():
    torch.manual_seed(0)
    multi = create_model(
        "multitask", 3, 3, backbone="resnet18", heads={"stage": 5, "class": 3}, primary="class"
    )
    cnn = create_model("small_cnn", 3, 3, widths=[4, 8])
    ens = from_members([multi, cnn], ["multitask", "small_cnn"], [1, 3]).eval()
    assert ens.num_classes == 3 and ens.weights == pytest.approx([0.25, 0.75])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = 0.25 * torch.softmax(multi(x)["class"], 1) + 0.75 * torch.softmax(cnn(x), 1)
        assert torch.allclose(torch.softmax(ens(x), 1), want, atol=1e-6)
    with pytest.raises(MedlensError, match="same classes"):
        from_members([cnn, create_model("small_cnn", 5, 3, widths=[4])], ["a", "b"])


def test_fit_weights_prefers_the_informative_member():
    rng = np.random.default_rng(0)
    n, k = 60, 3
    y = rng.integers(0, k, n)
    good = np.full((n, k), 0.1)
    good[np.arange(n), y] = 0.8
    good = 0.7 * good + 0.3 * rng.dirichlet(np.ones(k), n)  # informative, not perfect
    noise = rng.dirichlet(np.ones(k), n)
    w = fit_ensemble_weights(np.stack([noise, good]), y)
    assert w.shape == (2,) and w.sum() == pytest.approx(1.0) and (w >= 0).all()
    assert w[1] > 0.8 > w[0]
    again = fit_ensemble_weights(np.stack([noise, good]), y)
    assert np.array_equal(w, again)  # deterministic start, deterministic result
    # A strong pull towards equal weights keeps them near 1/M.
    tight = fit_ensemble_weights(np.stack([noise, good]), y, l2=1e3)
    assert abs(tight[0] - 0.5) < 0.05
    assert fit_ensemble_weights(good[None], y).tolist() == [1.0]
    with pytest.raises(MedlensError, match=r"ensemble\.weights"):
        fit_ensemble_weights(np.stack([noise, good]), y + k)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0, -0.5, 1.0], "non-negative"),
        ([1.0, 1.0], "2 weight"),
        ([0.0, 0.0, 0.0], "all weights are zero"),
        ([1.0, float("nan"), 1.0], "finite"),
    ],
)
def test_invalid_weights_name_the_field(weights, message):
    with pytest.raises(MedlensError, match=r"ensemble\.weights") as info:
        create_model("soft_voting", 2, 3, members=MEMBERS[:1] * 3, weights=weights)
    assert message in str(info.value)


def test_invalid_members_are_refused():
    with pytest.raises(MedlensError, match=r"ensemble\.members"):
        create_model("soft_voting", 2, 3)
    with pytest.raises(MedlensError, match=r"ensemble\.members\[0\]\.kwargs"):
        create_model(
            "soft_voting", 2, 3, members=[{"name": "small_cnn", "kwargs": {"in_chans": 1}}]
        )
    with pytest.raises(MedlensError, match=r"model\.pretrained"):
        create_model("soft_voting", 2, 3, pretrained=True, members=MEMBERS[:1])
    assert normalise_weights(None, 4) == [0.25] * 4
    ens = _ensemble()
    with pytest.raises(MedlensError, match=r"ensemble\.weights"):
        ens.set_weights([1.0])
    ens.set_weights([0, 0, 5])
    assert ens.weights == [0.0, 0.0, 1.0] and ens.dominant_member() == 2


def test_bundle_round_trip_reproduces_probabilities(tmp_path: Path):
    torch.manual_seed(0)
    members = [
        create_model("small_cnn", 3, 1, widths=[8, 16]),
        create_model("resnet18", 3, 1),
    ]
    ens = from_members(
        members,
        ["small_cnn", "resnet18"],
        [0.3, 0.7],
        member_kwargs=[{"widths": [8, 16]}, {}],
        in_chans=1,
    )
    _randomise_heads(ens, seed=3)
    ens.set_weights([0.35, 0.65])  # e.g. refitted on validation after assembly
    ens.eval()
    spec = ens.model_spec()
    assert spec["num_classes"] == 3 and spec["kwargs"]["weights"] == ens.weights
    path = save_bundle(
        tmp_path / "ens",
        ens,
        name="ens",
        model_spec=spec,
        classes=["a", "b", "c"],
        task={"classes": ["a", "b", "c"]},
        preprocess=PRE,
        recipe_yaml="name: ens\n",
        data_fingerprint={"n_samples": 0},
        intended_use="tests",
    )
    assert sorted(p.name for p in path.iterdir()) == [
        "SHA256SUMS",
        "bundle.json",
        "model.safetensors",
        "recipe.yaml",
    ]
    rebuilt = load_bundle(path).build_model()
    assert isinstance(rebuilt, SoftVotingEnsemble)
    assert rebuilt.weights == pytest.approx(ens.weights) and rebuilt.names == ens.names
    predictor = Predictor.from_bundle(path)
    batch = np.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = torch.softmax(ens(torch.from_numpy(batch)), 1).numpy()
    assert np.allclose(predictor.predict_tensor(batch), want, atol=1e-6)
    pred = predictor.predict(np.random.default_rng(1).random((40, 50)).astype(np.float32))
    assert pred.label in {"a", "b", "c"} and pred.model == "ens (soft_voting)"


def test_cam_reads_the_dominant_member():
    model = _ensemble([1.0, 3.0, 1.0])
    x = torch.randn(1, 3, 64, 64)
    choice = resolve_target_layer(model, x)
    assert choice.name == "members.1.layer4.1" and choice.layer is model.members[1].layer4[-1]
    assert "dominant ensemble member 'resnet18'" in choice.rule and "ResNet" in choice.rule
    res = compute_cam(model, x, "gradcam")
    assert res.cam.shape == (64, 64) and np.isfinite(res.cam).all()
    assert res.layer == "members.1.layer4.1"
    model.set_weights([5.0, 1.0, 1.0])
    assert resolve_target_layer(model, x).name == "members.0.features"
    # An explicit layer picks its own member (and that member's family layout).
    explicit = resolve_target_layer(model, x, "members.2.features")
    assert explicit.layer is model.members[2].features and "member 'small_cnn'" in explicit.rule
    assert explain(model, x, "gradcam++", target_layer="members.2.features").shape == (64, 64)
    assert not any(
        m._forward_hooks or m._backward_hooks or m._forward_pre_hooks for m in model.modules()
    )
