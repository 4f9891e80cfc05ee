"""Shortcut-neutralising preprocessing (common_form, standardize) and acquisition augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlens.errors import RecipeError
from medlens.preprocess import Pipeline, align_mask, common_form, standardize
from medlens.recipes import AugmentConfig
from medlens.train.dataset import Augment


def test_standardize_removes_brightness_offset_and_gain():
    rng = np.random.default_rng(0)
    img = rng.random((30, 40)).astype(np.float32) * 0.5 + 0.1
    shifted = np.clip(img * 0.7 + 0.2, 0, 1)  # another source: gain and offset
    a, b = standardize(img), standardize(shifted)
    assert np.abs(a - b).max() < 1e-4
    assert a.min() == 0.0 and a.max() == 1.0
    flat = np.full((8, 8), 0.3, np.float32)
    assert np.array_equal(standardize(flat), flat)  # no contrast to standardise


def test_standardize_ignore_black_keeps_the_fan_black():
    img = np.zeros((20, 20), np.float32)
    img[5:15, 5:15] = np.linspace(0.3, 0.6, 100).reshape(10, 10)
    out = standardize(img, ignore_black=True)
    assert out[0, 0] == 0.0 and out[5:15, 5:15].max() == pytest.approx(1.0)


def test_common_form_crop_and_pad_give_one_aspect():
    wide = np.ones((30, 60), np.float32)
    tall = np.ones((50, 20, 3), np.float32)
    for img in (wide, tall):
        cropped, _ = common_form(img, 1.0, "crop")
        padded, (y0, y1, x0, x1) = common_form(img, 1.0, "pad")
        assert cropped.shape[0] == cropped.shape[1] == min(img.shape[:2])
        assert padded.shape[0] == padded.shape[1] == max(img.shape[:2])
        assert padded[y0:y1, x0:x1].shape[:2] == img.shape[:2]
    assert common_form(wide, 2.0, "crop")[0].shape == (30, 60)  # already that aspect


def test_pipeline_with_common_form_keeps_masks_aligned():
    pipe = Pipeline.from_config(
        [
            {"step": "grayscale"},
            {"step": "common_form"},
            {"step": "standardize"},
            {"step": "resize", "size": 16},
        ]
    )
    img = np.zeros((32, 64), np.float32)
    img[8:24, 40:56] = 1.0  # a bright square right of centre, inside the central crop
    mask = img > 0.5
    res = pipe(img)
    assert res.image.shape == (1, 16, 16)
    aligned = align_mask(mask, pipe, res.info)
    assert aligned.shape == (16, 16)
    assert np.array_equal(aligned, res.display >= 0.5)  # mask follows the image's geometry
    with pytest.raises(RecipeError, match="common_form"):
        Pipeline.from_config(
            [{"step": "grayscale"}, {"step": "resize", "size": 16}, {"step": "common_form"}]
        )


def test_augment_acquisition_randomisers():
    cfg = AugmentConfig(
        hflip=0, rotate_degrees=0, scale=(1, 1), translate=0, brightness=0, contrast=0
    )
    x = torch.rand(6, 3, 24, 24) * 2 - 1  # normalised with mean 0.5, std 0.5
    off = Augment(cfg, [0.5] * 3, [0.5] * 3)
    assert torch.allclose(off(x), x.clamp(-1, 1), atol=1e-6)  # all off: identity
    torch.manual_seed(0)
    on = Augment(
        cfg.model_copy(update={"jpeg": 1.0, "gamma": 0.4, "blur": 1.5, "colour_jitter": 0.2}),
        [0.5] * 3,
        [0.5] * 3,
    )
    y = on(x)
    assert y.shape == x.shape and y.min() >= -1 - 1e-6 and y.max() <= 1 + 1e-6
    assert not torch.allclose(y, x, atol=1e-2)
    grey = Augment(cfg.model_copy(update={"jpeg": 1.0, "colour_jitter": 0.3}), [0.5], [0.5])
    assert grey(torch.rand(2, 1, 16, 16)).shape == (2, 1, 16, 16)  # grey: jitter is a no-op
