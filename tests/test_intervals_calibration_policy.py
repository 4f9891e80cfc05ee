"""Issue 4's numerics: intervals that cover, calibration that helps, thresholds from validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    matthews_corrcoef,
    roc_auc_score,
)

from medlens.evaluate.calibration import TemperatureScaling, calibration_errors, softmax
from medlens.evaluate.heldout import Scores, evaluate_test, fit_on_validation
from medlens.evaluate.intervals import metrics_with_intervals, sensitivity_at_specificity
from medlens.evaluate.policy import DecisionPolicy, compare_argmax_policy, fit_policy

CLASSES = ["normal", "pneumonia", "tuberculosis"]


def _scores(seed: int, n: int = 300, k: int = 3, sep: float = 1.5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += sep
    return y, logits


@pytest.mark.parametrize("ordinal", [False, True])
def test_point_estimates_equal_sklearn(ordinal: bool):
    y, z = _scores(0)
    p = softmax(z)
    m = metrics_with_intervals(y, p, CLASSES, n_bootstrap=20, ordinal=ordinal)
    pred = p.argmax(1)
    o = m["overall"]
    assert o["accuracy"]["value"] == pytest.approx(accuracy_score(y, pred))
    assert o["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert o["macro_f1"]["value"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert o["mcc"]["value"] == pytest.approx(matthews_corrcoef(y, pred))
    kappa = cohen_kappa_score(y, pred, weights="quadratic" if ordinal else None)
    assert o["kappa"]["value"] == pytest.approx(kappa)
    for i, c in enumerate(CLASSES):
        pc = m["per_class"][c]
        assert pc["roc_auc"]["value"] == pytest.approx(roc_auc_score(y == i, p[:, i]))
        assert pc["pr_auc"]["value"] == pytest.approx(average_precision_score(y == i, p[:, i]))
        tn = ((pred != i) & (y != i)).sum()
        fn = ((pred != i) & (y == i)).sum()
        assert pc["npv"]["value"] == pytest.approx(tn / (tn + fn))
        sens = pc["sensitivity"]
        assert sens["ci_low"] <= sens["value"] <= sens["ci_high"]


def test_sensitivity_at_specificity():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.8, 0.4, 0.7, 0.9, 0.95])
    # specificity ≥ 0.75 allows one false positive (0.8): all positives above 0.3 → 1.0
    assert sensitivity_at_specificity(y, s, 0.75) == pytest.approx(1.0)
    # specificity 1.0: threshold above 0.8 → positives 0.9, 0.95 → 0.5
    assert sensitivity_at_specificity(y, s, 1.0) == pytest.approx(0.5)


def test_interval_covers_true_auc_in_at_least_90_percent_of_draws():
    """Binormal scores with a known AUC: Φ(d/√2). 200 simulated test sets, 95 % intervals."""
    from scipy.stats import norm

    d = 1.2
    true_auc = norm.cdf(d / math.sqrt(2))
    rng = np.random.default_rng(42)
    covered = 0
    draws = 200
    for i in range(draws):
        n = 120
        y = (rng.random(n) < 0.4).astype(int)
        score = rng.normal(size=n) + d * y
        p1 = 1 / (1 + np.exp(-score))
        probs = np.stack([1 - p1, p1], axis=1)
        m = metrics_with_intervals(y, probs, ["neg", "pos"], n_bootstrap=150, seed=i)
        ci = m["per_class"]["pos"]["roc_auc"]
        covered += ci["ci_low"] <= true_auc <= ci["ci_high"]
    assert covered / draws >= 0.90


def test_degenerate_single_class_is_nan_with_warning():
    y = np.zeros(20, dtype=int)
    p = softmax(np.random.default_rng(0).normal(size=(20, 3)))
    with pytest.warns(RuntimeWarning, match="absent"):
        m = metrics_with_intervals(y, p, CLASSES, n_bootstrap=20)
    assert math.isnan(m["per_class"]["pneumonia"]["roc_auc"]["value"])
    assert math.isnan(m["overall"]["macro_roc_auc"]["value"])


def test_temperature_scaling_lowers_ece_of_overconfident_model():
    y, z = _scores(1, n=2000, sep=1.0)
    overconfident = z * 4.0  # same argmax, far too sharp
    ts = TemperatureScaling().fit(overconfident[:1000], y[:1000])
    assert ts.temperature > 2.0
    before = calibration_errors(y[1000:], softmax(overconfident[1000:]))["ece"]
    after = calibration_errors(y[1000:], ts(overconfident[1000:]))["ece"]
    assert after < before / 2
    assert (ts(overconfident).argmax(1) == overconfident.argmax(1)).all()


def test_calibration_errors_match_a_hand_computed_case():
    # two bins used: conf 0.9 (correct, correct) and 0.6 (wrong)
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    y = np.array([0, 0, 0])
    e = calibration_errors(y, p, n_bins=10)
    assert e["ece"] == pytest.approx((2 * 0.1 + 1 * 0.6) / 3)
    assert e["mce"] == pytest.approx(0.6)


def test_policy_meets_targets_on_validation_and_ignores_test_labels():
    y_val, z_val = _scores(2, n=400, sep=3.0)
    p_val = softmax(z_val)
    targets = {"tuberculosis": 0.9, "pneumonia": 0.85}
    pol = fit_policy(y_val, p_val, CLASSES, ["tuberculosis", "pneumonia"], targets)
    dec, fired = pol.decide(p_val)
    for c, t in targets.items():
        i = CLASSES.index(c)
        assert ((dec == i) & (y_val == i)).sum() / (y_val == i).sum() >= t
        assert pol.validation[c]["met"]
    # fired is the priority class or -1 (fallback)
    assert set(np.unique(fired)) <= {-1, 1, 2}
    # Thresholds come from validation only: two different test label sets, same thresholds.
    val = Scores([str(i) for i in range(400)], y_val, z_val)
    fitted_a = fit_on_validation(val, CLASSES, ["tuberculosis", "pneumonia"], targets)
    y_test, z_test = _scores(3, n=200, sep=3.0)
    res_a = evaluate_test(Scores(["t"] * 200, y_test, z_test), fitted_a, CLASSES, n_bootstrap=10)
    shuffled = np.random.default_rng(0).permutation(y_test)
    fitted_b = fit_on_validation(val, CLASSES, ["tuberculosis", "pneumonia"], targets)
    res_b = evaluate_test(Scores(["t"] * 200, shuffled, z_test), fitted_b, CLASSES, n_bootstrap=10)
    assert res_a["policy"]["thresholds"] == res_b["policy"]["thresholds"]
    assert res_a["accuracy"] != res_b["accuracy"]


def test_policy_raises_sensitivity_over_argmax_and_reports_costs():
    y, z = _scores(4, n=600, sep=0.8)
    p = softmax(z)
    pol = fit_policy(
        y[:300],
        p[:300],
        CLASSES,
        ["tuberculosis", "pneumonia"],
        {"tuberculosis": 0.95, "pneumonia": 0.9},
    )
    cmp = compare_argmax_policy(y[300:], p[300:], pol)
    tb = cmp["per_class"]["tuberculosis"]
    assert tb["policy"]["sensitivity"] >= tb["argmax"]["sensitivity"]
    assert (
        cmp["per_class"]["normal"]["policy"]["sensitivity"]
        <= cmp["per_class"]["normal"]["argmax"]["sensitivity"]
    )
    mp = cmp["missed_priority_positives"]
    assert mp["policy"] <= mp["argmax"]


def test_unreachable_target_is_said():
    # pneumonia cases all have tiny p(pneumonia) and large p(tb): TB claims them first
    p = np.array([[0.02, 0.08, 0.9]] * 10 + [[0.05, 0.05, 0.9]] * 10 + [[0.9, 0.05, 0.05]] * 10)
    y = np.array([1] * 10 + [2] * 10 + [0] * 10)
    pol = fit_policy(
        y, p, CLASSES, ["tuberculosis", "pneumonia"], {"tuberculosis": 0.9, "pneumonia": 0.9}
    )
    assert pol.validation["tuberculosis"]["met"]
    rep = pol.validation["pneumonia"]
    assert not rep["met"] and "cannot meet" in rep["note"]


def test_policy_round_trip():
    pol = DecisionPolicy(CLASSES, ["tuberculosis"], {"tuberculosis": 0.3}, {"tuberculosis": 0.9})
    again = DecisionPolicy.from_dict(pol.to_dict())
    p = np.array([[0.5, 0.2, 0.3], [0.6, 0.3, 0.1]])
    assert (again.decide(p)[0] == [2, 0]).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_figure_table_equals_sklearn_with_ties(seed: int):
    """The one implementation of each figure (used for point and replicates) gives
    scikit-learn's numbers, ties included."""
    from sklearn.metrics import confusion_matrix, precision_score, recall_score, roc_curve

    from medlens.evaluate import figures as F

    y, z = _scores(seed, n=150)
    p = np.round(softmax(z), 2)  # rounding creates many tied scores
    b = F.Basis(y, p, 3, False, 0.9)
    v = F.compute(b)
    pred = p.argmax(1)
    assert (b.confusion == confusion_matrix(y, pred, labels=[0, 1, 2])).all()
    for i in range(3):
        yb = y == i
        assert v["roc_auc"][i] == pytest.approx(roc_auc_score(yb, p[:, i]), abs=1e-12)
        assert v["pr_auc"][i] == pytest.approx(average_precision_score(yb, p[:, i]), abs=1e-12)
        assert v["sensitivity"][i] == pytest.approx(recall_score(yb, pred == i))
        assert v["specificity"][i] == pytest.approx(recall_score(~yb, pred != i))
        assert v["ppv"][i] == pytest.approx(precision_score(yb, pred == i))
        fpr, tpr, _ = roc_curve(yb, p[:, i])  # scikit-learn's ROC points
        assert v["sens_at_spec"][i] == pytest.approx(tpr[(1 - fpr) >= 0.9 - 1e-12].max())


