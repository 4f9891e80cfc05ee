"""Reader-vs-reader Dice: synthetic masks with known overlap, and the shared SIJ MRI masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medlens.evaluate.agreement import load_reader_masks, pair_dice, reader_agreement

SIJ = Path(__file__).resolve().parents[2] / "shared" / "data" / "sij_mri" / "inflammation"


def _box(shape: tuple[int, int, int], x0: int, x1: int, z: slice) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[10:20, x0:x1, z] = True
    return m


def test_pair_dice_known_overlap() -> None:
    a = _box((32, 32, 4), 0, 10, slice(0, 2))  # 10 x 10 x 2
    b = _box((32, 32, 4), 5, 15, slice(0, 2))  # half overlapping
    r = pair_dice(a, b)
    assert r["volume"] == pytest.approx(0.5)
    assert len(r["slices"]) == 2  # slices 2 and 3 are empty in both: not counted
    np.testing.assert_allclose(r["slices"], [0.5, 0.5])


def test_reader_agreement_identical_readers_score_one_and_intra_differs() -> None:
    shape = (32, 32, 3)
    masks = {}
    for s, shift in (("A", 0), ("B", 2), ("C", 4)):
        r1 = _box(shape, 0, 10, slice(0, 3))
        r2 = _box(shape, shift, 10 + shift, slice(0, 3))
        masks[s] = {"R11": r1, "R12": r1.copy(), "R21": r2, "R22": r2.copy()}
    out = reader_agreement(masks, n_bootstrap=200)
    assert out["R11 vs R12"]["volume_dice"]["value"] == pytest.approx(1.0)
    inter = out["inter_reader"]
    assert inter["per_subject"]["A"] == pytest.approx(1.0)
    assert inter["per_subject"]["C"] == pytest.approx(0.6)  # 6 of 10 columns shared
    assert inter["volume_dice"]["value"] == pytest.approx((1.0 + 0.8 + 0.6) / 3)
    assert inter["subjects"] == 3 and inter["slices"] == 3 * 3 * 4


@pytest.mark.realdata
def test_sij_reader_agreement_on_shared_masks() -> None:
    if not SIJ.is_dir():
        pytest.skip(f"shared SIJ MRI masks not found at {SIJ}")
    masks = load_reader_masks(SIJ)
    assert len(masks) >= 2
    out = reader_agreement(masks, n_bootstrap=500)
    for key in ("inter_reader", "R11 vs R12", "R21 vs R22"):
        v = out[key]["volume_dice"]
        assert 0.0 < v["value"] < 1.0, key  # real readers neither agree perfectly nor never
        assert out[key]["subjects"] == len(masks)
