"""Every network the registry names: builds offline, runs forward and backward at 32-64 px,
resolves a CAM target layer and round-trips through a verified bundle.

The table below must cover every medlens-registered name, so a new registration without a row
fails here rather than going untested.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medlens.bundle import save_bundle
from medlens.inference import Predictor
from medlens.models import create_model, list_models

SMALL = {"widths": [4, 8]}
# name -> (kwargs, input size, input kind, cam?)  kinds: image | fusion | classical | mask
SPECS: dict[str, tuple[dict, int, str, bool]] = {
    "small_cnn": (SMALL, 32, "image", True),
    "mednext": (
        {"init_filters": 8, "blocks_down": [1, 1], "blocks_bottleneck": 1},
        32,
        "image",
        True,
    ),
    "multitask": (
        {
            "backbone": "resnet18",
            "heads": {"class": 3, "stage": 4, "risk": "regression"},
            "primary": "class",
        },
        32,
        "image",
        True,
    ),
    "fusion": (
        {
            "encoders": {"mri": "resnet18", "ct": "small_cnn"},
            "heads": {"class": 3, "risk": "regression"},
            "primary": "class",
        },
        32,
        "fusion",
        False,
    ),
    "linear_probe": ({"backbone": "resnet18"}, 32, "image", True),
    "attention_unet": ({"channels": [8, 16, 32], "strides": [2, 2]}, 32, "mask", False),
    "soft_voting": (
        {
            "members": [{"name": "small_cnn", "kwargs": SMALL}, {"name": "resnet18", "kwargs": {}}],
            "weights": [0.7, 0.3],
        },
        32,
        "image",
        True,
    ),
    "roi_classifier": (
        {
            "segmenter": {
                "name": "attention_unet",
                "kwargs": {"channels": [8, 16], "strides": [2]},
            },
            "classifier": {"name": "small_cnn", "kwargs": SMALL},
        },
        32,
        "image",
        True,
    ),
    "hog_mlp": ({"hidden_layer_sizes": [16], "max_iter": 50}, 32, "classical", False),
    "hog_rf": ({"n_estimators": 10}, 32, "classical", False),
    "hog_xgboost": ({"n_estimators": 10}, 32, "classical", False),
    "mobilenetv3_large_100+lstm": ({"hidden": 32}, 64, "image", True),
    "efficientnet_b3+bigru": ({"hidden": 32}, 64, "image", True),
    "efficientnet_b3+vit": ({"hidden": 32}, 64, "image", True),
    "xception41+bigru": ({"hidden": 32}, 64, "image", True),
}
# timm backbones the recipes name (any timm name works; these are the ones recipes use).
TIMM = {
    "convnextv2_atto": ({}, 32, "image", True),
    "deit_tiny_patch16_224": ({"img_size": 32}, 32, "image", True),
    "resnet50": ({}, 32, "image", True),
    "efficientnet_b0": ({}, 32, "image", True),
    "mobilenetv3_large_100": ({}, 32, "image", True),
    "swin_tiny_patch4_window7_224": ({"img_size": 64, "window_size": 2}, 64, "image", True),
    "densenet121": ({}, 32, "image", True),
    "resnet18": ({}, 32, "image", True),
}
ALL = {**SPECS, **TIMM}
CLASSES = ["a", "b", "c"]


def test_table_covers_the_registry():
    assert set(list_models(include_timm=False)) <= set(SPECS)


def _build(name: str) -> torch.nn.Module:
    kw, size, kind, _ = ALL[name]
    k = 1 if kind == "mask" else 3
    torch.manual_seed(0)
    m = create_model(name, num_classes=k, in_chans=1, **kw)
    if kind == "classical":
        rng = np.random.default_rng(0)
        x = rng.random((30, 1, size, size)).astype(np.float32)
        y = np.arange(30) % 3
        x[y == 1, :, :, ::4] += 1.0  # vertical stripes: HOG separates them
        x[y == 2, :, ::4, :] += 1.0
        m.fit_arrays(x / 2, y)
    return m


def _input(name: str, n: int = 2):
    _, size, kind, _ = ALL[name]
    x = torch.rand(n, 1, size, size)
    return {"mri": x, "ct": x.flip(-1)} if kind == "fusion" else x


@pytest.mark.parametrize("name", sorted(ALL))
def test_forward_backward(name: str):
    m = _build(name).train()
    out = m(_input(name))
    kind = ALL[name][2]
    if kind == "classical":
        assert out.shape == (2, 3) and torch.allclose(out.exp().sum(1), torch.ones(2), atol=1e-4)
        return  # HOG + scikit-learn/XGBoost: fitted by the estimator, no gradients
    if kind == "mask":
        assert out.shape == (2, 1, 32, 32)
    loss = sum(v.float().sum() for v in out.values()) if isinstance(out, dict) else out.sum()
    loss.backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", sorted(n for n, s in ALL.items() if s[3]))
def test_cam_target_layer_and_map(name: str):
    from medlens.explain import compute_cam

    m = _build(name).eval()
    _, size, _, _ = ALL[name]
    res = compute_cam(m, _input(name, 1), "gradcam", target_class=0)
    assert res.cam.shape == (size, size) and res.layer
    assert np.isfinite(res.cam).all() and res.cam.min() >= 0 and res.cam.max() <= 1


@pytest.mark.parametrize("name", sorted(n for n, s in ALL.items() if s[2] != "mask"))
def test_bundle_round_trip(tmp_path: Path, name: str):
    kw, size, kind, _ = ALL[name]
    m = _build(name).eval()
    task = {"classes": CLASSES}
    if "heads" in kw:
        task["heads"] = {"risk": {"type": "regression"}} if "risk" in kw["heads"] else {}
    path = save_bundle(
        tmp_path / "b",
        m,
        name="t",
        model_spec={"name": name, "num_classes": 3, "in_chans": 1, "kwargs": kw},
        classes=CLASSES,
        task=task,
        preprocess=[{"step": "grayscale"}, {"step": "resize", "size": size}],
        recipe_yaml="name: t\n",
        data_fingerprint={"n_samples": 0},
        intended_use="tests",
        extra={"modalities": {"mri": "path", "ct": "ct_path"}} if kind == "fusion" else None,
    )
    p = Predictor.from_bundle(path)
    img = np.random.default_rng(1).random((size + 5, size + 3)).astype(np.float32)
    given = {"mri": img, "ct": img} if kind == "fusion" else img
    pred = p.predict(given)
    with torch.inference_mode():
        x = torch.from_numpy(p.preprocess(img).image[None]) if kind != "fusion" else None
        ref = m({"mri": x, "ct": x} if kind == "fusion" else x) if x is not None else None
    if ref is not None:
        ref = ref["class"] if isinstance(ref, dict) else ref
        assert np.allclose(pred.logits, ref[0].numpy(), atol=1e-5)
    assert abs(sum(pred.probabilities.values()) - 1) < 1e-6