def test_worklists_find_missed_borderline_and_confident_wrong(tmp_path):
    from medlens.evaluate.worklists import build_worklists, write_worklists_csv

    pol = DecisionPolicy(
        CLASSES, ["tuberculosis", "pneumonia"], {"tuberculosis": 0.30, "pneumonia": 0.40}
    )
    p = np.array(
        [
            [0.80, 0.10, 0.10],  # TB case called normal: missed positive
            [0.60, 0.12, 0.28],  # normal, p(TB) 0.28 within 0.05 of 0.30: borderline
            [0.97, 0.02, 0.01],  # pneumonia case, normal at 0.97: confident wrong + missed
            [0.10, 0.10, 0.80],  # TB, correct and far from thresholds: no list
        ]
    )
    y = np.array([2, 0, 1, 2])
    wl = build_worklists(["a", "b", "c", "d"], y, p, pol, CLASSES, margin=0.05, confident=0.95)
    assert [e.source for e in wl["missed_positive"]] == ["a", "c"]
    assert [e.source for e in wl["borderline"]] == ["b"]
    assert [e.source for e in wl["confident_wrong"]] == ["c"]
    write_worklists_csv(wl, CLASSES, tmp_path / "w.csv")
    assert len((tmp_path / "w.csv").read_text().splitlines()) == 1 + 4


