"""Preprocessing: pure functions on hand-checkable arrays, and the recipe-driven Pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from medlens.errors import MedlensError, RecipeError
from medlens.preprocess import (
    ExposureReport,
    Pipeline,
    PreprocessError,
    clahe,
    crop_black_border,
    exposure_check,
    normalize,
    resize,
    to_channels,
    to_chw,
)

RECIPE = [
    {"step": "grayscale"},
    {"step": "crop_border", "threshold": 0.04},
    {"step": "exposure_check", "low": 0.2, "high": 0.8},
    {"step": "clahe", "clip_limit": 2.0, "tile_grid": 8, "only_if_flagged": True},
    {"step": "resize", "size": 64},
    {"step": "normalize", "mean": [0.5], "std": [0.25]},
]


def _texture(shape: tuple[int, ...], centre: float, spread: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(centre + rng.uniform(-spread, spread, size=shape), 0, 1).astype(np.float32)


# ---- to_channels ----------------------------------------------------------------------------


def test_to_channels_luminance_and_replication() -> None:
    rgb = np.zeros((2, 3, 3), dtype=np.float32)
    rgb[..., 0] = 1.0  # pure red
    grey = to_channels(rgb, 1)
    assert grey.shape == (2, 3) and grey.dtype == np.float32
    np.testing.assert_allclose(grey, 0.299, atol=1e-6)

    g = np.arange(6, dtype=np.float32).reshape(2, 3) / 10
    three = to_channels(g, 3)
    assert three.shape == (2, 3, 3)
    for c in range(3):
        np.testing.assert_array_equal(three[..., c], g)
    np.testing.assert_array_equal(to_channels(rgb, 3), rgb)
    np.testing.assert_array_equal(to_channels(g[..., None], 1), g)  # H x W x 1 counts as grey


def test_to_channels_rejects_bad_input() -> None:
    with pytest.raises(PreprocessError, match="channels"):
        to_channels(np.zeros((4, 4), np.float32), 2)
    with pytest.raises(PreprocessError, match="H x W"):
        to_channels(np.zeros((4, 4, 2), np.float32), 1)


# ---- crop_black_border --------------------------------------------------------------------


def test_crop_finds_planted_bbox() -> None:
    img = np.zeros((100, 80), dtype=np.float32)
    content = _texture((80, 65), 0.5, 0.3)
    img[10:90, 5:70] = content
    img[3, 40] = 1.0  # a burned-in label pixel inside the top border must not stop the crop
    out, bbox = crop_black_border(img)
    assert bbox == (10, 90, 5, 70)
    np.testing.assert_array_equal(out, content)


def test_crop_rgb_and_all_dark() -> None:
    img = np.zeros((40, 40, 3), dtype=np.float32)
    img[:, 8:] = 0.6
    out, bbox = crop_black_border(img)
    assert bbox == (0, 40, 8, 40) and out.shape == (40, 32, 3)
    dark = np.zeros((20, 30), dtype=np.float32)
    out, bbox = crop_black_border(dark)
    assert bbox == (0, 20, 0, 30) and out.shape == (20, 30)


def test_crop_never_removes_more_than_allowed() -> None:
    img = np.zeros((100, 100), dtype=np.float32)
    img[45:55, 45:55] = 0.8  # tiny content: an unlimited crop would keep 10 %
    out, (y0, y1, x0, x1) = crop_black_border(img, min_keep=0.5)
    assert y1 - y0 >= 50 and x1 - x0 >= 50
    assert y0 <= 45 <= 55 <= y1 and x0 <= 45 <= 55 <= x1  # the content survives
    assert out.shape == (y1 - y0, x1 - x0)


# ---- exposure_check -----------------------------------------------------------------------


def test_exposure_flags_dark_bright_and_passes_mid_grey() -> None:
    dark = exposure_check(_texture((64, 64), 0.1, 0.05))
    bright = exposure_check(_texture((64, 64), 0.9, 0.05))
    mid = exposure_check(_texture((64, 64), 0.5, 0.2))
    assert isinstance(mid, ExposureReport)
    assert (dark.status, bright.status, mid.status) == ("under", "over", "ok")
    assert mid.dark_fraction == 0.0 and mid.bright_fraction == 0.0
    assert abs(mid.mean - 0.5) < 0.01


def test_exposure_clipped_tail_and_percentiles() -> None:
    img = _texture((50, 50), 0.45, 0.1)
    img[:10] = 0.0  # 20 % clipped black with an acceptable mean
    report = exposure_check(img)
    assert report.mean > 0.2 and report.status == "under"
    assert report.dark_fraction == pytest.approx(0.2)
    ramp = np.linspace(0, 1, 10001, dtype=np.float32).reshape(1, -1)
    r = exposure_check(ramp)
    assert r.p1 == pytest.approx(0.01, abs=1e-3) and r.p99 == pytest.approx(0.99, abs=1e-3)


# ---- clahe --------------------------------------------------------------------------------


def test_clahe_raises_local_contrast_and_stays_in_range() -> None:
    img = _texture((128, 128), 0.5, 0.02, seed=1)  # low contrast everywhere ...
    img[:, 64:] = _texture((128, 64), 0.5, 0.45, seed=2)  # ... except the right half
    out = clahe(img, clip_limit=2.0, tile_grid=8)
    assert out.shape == img.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    tile = (slice(16, 48), slice(8, 40))
    assert out[tile].std() > 2 * img[tile].std()


def test_clahe_rgb_keeps_grey_grey() -> None:
    g = _texture((64, 64), 0.5, 0.05)
    out = clahe(np.stack([g, g, g], axis=2))
    assert out.shape == (64, 64, 3) and out.min() >= 0.0 and out.max() <= 1.0
    assert np.abs(out[..., 0] - out[..., 1]).max() < 0.02  # L-channel only: no colour cast
    assert out[..., 0].std() > g.std()


def test_clahe_rejects_bad_params() -> None:
    with pytest.raises(PreprocessError, match="clip_limit"):
        clahe(np.zeros((8, 8), np.float32), clip_limit=0)


# ---- resize -------------------------------------------------------------------------------


def test_resize_shapes() -> None:
    img = _texture((50, 80), 0.5, 0.2)
    assert resize(img, 32).shape == (32, 32)
    assert resize(img, (20, 40)).shape == (20, 40)
    assert resize(np.stack([img] * 3, axis=2), 32).shape == (32, 32, 3)
    up = resize(np.full((10, 10), 0.3, np.float32), 40)  # enlarging (linear) keeps a constant
    np.testing.assert_allclose(up, 0.3, atol=1e-6)


def test_resize_keep_aspect_letterboxes_centred() -> None:
    img = np.ones((50, 100), dtype=np.float32)
    out = resize(img, 40, keep_aspect=True)
    assert out.shape == (40, 40)
    np.testing.assert_array_equal(out[:10], 0.0)
    np.testing.assert_allclose(out[10:30], 1.0, atol=1e-6)
    np.testing.assert_array_equal(out[30:], 0.0)
    tall = resize(np.ones((100, 50, 3), np.float32), (40, 40), keep_aspect=True)
    assert tall.shape == (40, 40, 3)
    np.testing.assert_array_equal(tall[:, :10], 0.0)
    np.testing.assert_allclose(tall[:, 10:30], 1.0, atol=1e-6)


# ---- normalize / to_chw -------------------------------------------------------------------


def test_normalize_values() -> None:
    g = np.array([[0.5, 0.75], [0.25, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(normalize(g, [0.5], [0.25]), [[0, 1], [-1, 2]])
    rgb = np.ones((2, 2, 3), dtype=np.float32)
    out = normalize(rgb, [0.0, 0.5, 1.0], [1.0, 0.5, 2.0])
    np.testing.assert_allclose(out[0, 0], [1.0, 1.0, 0.0])
    with pytest.raises(PreprocessError, match="one value per channel"):
        normalize(rgb, [0.5], [0.25])


def test_to_chw() -> None:
    rgb = np.arange(24, dtype=np.float32).reshape(2, 4, 3)
    chw = to_chw(rgb)
    assert chw.shape == (3, 2, 4) and chw.flags["C_CONTIGUOUS"] and chw.dtype == np.float32
    np.testing.assert_array_equal(chw[1], rgb[:, :, 1])
    assert to_chw(rgb[..., 0]).shape == (1, 2, 4)


def test_functions_do_not_modify_input() -> None:
    img = _texture((40, 48), 0.3, 0.2)
    img[:4] = 0.0
    rgb = np.stack([img, img * 0.5, img], axis=2)
    calls = [
        lambda a: to_channels(a, 1),
        lambda a: to_channels(a, 3),
        lambda a: crop_black_border(a),
        lambda a: exposure_check(a),
        lambda a: clahe(a),
        lambda a: resize(a, 16),
        lambda a: resize(a, 16, keep_aspect=True),
        lambda a: normalize(
            a, [0.5] * (1 if a.ndim == 2 else 3), [0.2] * (1 if a.ndim == 2 else 3)
        ),
        lambda a: to_chw(a),
        lambda a: Pipeline.from_config(RECIPE)(a),
    ]
    for arr in (img, rgb):
        before = arr.copy()
        for fn in calls:
            result = fn(arr)
            np.testing.assert_array_equal(arr, before)
            out = result[0] if isinstance(result, tuple) else getattr(result, "image", result)
            if isinstance(out, np.ndarray):
                assert not np.shares_memory(out, arr)


# ---- Pipeline -----------------------------------------------------------------------------


def test_pipeline_config_round_trip_and_fingerprint() -> None:
    p = Pipeline.from_config(RECIPE)
    cfg = p.to_config()
    json.dumps(cfg)  # JSON-serialisable
    # Parameters left out of the recipe are spelled out with their defaults.
    assert cfg[1] == {"step": "crop_border", "threshold": 0.04, "min_keep": 0.5}
    again = Pipeline.from_config(cfg)
    assert again.to_config() == cfg and again == p
    assert again.fingerprint() == p.fingerprint() and len(p.fingerprint()) == 64
    rect = Pipeline.from_config([{"step": "rgb"}, {"step": "resize", "size": [48, 64]}])
    assert rect.to_config()[1]["size"] == [48, 64]
    assert Pipeline.from_config(rect.to_config()).to_config() == rect.to_config()

    changed = [dict(s) for s in RECIPE]
    changed[3]["clip_limit"] = 2.5
    assert Pipeline.from_config(changed).fingerprint() != p.fingerprint()


def test_pipeline_properties() -> None:
    p = Pipeline.from_config(RECIPE)
    assert p.output_channels == 1 and p.output_size == (64, 64)
    q = Pipeline.from_config([{"step": "rgb"}, {"step": "resize", "size": [32, 48]}])
    assert q.output_channels == 3 and q.output_size == (32, 48)


@pytest.mark.parametrize(
    "bad",
    [
        [{"step": "blur"}, {"step": "resize", "size": 8}],  # unknown step
        [{"step": "grayscale", "mode": "x"}, {"step": "resize", "size": 8}],  # unknown param
        [{"step": "grayscale"}, {"step": "resize", "size": 64, "interp": "area"}],
        [{"step": "grayscale"}, {"step": "clahe", "clip_limit": 0}, {"step": "resize", "size": 8}],
        [
            {"step": "grayscale"},
            {"step": "resize", "size": 8},
            {"step": "normalize", "mean": [0.5], "std": [0]},
        ],
        [
            {"step": "grayscale"},
            {"step": "exposure_check", "low": 0.9, "high": 0.1},
            {"step": "resize", "size": 8},
        ],
    ],
)
def test_pipeline_invalid_step_raises_validation_error(bad: list[dict]) -> None:
    with pytest.raises(ValidationError):
        Pipeline.from_config(bad)


@pytest.mark.parametrize(
    ("steps", "words"),
    [
        ([{"step": "grayscale"}], ["preprocess", "resize", "size"]),
        (
            [
                {"step": "grayscale"},
                {"step": "resize", "size": 8},
                {"step": "normalize", "mean": [0.5] * 3, "std": [0.2] * 3},
            ],
            ["normalize", "1 channel", "mean"],
        ),
        (
            [
                {"step": "rgb"},
                {"step": "resize", "size": 8},
                {"step": "normalize", "mean": [0.5], "std": [0.2]},
            ],
            ["normalize", "3 channel"],
        ),
        ([{"step": "resize", "size": 8}], ["grayscale", "rgb"]),
        (
            [
                {"step": "grayscale"},
                {"step": "clahe", "only_if_flagged": True},
                {"step": "resize", "size": 8},
            ],
            ["exposure_check"],
        ),
        (
            [{"step": "grayscale"}, {"step": "resize", "size": 8}, {"step": "crop_border"}],
            ["crop_border", "before resize"],
        ),
    ],
)
def test_pipeline_structural_errors_are_medlens_errors(steps: list[dict], words: list[str]) -> None:
    with pytest.raises(RecipeError) as info:
        Pipeline.from_config(steps)
    assert isinstance(info.value, MedlensError) and not isinstance(info.value, ValueError)
    for w in words:
        assert w in str(info.value)


def test_pipeline_run_outputs_and_info() -> None:
    img = np.zeros((100, 120), dtype=np.float32)
    img[8:100, 10:120] = _texture((92, 110), 0.5, 0.2)
    res = Pipeline.from_config(RECIPE)(img)
    assert res.image.shape == (1, 64, 64) and res.image.dtype == np.float32
    assert res.image.flags["C_CONTIGUOUS"]
    assert res.display.shape == (64, 64) and res.display.min() >= 0.0 and res.display.max() <= 1.0
    np.testing.assert_allclose(res.image[0], (res.display - 0.5) / 0.25, atol=1e-5)
    info = res.info
    assert info["original_shape"] == [100, 120]
    assert info["crop_bbox"] == [8, 100, 10, 120]
    assert info["exposure_status"] == "ok" and info["exposure"]["status"] == "ok"
    assert info["clahe_applied"] is False
    json.dumps(info)

    rgb = Pipeline.from_config([{"step": "rgb"}, {"step": "resize", "size": 16}])(img)
    assert rgb.image.shape == (3, 16, 16) and rgb.display.shape == (16, 16, 3)


def test_clahe_only_if_flagged_runs_only_on_flagged_images() -> None:
    p = Pipeline.from_config(RECIPE)
    dark = p(_texture((64, 64), 0.1, 0.05))
    mid = p(_texture((64, 64), 0.5, 0.2))
    assert dark.info["exposure_status"] == "under" and dark.info["clahe_applied"] is True
    assert mid.info["exposure_status"] == "ok" and mid.info["clahe_applied"] is False
    always = Pipeline.from_config(
        [s if s["step"] != "clahe" else {**s, "only_if_flagged": False} for s in RECIPE]
    )
    assert always(_texture((64, 64), 0.5, 0.2)).info["clahe_applied"] is True


def test_pipeline_rejects_out_of_range_images() -> None:
    p = Pipeline.from_config(RECIPE)
    with pytest.raises(PreprocessError, match=r"\[0, 1\]"):
        p(np.full((8, 8), 255.0, dtype=np.float32))
    ok = p(np.full((8, 8), 128, dtype=np.uint8))  # integer images are scaled by their dtype
    assert ok.info["exposure"]["mean"] == pytest.approx(128 / 255, abs=1e-3)


# ---- arrays in, never paths -------------------------------------------------------------------


def test_preprocess_imports_nothing_from_data() -> None:
    import ast
    from pathlib import Path

    import medlens.preprocess as pkg

    for module in Path(pkg.__file__).parent.glob("*.py"):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("medlens.data"), module.name
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("medlens.data") for a in node.names), module.name


def test_align_mask_takes_arrays_and_refuses_paths(tmp_path) -> None:
    from PIL import Image

    from medlens.data.io import read_mask
    from medlens.preprocess import align_mask

    pipe = Pipeline.from_config([{"step": "grayscale"}, {"step": "resize", "size": 12}])
    img = np.zeros((30, 40), np.float32)
    img[6:18, 8:24] = 0.8
    pre = pipe(img)
    small = np.zeros((15, 20), np.uint8)  # the mask drawn at half the image's resolution
    small[3:9, 4:12] = 255
    path = tmp_path / "mask.png"
    Image.fromarray(small, "L").save(path)

    with pytest.raises(MedlensError, match="read_mask"):
        align_mask(str(path), pipe, pre.info)  # type: ignore[arg-type]
    with pytest.raises(MedlensError, match="H x W"):
        align_mask(np.zeros((2, 2, 2), bool), pipe, pre.info)

    # A mask read at its own size and one read at the image's size align to the same pixels.
    from_small = align_mask(read_mask(path), pipe, pre.info)
    from_full = align_mask(read_mask(path, shape=(30, 40)), pipe, pre.info)
    assert from_small.shape == (12, 12) and from_small.dtype == bool
    np.testing.assert_array_equal(from_small, from_full)
    np.testing.assert_array_equal(from_small, pre.display > 0.4)
