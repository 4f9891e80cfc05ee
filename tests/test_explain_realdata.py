"""The localisation scorer on real chest X-rays with lesion boxes (TBX11K, read in place).

No model: the heatmaps are a centre prior and a simple intensity map (bright = dense), so this
checks that boxes become masks in the right frame, that the scorer runs on real images, counts
an image without a finding as skipped, and returns values in range with ordered intervals.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from medlens.data.io import read_image
from medlens.explain.scores import CENTRE, METRICS, RANDOM, LocalisationScorer, box_mask

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chest_tbx11k"

if not (DATA / "boxes.csv").is_file():
    pytest.skip(
        f"real-data folder {DATA} is absent (it sits beside the project checkout and is never "
        "copied into it); these tests only run where it exists",
        allow_module_level=True,
    )

pytestmark = pytest.mark.realdata

N_IMAGES = 50


def _boxes() -> tuple[dict[str, list[tuple[float, ...]]], list[str]]:
    """Boxes per image (256-px frame) and the images whose row has no coordinates."""
    by_image: dict[str, list[tuple[float, ...]]] = defaultdict(list)
    empty: list[str] = []
    with (DATA / "boxes.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            coords = [row.get(k, "") for k in ("x1", "y1", "x2", "y2")]
            if any(c.strip() == "" for c in coords):
                empty.append(row["image"])
                continue
            by_image[row["image"]].append(tuple(float(c) for c in coords))
    return dict(by_image), empty


def _intensity_cam(img: np.ndarray) -> np.ndarray:
    """Smoothed brightness in [0, 1]: opacities are brighter than aerated lung."""
    import cv2

    g = img if img.ndim == 2 else img.mean(axis=2)
    s = cv2.GaussianBlur(g.astype(np.float32), (0, 0), sigmaX=max(1.0, g.shape[0] / 32))
    s -= s.min()
    return s / max(float(s.max()), 1e-6)


def test_scorer_on_tbx11k_boxes():
    by_image, empty = _boxes()
    assert by_image, "boxes.csv holds no boxes"
    names = sorted(n for n in by_image if (DATA / "images" / n).is_file())[:N_IMAGES]
    scorer = LocalisationScorer(seed=0, n_bootstrap=500)
    fractions = []
    for name in names:
        img = read_image(DATA / "images" / name).array
        h, w = img.shape[:2]
        mask = box_mask((h, w), by_image[name], ref_size=(256, 256))
        fractions.append(mask.mean())
        scorer.update("intensity", name, _intensity_cam(img), mask)
        scorer.update_baselines(name, mask)
    # The row without coordinates: an empty mask, skipped and counted, never scored.
    for name in empty[-1:]:
        img = read_image(DATA / "images" / name).array
        mask = box_mask(img.shape[:2], [(math.nan,) * 4], ref_size=(256, 256))
        assert not mask.any()
        assert scorer.update("intensity", name, _intensity_cam(img), mask) is None
        scorer.update_baselines(name, mask)

    assert 0.0 < float(np.mean(fractions)) < 0.5  # boxes cover part of the film, not all
    out = scorer.compute()
    methods = out["methods"]
    assert methods["intensity"]["n"] == len(names) >= 40
    if empty:
        assert methods["intensity"]["skipped"] == {"empty_mask": 1}
        assert methods[RANDOM]["skipped"] == {"empty_mask": 1}
    for m in ("intensity", RANDOM, CENTRE):
        for mt in METRICS:
            v = methods[m][mt]
            assert 0.0 <= v["ci_low"] <= v["value"] <= v["ci_high"] <= 1.0, (m, mt, v)
    for b in (RANDOM, CENTRE):
        for mt in METRICS:
            d = methods["intensity"]["vs_baselines"][b][mt]
            assert d["ci_low"] <= d["value"] <= d["ci_high"]
            assert d["n"] == len(names)
    # Energy in the boxes of the uninformative random map is about the boxes' area share.
    rnd = methods[RANDOM]["energy_in_mask"]["value"]
    assert abs(rnd - float(np.mean(fractions))) < 0.05
