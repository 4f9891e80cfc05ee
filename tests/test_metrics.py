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
