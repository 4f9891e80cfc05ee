"""Segmentation (Attention U-Net) and the region-of-interest classifier built on it.

One tiny Attention U-Net is trained once (module fixture) on a synthetic task whose answer is
known: a bright ellipse on noise, to be segmented. It must beat an all-zero and a random mask
by a wide margin on held-out images. The ROI classifier wrapping it must keep it frozen through
an optimiser step, gate the image as documented, return every head of a multi-task classifier,
survive a bundle round trip, and give CAMs in image coordinates that can be focused on the mask.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import medlens.models.roi  # noqa: F401  (registers "roi_classifier")
from medlens.bundle import save_bundle
from medlens.errors import MedlensError
from medlens.explain.cam import compute_cam
from medlens.inference import Predictor
from medlens.models import create_model
from medlens.models.roi import RoiClassifier
from medlens.train.segment import (
    DONE,
    SegmentationResult,
    fit_segmentation,
    model_dice_iou,
    per_image_dice_iou,
)

SIZE = 32
SEG_SPEC = {"name": "attention_unet", "kwargs": {"channels": [8, 16, 32], "strides": [2, 2]}}
CLS_SPEC = {"name": "small_cnn", "kwargs": {"widths": [4, 8, 8]}}
PRE = [
    {"step": "grayscale"},
    {"step": "resize", "size": SIZE},
    {"step": "normalize", "mean": [0.5], "std": [0.25]},
]


def ellipses(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` noisy images (N x 1 x H x W float32) with one bright rotated ellipse, and its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    x = np.empty((n, 1, SIZE, SIZE), np.float32)
    m = np.empty((n, 1, SIZE, SIZE), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(9, SIZE - 9, 2)
        a, b = rng.uniform(3.5, 8, 2)
        t = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
        v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1
        m[i, 0] = inside
        x[i, 0] = rng.normal(0, 0.6, (SIZE, SIZE)) + 1.5 * inside
    return x, m


@dataclass
class Fitted:
    result: SegmentationResult
    run_dir: Path
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Fitted:
    torch.set_num_threads(1)
    train, val = ellipses(128, seed=1), ellipses(48, seed=2)
    run_dir = tmp_path_factory.mktemp("seg")
    result = fit_segmentation(
        *train,
        *val,
        run_dir,
        model_kwargs=SEG_SPEC["kwargs"],
        epochs=8,
        batch_size=16,
        lr=5e-3,
        seed=0,
        patience=4,
        accelerator="cpu",
    )
    return Fitted(result, run_dir, train, val)


def _roi(num_classes: int = 3, **kw) -> RoiClassifier:
    torch.manual_seed(0)
    kw.setdefault("segmenter", SEG_SPEC)
    kw.setdefault("classifier", CLS_SPEC)
    return create_model("roi_classifier", num_classes=num_classes, in_chans=1, **kw)


def test_fit_segmentation_beats_baselines_and_reloads(fitted: Fitted):
    res = fitted.result
    vx, vm = fitted.val
    assert not res.model.training and not res.resumed
    assert res.best_checkpoint.is_file() and res.best_checkpoint.parent.name == "checkpoints_seg"
    assert (fitted.run_dir / DONE).is_file() and 1 <= res.epochs_run <= 8
    assert res.spec == SEG_SPEC

    scores = model_dice_iou(res.model, vx, vm, batch_size=20)
    assert scores["dice"].shape == (48,) and scores["iou"].shape == (48,) and scores["n"] == 48
    assert scores["dice_mean"] == pytest.approx(res.val_dice)
    assert scores["iou_mean"] == pytest.approx(res.val_iou)
    assert np.all(scores["iou"] <= scores["dice"] + 1e-9)  # IoU <= Dice image by image

    target = torch.from_numpy(vm)
    zero, _ = per_image_dice_iou(torch.full_like(target, -10.0), target)
    gen = torch.Generator().manual_seed(0)
    random, _ = per_image_dice_iou(torch.randn(target.shape, generator=gen), target)
    baseline = max(float(zero.mean()), float(random.mean()))
    assert float(zero.mean()) == 0.0 and 0.1 < float(random.mean()) < 0.4
    assert res.val_dice > baseline + 0.4, (res.val_dice, baseline)
    assert res.val_dice > 0.7

    # A finished run is reloaded, not trained again: same weights, same scores.
    again = fit_segmentation(
        *fitted.train, *fitted.val, fitted.run_dir, model_kwargs=SEG_SPEC["kwargs"], epochs=8
    )
    assert again.resumed and again.val_dice == res.val_dice and again.epochs_run == res.epochs_run
    for (k1, v1), (k2, v2) in zip(
        res.model.state_dict().items(), again.model.state_dict().items(), strict=True
    ):
        assert k1 == k2 and torch.equal(v1, v2)
    # ... but never confused with a fit of another model.
    with pytest.raises(MedlensError, match="different model"):
        fit_segmentation(
            *fitted.train, *fitted.val, fitted.run_dir, model_kwargs={"channels": [4, 8, 16]}
        )
    info = json.loads((fitted.run_dir / DONE).read_text())
    assert info["monitor"] == "val_dice" and info["val_dice"] == res.val_dice


def test_frozen_segmenter_gets_no_gradient_and_stays_in_eval(fitted: Fitted):
    roi = _roi().load_segmenter(fitted.result.model)
    roi.train()
    assert roi.training and roi.classifier.training
    assert not any(m.training for m in roi.segmenter.modules())
    assert not any(p.requires_grad for p in roi.segmenter.parameters())
    seg_before = {k: v.clone() for k, v in roi.segmenter.state_dict().items()}
    cls_before = {k: v.clone() for k, v in roi.classifier.state_dict().items()}

    opt = torch.optim.AdamW(roi.parameters(), lr=1e-2, weight_decay=0.1)
    x = torch.from_numpy(fitted.train[0][:8])
    loss = F.cross_entropy(roi(x), torch.arange(8) % 3)
    loss.backward()
    assert all(p.grad is None for p in roi.segmenter.parameters())
    assert any(p.grad is not None for p in roi.classifier.parameters())
    opt.step()

    # Buffers included: BatchNorm statistics of the frozen U-Net do not move in train mode.
    for k, v in roi.segmenter.state_dict().items():
        assert torch.equal(v, seg_before[k]), k
    changed = [
        k for k, v in roi.classifier.state_dict().items() if not torch.equal(v, cls_before[k])
    ]
    assert any(k.endswith("weight") for k in changed)
    assert not any(m.training for m in roi.segmenter.modules())  # still, after the step


def test_gate_keeps_geometry_and_matches_its_formula(fitted: Fitted):
    roi = _roi(dilate=5, floor=0.2).load_segmenter(fitted.result.model).eval()
    x = torch.from_numpy(fitted.val[0][:4])
    with torch.no_grad():
        out = roi(x)
        prob = torch.sigmoid(roi.segmenter(x))
        dilated = F.max_pool2d(prob, 5, stride=1, padding=2)
        expected = roi.classifier(x * (0.2 + 0.8 * dilated))
    torch.testing.assert_close(out, expected)
    assert roi.last_mask is not None and roi.last_mask.shape == (4, 1, SIZE, SIZE)
    assert not roi.last_mask.requires_grad
    torch.testing.assert_close(roi.last_mask, dilated)
    torch.testing.assert_close(roi.segment(x), prob)
    assert roi.get_classifier() is roi.classifier.head
    assert not hasattr(roi, "primary")  # a single-head classifier has no primary head
    # The dilated predicted mask covers nearly all of the true ellipse.
    truth = torch.from_numpy(fitted.val[1][:4]) > 0.5
    assert float((roi.last_mask > 0.5)[truth].float().mean()) > 0.9
    with pytest.raises(ValueError, match="odd"):
        RoiClassifier(roi.segmenter, roi.classifier, dilate=4)
    with pytest.raises(ValueError, match="name"):
        _roi(segmenter={**SEG_SPEC, "pretrained": "/some/file.pth"})


def test_multitask_classifier_returns_every_head():
    roi = _roi(
        num_classes=4,
        classifier={
            "name": "multitask",
            "kwargs": {"backbone": "resnet18", "heads": {"class": 4, "detected": 2}},
        },
    ).eval()
    with torch.no_grad():
        out = roi(torch.randn(3, 1, SIZE, SIZE))
    assert isinstance(out, dict) and set(out) == {"class", "detected"}
    assert out["class"].shape == (3, 4) and out["detected"].shape == (3, 2)
    assert roi.primary == "class" and roi.head_types == {
        "class": "classification",
        "detected": "classification",
    }
    assert roi.get_classifier() is roi.classifier.heads["class"]


def test_default_specs_build():
    roi = create_model("roi_classifier", num_classes=2, in_chans=1)
    assert type(roi.classifier).__name__ == "SmallCNN"
    assert type(roi.segmenter).__name__ == "AttentionUnet"
    assert roi.dilate == 7 and roi.floor == pytest.approx(0.1)


def test_bundle_round_trip(tmp_path: Path, fitted: Fitted):
    kwargs = {"segmenter": SEG_SPEC, "classifier": CLS_SPEC, "dilate": 5, "floor": 0.2}
    roi = _roi(**kwargs).load_segmenter(fitted.result.model).eval()
    assert any(k.startswith("segmenter.") for k in roi.state_dict())  # one state dict
    path = save_bundle(
        tmp_path / "b",
        roi,
        name="roi",
        model_spec={"name": "roi_classifier", "num_classes": 3, "in_chans": 1, "kwargs": kwargs},
        classes=["a", "b", "c"],
        task={"classes": ["a", "b", "c"]},
        preprocess=PRE,
        recipe_yaml="name: roi\n",
        data_fingerprint={"n_samples": 0},
        intended_use="tests",
    )
    pred = Predictor.from_bundle(path)
    assert isinstance(pred.model, RoiClassifier)
    batch = fitted.val[0][:5]
    with torch.no_grad():
        expected = roi(torch.from_numpy(batch)).double().numpy()
    np.testing.assert_allclose(pred.logits_tensor(batch), expected, rtol=1e-5, atol=1e-6)


def test_cam_through_wrapper_is_in_image_coordinates_and_focuses(fitted: Fitted):
    roi = _roi().load_segmenter(fitted.result.model).eval()
    x = torch.from_numpy(fitted.val[0][:1])
    res = compute_cam(roi, x, "gradcam")
    assert res.cam.shape == (SIZE, SIZE) and res.layer.startswith("classifier.")
    assert not any(m.training for m in roi.modules())  # flags restored
    with torch.no_grad():
        roi(x)
    mask = roi.last_mask
    assert mask is not None
    inside = mask[0, 0].numpy() > 0.5
    assert 0 < inside.sum() < inside.size
    from medlens.explain.draw import focus

    def focus_on_mask(cam, m):  # the predicted joint, binarised as the report does
        return focus(cam, m[0, 0].numpy() > 0.5, roi="predicted joint").cam

    focused = focus_on_mask(res.cam, mask)
    assert focused.shape == (SIZE, SIZE) and focused.dtype == np.float32
    assert np.all(focused[~inside] == 0)
    assert focused.max() in (0.0, 1.0)
    # On a flat heatmap the focus is exactly the region; an all-zero heatmap stays all-zero.
    np.testing.assert_array_equal(focus_on_mask(np.ones((SIZE, SIZE)), mask), inside)
    assert not focus_on_mask(np.zeros((SIZE, SIZE)), mask).any()
