"""Class-conditional split-conformal sets: coverage on fresh data, set sizes, storage, edge cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medlens.evaluate.conformal import ConformalSets, coverage_report, nonconformity, set_labels

CLASSES = ["normal", "pneumonia", "tuberculosis"]


def _draw(n: int, sharpness: float, seed: int, priors=(0.6, 0.3, 0.1), hard=(1.0, 1.0, 0.4)):
    """Labels from ``priors``; probabilities Dirichlet with extra mass on the true class.

    ``hard`` scales that extra mass per class: the rare last class is also the hardest, which is
    where a marginal threshold would under-cover it.
    """
    rng = np.random.default_rng(seed)
    y = rng.choice(len(priors), size=n, p=priors)
    conc = np.ones((n, len(priors)))
    conc[np.arange(n), y] += sharpness * np.asarray(hard)[y]
    return np.array([rng.dirichlet(c) for c in conc]), y


@pytest.mark.parametrize("score", ["lac", "aps"])
def test_class_conditional_coverage_holds_on_a_fresh_sample(score):
    p_cal, y_cal = _draw(3000, 4.0, seed=1)
    p_new, y_new = _draw(6000, 4.0, seed=2)
    cs = ConformalSets.fit(p_cal, y_cal, coverage=0.9, score=score)
    assert not cs.too_few
    rep = coverage_report(cs.predict_sets(p_new), y_new, CLASSES, n_bootstrap=200)
    # lac: close to the target (the never-empty fallback only adds a little); non-randomised
    # aps with three classes ties at 1.0 for a true class ranked last, so it over-covers
    upper = 0.03 if score == "lac" else 0.09
    assert -0.03 < rep["marginal_coverage"]["value"] - 0.9 < upper
    for name in CLASSES:
        assert -0.04 < rep["per_class_coverage"][name]["value"] - 0.9 < upper + 0.01, name
        assert rep["per_class_coverage"][name]["ci_low"] < rep["per_class_coverage"][name]["value"]


def test_marginal_threshold_would_undercover_the_rare_hard_class():
    """The reason for Mondrian sets: one shared threshold misses the rare, hard class."""
    p_cal, y_cal = _draw(3000, 4.0, seed=3)
    p_new, y_new = _draw(6000, 4.0, seed=4)
    s_cal = nonconformity(p_cal)[np.arange(len(y_cal)), y_cal]
    q = np.sort(s_cal)[int(np.ceil((len(s_cal) + 1) * 0.9)) - 1]
    marginal = nonconformity(p_new) <= q
    rare = y_new == 2
    assert marginal[rare, 2].mean() < 0.85
    cs = ConformalSets.fit(p_cal, y_cal, coverage=0.9)
    assert cs.predict_mask(p_new)[rare, 2].mean() > 0.86


def test_sharper_model_gives_smaller_sets_and_more_single_answers():
    p_cal_b, y_cal_b = _draw(2000, 2.0, seed=5)
    p_new_b, y_new_b = _draw(3000, 2.0, seed=6)
    p_cal_s, y_cal_s = _draw(2000, 12.0, seed=5)
    p_new_s, y_new_s = _draw(3000, 12.0, seed=6)
    blunt = coverage_report(
        ConformalSets.fit(p_cal_b, y_cal_b).predict_sets(p_new_b), y_new_b, CLASSES, 100
    )
    sharp = coverage_report(
        ConformalSets.fit(p_cal_s, y_cal_s).predict_sets(p_new_s), y_new_s, CLASSES, 100
    )
    assert sharp["mean_set_size"]["value"] < blunt["mean_set_size"]["value"] - 0.3
    assert sharp["single_class_share"]["value"] > blunt["single_class_share"]["value"]


def test_higher_coverage_never_gives_smaller_sets():
    p, y = _draw(1500, 4.0, seed=7)
    c80 = ConformalSets.fit(p, y, coverage=0.8)
    c95 = ConformalSets.fit(p, y, coverage=0.95)
    assert np.all(c95.thresholds > c80.thresholds)
    assert c95.predict_mask(p).sum() > c80.predict_mask(p).sum()


def test_abstaining_buys_accuracy():
    # a model less accurate than the coverage target (about 77 % here): the single-class sets
    # are the cases it gets right more often. (Above the target, sets are almost all single and
    # buy nothing; the report shows both figures so a reader sees which case they are in.)
    p_cal, y_cal = _draw(2000, 2.0, seed=8)
    p_new, y_new = _draw(3000, 2.0, seed=9)
    sets = ConformalSets.fit(p_cal, y_cal).predict_sets(p_new)
    rep = coverage_report(sets, y_new, CLASSES, 100, predicted=p_new.argmax(1), target=0.9)
    assert rep["accuracy_single_class"]["value"] > rep["accuracy_all"]["value"] + 0.05
    assert sum(rep["set_size_counts"].values()) == len(y_new)
    assert rep["classes_below_target"] == []
    json.dumps(rep, allow_nan=False)


def test_sets_are_never_empty_and_fall_back_to_the_top_class():
    # thresholds so strict that no class passes: every set is the argmax alone
    cs = ConformalSets(np.array([-1.0, -1.0, -1.0]), 0.9)
    p = np.array([[0.2, 0.5, 0.3], [0.7, 0.2, 0.1]])
    assert cs.predict_sets(p) == [[1], [0]]
    assert set_labels(cs.predict_sets(p), CLASSES) == [["pneumonia"], ["normal"]]


def test_round_trip_through_json():
    p, y = _draw(500, 4.0, seed=10)
    y[y == 2] = 0  # class 2 absent from calibration: an infinite threshold to store
    cs = ConformalSets.fit(p, y, coverage=0.9, score="aps")
    d = json.loads(json.dumps(cs.to_dict(), allow_nan=False))
    back = ConformalSets.from_dict(d)
    assert back.score == "aps" and back.coverage == 0.9 and back.too_few == [2]
    np.testing.assert_array_equal(back.thresholds, cs.thresholds)
    p_new, _ = _draw(200, 4.0, seed=11)
    assert back.predict_sets(p_new) == cs.predict_sets(p_new)
    with pytest.raises(ValueError, match="malformed"):
        ConformalSets.from_dict({"coverage": 0.9})


def test_absent_and_scarce_classes_are_conservative_and_recorded():
    p, y = _draw(400, 4.0, seed=12)
    y[y == 2] = 1  # class 2 absent
    keep = np.flatnonzero(y == 1)[:5]  # class 1: five cases, fewer than the 9 needed at 90 %
    sel = np.concatenate([np.flatnonzero(y == 0), keep])
    cs = ConformalSets.fit(p[sel], y[sel], coverage=0.9)
    assert cs.counts == [int((y == 0).sum()), 5, 0]
    assert cs.too_few == [1, 2] and cs.min_cases_per_class == 9
    assert np.isfinite(cs.thresholds[0]) and np.isinf(cs.thresholds[1:]).all()
    mask = cs.predict_mask(p)
    assert mask[:, 1:].all()  # a class we cannot calibrate is never ruled out
    rep = coverage_report(cs.predict_sets(p[:20]), np.zeros(20, int), CLASSES, 50)
    assert rep["per_class_coverage"]["tuberculosis"]["n"] == 0
    assert rep["per_class_coverage"]["tuberculosis"]["value"] is None


def test_nine_cases_are_enough_at_ninety_percent():
    p, y = _draw(300, 4.0, seed=13, priors=(0.5, 0.5, 0.0), hard=(1, 1, 1))
    sel = np.concatenate([np.flatnonzero(y == 0)[:9], np.flatnonzero(y == 1)[:8]])
    cs = ConformalSets.fit(p[sel], y[sel], coverage=0.9)
    assert np.isfinite(cs.thresholds[0]) and 1 in cs.too_few


def test_bad_inputs_say_what_is_wrong():
    with pytest.raises(ValueError, match="coverage"):
        ConformalSets.fit(np.full((3, 2), 0.5), [0, 1, 0], coverage=1.0)
    with pytest.raises(ValueError, match="NaN"):
        ConformalSets.fit(np.array([[np.nan, 1.0], [0.5, 0.5]]), [0, 1])
    with pytest.raises(ValueError, match="labels"):
        ConformalSets.fit(np.full((2, 2), 0.5), [0, 1, 1])
    cs = ConformalSets.fit(*_draw(200, 4.0, seed=14))
    with pytest.raises(ValueError, match="fitted on 3"):
        cs.predict_sets(np.full((2, 2), 0.5))


def test_matches_crepes_mondrian_classifier():
    """Same sets as a maintained implementation (crepes' Mondrian ConformalClassifier)."""
    crepes = pytest.importorskip("crepes", reason="crepes not installed: cross-check skipped")
    p_cal, y_cal = _draw(1234, 4.0, seed=15)
    p_new, _ = _draw(800, 4.0, seed=16)
    ours = ConformalSets.fit(p_cal, y_cal, coverage=0.9).predict_mask(p_new)
    cc = crepes.ConformalClassifier().fit(nonconformity(p_cal)[np.arange(len(y_cal)), y_cal], y_cal)
    a_new = nonconformity(p_new)
    theirs = np.stack(
        [
            cc.predict_set(a_new, np.full(len(p_new), c), confidence=0.9, smoothing=False)[:, c]
            for c in range(3)
        ],
        axis=1,
    ).astype(bool)
    theirs[~theirs.any(1), p_new[~theirs.any(1)].argmax(1)] = True  # our never-empty rule
    assert (ours == theirs).mean() > 0.999