def test_borderline_ignores_thresholds_that_cannot_fire():
    """Issue 14 item 9: a threshold ≥ 1 (argmax alone meets the target) or a class without a
    threshold never makes a case borderline; a firing threshold within the margin does."""
    from medlens.evaluate.worklists import build_worklists

    pol = DecisionPolicy(
        CLASSES, ["tuberculosis", "pneumonia"], {"tuberculosis": 1.0, "pneumonia": 0.40}
    )
    confident_tb = np.array([0.01, 0.02, 0.97])  # p(TB) 0.97 is within 0.05 of threshold 1.0
    assert pol.borderline(confident_tb, 0.05) == []
    assert not pol.can_fire("tuberculosis") and not pol.can_fire("normal")
    near = pol.borderline({"normal": 0.5, "pneumonia": 0.42, "tuberculosis": 0.08}, 0.05)
    assert [(n.cls, n.threshold) for n in near] == [("pneumonia", 0.40)]
    assert str(near[0]) == "p(pneumonia) = 0.420, threshold 0.40"
    # The worklist asks the same rule: confident, correct TB cases are not listed.
    p = np.array([confident_tb, confident_tb, [0.5, 0.42, 0.08]])
    wl = build_worklists(["a", "b", "c"], [2, 2, 0], p, pol, CLASSES, margin=0.05)
    assert [e.source for e in wl["borderline"]] == ["c"]


