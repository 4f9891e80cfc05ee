"""The localisation scorer on real TBX11K chest X-rays with radiologists' lesion boxes."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chest_tbx11k"
if not (DATA / "boxes.csv").is_file():
    pytest.skip(
        f"real-data folder {DATA} is absent (it sits beside the project checkout)",
        allow_module_level=True,
    )

pytestmark = pytest.mark.realdata


def _cases(n: int = 50) -> list[tuple[Path, list[tuple[float, float, float, float]]]]:
    boxes: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    with (DATA / "boxes.csv").open() as fh:
        for row in csv.DictReader(fh):
            vals = [row.get(k, "").strip() for k in ("x1", "y1", "x2", "y2")]
            if all(vals):
                boxes[row["image"]].append(tuple(float(v) for v in vals))
    names = sorted(boxes)[:n]
    return [(DATA / "images" / name, boxes[name]) for name in names]


def test_localisation_scorer_on_tbx11k_boxes():
    from medlens.data.io import read_image
    from medlens.explain import LocalisationScorer, box_mask

    scorer = LocalisationScorer(seed=0, n_bootstrap=200)
    cases = _cases()
    assert len(cases) >= 30
    for path, bxs in cases:
        img = read_image(path).array
        img = img if img.ndim == 2 else img.mean(axis=2)
        mask = box_mask(img.shape, bxs)
        assert mask.any() and mask.mean() < 0.5  # boxes lie inside the 256-px image
        # A naive "bright regions" heatmap: real data, a real (if weak) method to score.
        cam = (img - img.min()) / (np.ptp(img) + 1e-8)
        scorer.update("brightness", path.name, cam, mask)
        scorer.update_baselines(path.name, mask)
    summary = scorer.compute()
    for method, res in summary["methods"].items():
        for metric in ("pointing_game", "energy_in_mask", "topk_iou"):
            m = res[metric]
            assert 0.0 <= m["ci_low"] <= m["value"] <= m["ci_high"] <= 1.0, (method, metric, m)
    # energy inside the boxes of a uniform-ish map is about the boxes' area fraction
    assert summary["methods"]["brightness"]["energy_in_mask"]["value"] < 0.5
