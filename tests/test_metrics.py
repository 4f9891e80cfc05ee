from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from medlens.evaluate.metrics import classification_metrics, metrics_table

CLASSES = ["normal", "pneumonia", "tuberculosis"]


def _data(seed=0, n=90):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += 1.5
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, p


def test_metrics_equal_sklearn():
    y, p = _data()
    m = classification_metrics(y, p, CLASSES)
    pred = p.argmax(1)
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["accuracy"] == pytest.approx((pred == y).mean())
    for i, c in enumerate(CLASSES):
        pc = m["per_class"][c]
        assert pc["precision"] == pytest.approx(precision_score(y == i, pred == i))
        assert pc["recall"] == pytest.approx(recall_score(y == i, pred == i))
        assert pc["specificity"] == pytest.approx(recall_score(y != i, pred != i))
        assert pc["roc_auc"] == pytest.approx(roc_auc_score(y == i, p[:, i]))
    assert np.array(m["confusion_matrix"]).sum() == len(y)
    assert np.trace(np.array(m["confusion_matrix"])) == (pred == y).sum()


def test_absent_class_gives_nan_and_warning():
    y, p = _data()
    y = np.where(y == 2, 0, y)
    with pytest.warns(RuntimeWarning, match="tuberculosis"):
        m = classification_metrics(y, p, CLASSES)
    assert math.isnan(m["per_class"]["tuberculosis"]["roc_auc"])
    assert not math.isnan(m["macro_roc_auc"])


def test_shape_mismatch_is_error_and_table_renders():
    y, p = _data()
    with pytest.raises(ValueError):
        classification_metrics(y, p[:, :2], CLASSES)
    from rich.console import Console

    c = Console(record=True, width=120)
    c.print(metrics_table(classification_metrics(y, p, CLASSES)))
    assert "tuberculosis" in c.export_text()


def test_figure_table_drives_intervals_names_and_tables(monkeypatch):
    """Adding a metric is one row: it appears in the intervals, the report's tables and the
    CLI's columns without touching anything else."""
    from rich.console import Console

    from medlens.evaluate import figures as F
    from medlens.evaluate.intervals import metrics_with_intervals
    from medlens.evaluate.report import figure_tables_html

    row = F.Figure(
        "youden",
        "Youden's J",
        True,
        compute=lambda b: b.tp / (b.tp + b.fn) + b.tn / (b.tn + b.fp) - 1,
        short="J",
        headline=True,
    )
    monkeypatch.setattr(F, "FIGURES", (*F.FIGURES, row))
    y, p = _data()
    iv = metrics_with_intervals(y, p, CLASSES, n_bootstrap=20)
    j = iv["per_class"]["pneumonia"]["youden"]
    pc = iv["per_class"]["pneumonia"]
    assert j["value"] == pytest.approx(pc["sensitivity"]["value"] + pc["specificity"]["value"] - 1)
    assert j["ci_low"] < j["value"] < j["ci_high"]
    html = figure_tables_html(iv, CLASSES)
    assert "Youden&#x27;s J" in html and "Cohen&#x27;s kappa (unweighted)" in html
    m = classification_metrics(y, p, CLASSES)
    assert m["per_class"]["normal"]["youden"] == pytest.approx(
        iv["per_class"]["normal"]["youden"]["value"]
    )
    c = Console(record=True, width=200)
    c.print(metrics_table(m))
    assert " J " in c.export_text()
    assert "J" in [F.column_name(f) for f in F.headline(per_class_figures=True)]


def test_warnings_for_chance_auc_and_specificity_given_up():
    """Issue 14 item 11: chance-level AUC and a policy that sends most negatives to a class
    are warned about, with the numbers; a good model gets no warning."""
    from medlens.evaluate.calibration import softmax
    from medlens.evaluate.caveats import model_warnings
    from medlens.evaluate.heldout import Scores, evaluate_test, fit_on_validation

    rng = np.random.default_rng(0)
    classes = ["normal", "tuberculosis"]
    y = np.repeat([0, 1], 40)
    noise = Scores([str(i) for i in range(80)], y, rng.normal(size=(80, 2)))  # guessing
    fitted = fit_on_validation(noise, classes, ["tuberculosis"], {"tuberculosis": 0.99})
    res = evaluate_test(noise, fitted, classes, n_bootstrap=200)
    codes = [w["code"] for w in res["warnings"]]
    assert "auc_includes_chance" in codes
    assert "specificity_given_up" in codes
    spec = next(w for w in res["warnings"] if w["code"] == "specificity_given_up")
    assert spec["class"] == "tuberculosis" and "normal" in spec["message"]
    assert spec["policy_specificity"] < 0.5 * spec["argmax_specificity"]

    good = np.zeros((80, 2))
    good[np.arange(80), y] = 3.0
    good += rng.normal(scale=0.5, size=(80, 2))
    ok = Scores([str(i) for i in range(80)], y, good)
    fitted = fit_on_validation(ok, classes, ["tuberculosis"], {"tuberculosis": 0.9})
    assert evaluate_test(ok, fitted, classes, n_bootstrap=200)["warnings"] == []
    assert softmax(good).shape == (80, 2) and model_warnings({}) == []


def test_dice_iou_conventions():
    """One Dice/IoU: both masks empty → 1, one empty → 0, overlap by hand, MONAI agrees."""
    from medlens.evaluate.segmentation import dice_iou, segmentation_metrics

    truth = np.zeros((4, 4, 4), dtype=bool)
    pred = np.zeros_like(truth)
    truth[1, :2, :2] = True  # image 1: truth 4 px, prediction empty → 0
    pred[2, :2, :2] = True  # image 2: prediction 4 px, truth empty → 0
    truth[3, :2, :] = True  # image 3: truth 8 px, prediction 4 px inside → Dice 8/12, IoU 4/8
    pred[3, :2, :2] = True
    dice, iou = dice_iou(pred, truth)  # image 0: both empty → 1
    np.testing.assert_allclose(dice, [1.0, 0.0, 0.0, 8 / 12])
    np.testing.assert_allclose(iou, [1.0, 0.0, 0.0, 0.5])
    # Probabilities are binarised at 0.5, like boolean masks.
    np.testing.assert_allclose(dice_iou(pred * 0.8, truth.astype(float))[0], dice)
    with pytest.raises(ValueError, match="one shape"):
        dice_iou(pred, truth[:2])
    s = segmentation_metrics(pred, truth, n_bootstrap=50)
    assert s["n"] == 4 and s["dice"]["value"] == pytest.approx(dice.mean())
    same = segmentation_metrics(truth, truth, n_bootstrap=50)["dice"]
    assert same["value"] == 1.0 and same["interval"] == "not estimable"
    try:
        import torch
        from monai.metrics import compute_dice, compute_iou
    except ImportError:
        return
    pt, tt = (torch.from_numpy(a[:, None].astype(np.float32)) for a in (pred, truth))
    np.testing.assert_allclose(compute_dice(pt, tt, ignore_empty=False)[:, 0].numpy(), dice)
    np.testing.assert_allclose(compute_iou(pt, tt, ignore_empty=False)[:, 0].numpy(), iou)