def test_all_correct_gives_exact_one_sided_bound_not_a_collapsed_interval():
    """Issue 14 item 10: every case right → a Clopper–Pearson one-sided bound, said in words."""
    from medlens.evaluate.intervals import fmt_ci

    y = np.repeat([0, 1, 2], 20)
    p = np.full((60, 3), 0.05)
    p[np.arange(60), y] = 0.9
    m = metrics_with_intervals(y, p, CLASSES, n_bootstrap=50)
    acc = m["overall"]["accuracy"]
    assert acc["value"] == 1.0 and acc["interval"] == "exact one-sided"
    assert acc["ci_low"] == pytest.approx(0.05 ** (1 / 60))  # one-sided 95 % exact bound
    assert acc["ci_high"] == 1.0 and acc["trials"] == 60
    assert "all 60 of 60" in fmt_ci(acc) and "lower bound 0.951" in fmt_ci(acc)
    sens = m["per_class"]["pneumonia"]["sensitivity"]
    assert sens["ci_low"] == pytest.approx(0.05 ** (1 / 20))
    # Every case wrong for a class: an upper bound.
    p2 = p.copy()
    p2[y == 1] = [0.9, 0.05, 0.05]
    none = metrics_with_intervals(y, p2, CLASSES, n_bootstrap=50)["per_class"]["pneumonia"]
    s2 = none["sensitivity"]
    assert s2["value"] == 0.0 and s2["ci_low"] == 0.0
    assert s2["ci_high"] == pytest.approx(1 - 0.05 ** (1 / 20))
    assert "none of 20" in fmt_ci(s2)
    # A figure that is not a proportion, with all resamples equal: no fake interval.
    auc = m["overall"]["macro_roc_auc"]
    assert auc["interval"] == "not estimable" and math.isnan(auc["ci_low"])
    assert fmt_ci(auc) == "1.000, interval not estimable (all resamples equal)"
    # Ordinary data keep the percentile interval.
    y3, z3 = _scores(5)
    ordinary = metrics_with_intervals(y3, softmax(z3), CLASSES, n_bootstrap=50)["overall"]
    assert "interval" not in ordinary["accuracy"]


def test_kappa_is_named_unweighted_or_quadratic():
    from medlens.evaluate import figures as F

    y, z = _scores(0)
    plain = metrics_with_intervals(y, softmax(z), CLASSES, n_bootstrap=5)
    staged = metrics_with_intervals(y, softmax(z), CLASSES, n_bootstrap=5, ordinal=True)
    assert F.display_name("kappa", plain) == "Cohen's kappa (unweighted)"
    assert F.display_name("kappa", staged) == "Cohen's kappa (quadratic-weighted)"
    assert F.display_name("kappa", {"kappa_weighting": "none"}) == "Cohen's kappa (unweighted)"


def test_zero_width_percentile_interval_is_not_shown_as_certainty():
    """Nearly all replicates equal (a percentile interval of zero width) is not estimable."""
    from medlens.evaluate.intervals import fmt_ci, pack

    reps = np.r_[np.ones(990), np.full(10, 0.98)]
    m = pack(1.0, reps, 0.05)
    assert m["interval"] == "not estimable" and "99.0 % of resamples equal 1.000" in fmt_ci(m)
    spread = pack(0.9, np.linspace(0.8, 1.0, 1000), 0.05)
    assert spread["ci_low"] < 0.9 < spread["ci_high"] and "interval" not in spread


def test_fmt_ci_never_prints_a_collapsed_interval():
    from medlens.evaluate.intervals import fmt_ci

    assert fmt_ci({"value": 1.0, "ci_low": 0.99996, "ci_high": 1.0}) == "1.000 [0.99996–1.00000]"
    assert "not estimable" in fmt_ci({"value": 1.0, "ci_low": 1.0, "ci_high": 1.0})
    assert fmt_ci({"value": 0.9, "ci_low": 0.8, "ci_high": 0.95}) == "0.900 [0.800–0.950]"
    assert fmt_ci({"value": None, "ci_low": None, "ci_high": None}) == "n/a"
